"""clbench: a benchmark suite for continual learning on graphs."""

import warnings

__version__ = "0.1.0"

# torch flags its CSR support as beta on every CSR construction; the protocol relies
# on it deliberately, so the notice is noise for users.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

from clbench.methods import METHODS, register_method  # noqa: E402
from clbench.trainer import NCTrainer, TrainerCallback  # noqa: E402

__all__ = ["METHODS", "NCTrainer", "TrainerCallback", "__version__", "register_method"]
