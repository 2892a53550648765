"""clbench: a benchmark suite for continual learning on graphs."""

import os
import warnings

# Large activations (an ogbn-arxiv layer is 173 MB) are allocated and zero-filled
# every step; with this, torch's CPU allocator asks the kernel for transparent huge
# pages for allocations >= 2 MB (~60x fewer page faults, whole epochs 0.55-0.8x the
# time on arxiv-sized graphs; see results/performance.md). torch reads it at its
# first allocation, so it only takes effect when clbench is imported before torch
# (always true for the CLI and its workers, which inherit it). Set it to 0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"

# torch flags its CSR support as beta on every CSR construction; the protocol relies
# on it deliberately, so the notice is noise for users.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

__all__ = ["METHODS", "NCTrainer", "TrainerCallback", "__version__", "register_method"]

# Imported on first use (PEP 562), so that `import clbench` - and with it `clbench --help`
# or `clbench list` - does not pay for torch and PyG (~6 s) before it needs them.
_LAZY = {
    "METHODS": "clbench.methods",
    "register_method": "clbench.methods",
    "NCTrainer": "clbench.trainer",
    "TrainerCallback": "clbench.trainer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
