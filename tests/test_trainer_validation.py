"""The per-epoch validation pass: computed where the schedule uses it, skipped where it
does not, and the numbers the same either way.

BeGin's loop scores the validation nodes after every epoch: the plateau scheduler and the
best-validation weights need the score. CGLB's fixed schedule (``--preset cglb``: constant
learning rate, every epoch, the last weights) uses none, and CGLB computes none, so under
it clbench skips the pass (about a third of an epoch's cost). Skipping must not change a
number: no method may depend on the evaluation having run (its RNG draws, BatchNorm state
or temporary masks). Each method runs the CGLB preset on real Cora both ways, and the
matrices and the final weights must agree bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch
from datahelpers import copy_shared

from clbench.loopstate import TrainerCallback
from clbench.methods import METHODS

EPOCHS = 12
#: Fewer condensation steps for CaT (1000 by default), for the test's time only.
PARAMS = {"cat": {"condense_steps": 50}}


class _Validate(TrainerCallback):
    """Turns the per-epoch validation pass on (``validate``) or leaves the default, and
    records each epoch's validation score and the weights at the end."""

    def __init__(self, validate: bool | None) -> None:
        self.validate = validate
        self.scores: list[float] = []
        self.default: bool | None = None
        self.weights: dict[str, torch.Tensor] = {}

    def on_run_start(self, trainer) -> None:
        self.default = trainer.validate_every_epoch
        if self.validate is not None:
            trainer.validate_every_epoch = self.validate

    def on_epoch_end(self, trainer, task_id, epoch, results) -> None:
        self.scores.append(results["val_metric"])

    def on_task_end(self, trainer, task_id, test_row) -> None:
        self.weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("data")
    copy_shared("cora", root)
    return str(root)


def _run(method: str, data_dir: str, validate: bool | None, **kw):
    from clbench.experiment import run_experiment

    probe = _Validate(validate)
    result = run_experiment(method=method, dataset="cora", seed=3, data_dir=data_dir,
                            threads=1, params={"epochs": EPOCHS, **PARAMS.get(method, {})},
                            callbacks=[probe], **kw)
    return result, probe


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_skipping_validation_under_the_fixed_schedule_changes_no_number(method, data_dir):
    skipped, probe = _run(method, data_dir, None, preset="cglb")
    assert probe.default is False  # the cglb preset's fixed schedule skips the pass
    assert all(math.isnan(s) for s in probe.scores) and len(probe.scores) >= EPOCHS
    scored, probe_on = _run(method, data_dir, True, preset="cglb")
    assert not any(math.isnan(s) for s in probe_on.scores)  # the pass ran every epoch
    assert skipped["R_test"] == scored["R_test"] and skipped["R_val"] == scored["R_val"]
    assert probe.weights.keys() == probe_on.weights.keys()
    for name, value in probe.weights.items():
        assert torch.equal(value, probe_on.weights[name]), name


def test_begins_loop_scores_every_epoch(data_dir):
    _, probe = _run("finetune", data_dir, None)
    assert probe.default is True
    assert probe.scores and not any(math.isnan(s) for s in probe.scores)
