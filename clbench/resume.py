"""Resume points: a trainer's whole state after a task, in a file that holds only
tensors and plain data (:mod:`clbench.statefile`).

:func:`save_point` writes the trainer's :meth:`~clbench.trainer.NCTrainer.state_dict`, the
partial result and the random number generators atomically; :func:`load_point` reads
them back with ``weights_only=True`` (after a scan of the file's globals), so loading
never runs code, whoever wrote the file, and refuses a file of another run or version.
A run continued from a resume point does exactly what the uninterrupted run would have
done: its numbers are bit-identical.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from clbench import statefile
from clbench.loopstate import TrainerResult

if TYPE_CHECKING:  # pragma: no cover
    from clbench.trainer import NCTrainer

RESUME_FORMAT = 2


def save_point(trainer: NCTrainer, path: Path, tag: str, out: TrainerResult) -> None:
    """Write the trainer's :meth:`state_dict`, the partial result and the random
    generators to ``path`` atomically (one ``torch.save`` of tensors and plain data,
    read back with ``weights_only=True``)."""
    if getattr(trainer, "_resume_unsupported", False):
        return
    try:
        payload = {
            "format": RESUME_FORMAT, "tag": tag, "epoch_per_task": trainer.epoch_per_task,
            "num_tasks": trainer.num_tasks, "trainer": trainer.state_dict(),
            "result": statefile.encode(out),
            "rng": statefile.encode({
                "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                else None}),
        }
    except statefile.Unsupported as exc:  # e.g. a user method keeps a lambda
        trainer._resume_unsupported = True
        warnings.warn(f"{type(trainer).__name__} cannot save a resume point (it keeps "
                      f"{exc}); the run goes on without", stacklevel=2)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)

def load_point(trainer: NCTrainer, resume_file: str | Path, tag: str) -> TrainerResult | None:
    """Restore the state saved in ``resume_file``; None (start over, with a warning)
    if there is none, it belongs to another run, or it is not a file of ours.

    The file is read with ``weights_only=True``: a file holding anything but tensors
    and plain data (a pickle that would run code) is refused before any of it is used.
    """
    path = Path(resume_file)
    if not path.is_file():
        return None
    try:
        payload = statefile.load(path, map_location=trainer.device)
    except Exception as exc:  # torch's message suggests weights_only=False: not shown
        why = f": {exc}" if isinstance(exc, statefile.Malformed) else ""
        warnings.warn(f"resume point {path} is unreadable or holds more than tensors and "
                      f"plain data ({type(exc).__name__}{why}); refused, starting the run "
                      "over", stacklevel=2)
        return None
    expected = {"format": RESUME_FORMAT, "tag": tag, "epoch_per_task": trainer.epoch_per_task,
                "num_tasks": trainer.num_tasks}
    wrong = [k for k, v in expected.items()
             if not isinstance(payload, dict) or payload.get(k) != v]
    if wrong:
        warnings.warn(f"resume point {path} belongs to another run or version (its "
                      f"{', '.join(wrong)} differ); starting the run over", stacklevel=2)
        return None
    try:
        result = statefile.decode(payload["result"])
        rng = statefile.decode(payload["rng"])
        if not isinstance(result, TrainerResult):
            raise statefile.Malformed("no result")
        snapshot = trainer.state_dict()
        try:
            trainer.load_state_dict(payload["trainer"])
        except Exception:
            trainer.load_state_dict(snapshot)  # leave the trainer as it was
            raise
    except Exception as exc:
        warnings.warn(f"resume point {path} is damaged ({type(exc).__name__}: "
                      f"{str(exc)[:200]}); starting the run over", stacklevel=2)
        return None
    torch.set_rng_state(rng["torch"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([r.cpu() for r in rng["cuda"]])
    return result
