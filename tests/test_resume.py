"""Resume points: a run stopped after task k continues bit-identically from task k+1."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow_server import cli_process, shared_server, unique

from clbench.experiment import run_experiment
from clbench.orchestrate import (
    LocalBackend,
    expand_jobs,
    resume_path,
    resume_tag,
    run_jobs,
)
from clbench.plugins import load_plugin
from clbench.provenance import external_code_digest
from clbench.tracking import Tracker
from clbench.trainer import TrainerCallback

# dropout draws random numbers every step, so a wrongly restored generator shows
PARAMS = {"epochs": 8, "hidden": 32, "dropout": 0.5}
STOP_AT = 3  # synthetic has 5 tasks: the resume point is the one saved after task 2


class Stop(TrainerCallback):
    """Interrupt the run when task ``STOP_AT`` starts (as a killed process would)."""

    def on_task_start(self, trainer, task_id: int) -> None:
        if task_id == STOP_AT:
            raise KeyboardInterrupt


def same_run(a: dict, b: dict) -> None:
    for key in ("R_test", "R_val", "init_test", "init_val", "metrics", "val_metrics",
                "ap_curve", "extra_storage_bytes"):
        assert a[key] == b[key], key
    assert a["timing"]["task_epochs"] == b["timing"]["task_epochs"]


@pytest.mark.parametrize(("method", "extra"), [
    ("finetune", {}),
    ("ewc", {"lamb": 1000.0}),
    ("lwf", {}),
    ("mas", {}),
    ("twp", {}),
    ("packnet", {}),
    ("piggyback", {}),
    ("piggyback", {"backbone_init": "first_task"}),  # backbone trained on task 0, then frozen
    ("joint", {}),
    ("gem", {"num_memories": 50}),  # random memories drawn after each task
    ("ergnn", {"num_memories": 50}),  # CM: random subsamples and tie-breaks
    ("hat", {}),  # task embeddings, stored masks and per-task BatchNorm statistics
    # memory id lists, class counts, kept past nodes, Fisher and anchor
    ("cgnn", {"memory_size": 20, "new_nodes_size": 10, "ewc_lambda": 80.0}),
    ("pignn", {"lr": 0.01, "num_memories": 40, "retrain": 1.0}),  # blocks re-grown first
    ("cat", {"num_memories": 50, "condense_steps": 10}),  # synthetic memory, random encoders
    # CGLB's one optimizer for the stream: Adam's moments must come back with the point
    ("finetune", {"optimizer_state": "keep", "weight_decay": 5e-4}),
    ("ewc", {"optimizer_state": "keep", "lamb": 1000.0}),
])
def test_interrupted_run_continues_bit_identically(tmp_path, method, extra):
    params = {**PARAMS, **extra}
    reference = run_experiment(method=method, seed=3, params=params)
    assert "resumed" not in reference
    path = tmp_path / "run.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(method=method, seed=3, params=params, callbacks=[Stop()],
                       resume_file=path, resume_tag="t")
    assert path.is_file()
    torch.manual_seed(12345)  # the resumed run must not depend on the process's generator
    resumed = run_experiment(method=method, seed=3, params=params, resume_file=path,
                             resume_tag="t")
    assert resumed["resumed"]["after_task"] == STOP_AT - 1
    assert resumed["resumed"]["earlier_seconds"] > 0
    same_run(resumed, reference)
    # only the tasks after the resume point were trained again
    assert len(resumed["timing"]["task_train_seconds"]) == len(reference["R_test"])


def test_a_resume_point_of_another_run_or_a_corrupt_file_starts_over(tmp_path):
    path = tmp_path / "run.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(method="ewc", seed=1, params=PARAMS, callbacks=[Stop()],
                       resume_file=path, resume_tag="code v1")
    reference = run_experiment(method="ewc", seed=1, params=PARAMS)
    with pytest.warns(UserWarning, match="belongs to another run or version .*tag"):
        fresh = run_experiment(method="ewc", seed=1, params=PARAMS, resume_file=path,
                               resume_tag="code v2")
    assert "resumed" not in fresh
    same_run(fresh, reference)

    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match=f"resume point {path} is unreadable"):
        fresh = run_experiment(method="ewc", seed=1, params=PARAMS, resume_file=path,
                               resume_tag="code v2")
    same_run(fresh, reference)


def test_orchestrator_resumes_a_stopped_job_and_removes_its_resume_point(tmp_path):
    """A job whose worker was stopped after task 2 (the file it left next to the result
    JSONs) is continued by the next command, logged with the task it resumed after, and
    its resume point is deleted once the result is saved."""
    server = shared_server()
    experiment = unique("resume")
    backend = LocalBackend(1)
    job = backend.prepare(expand_jobs(["packnet"], ["synthetic"], [2], params=PARAMS))[0]
    path = resume_path(tmp_path, experiment, job)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(job, callbacks=[Stop()], resume_file=path,
                       resume_tag=resume_tag(job))
    assert path.is_file()
    backup = shutil.copyfile(path, tmp_path / "backup.pt")
    reference = run_experiment(job)

    tracker = Tracker(server.uri, experiment)
    summary = run_jobs([job], tracker, backend, results_dir=tmp_path)
    assert summary.ok and len(summary.finished) == 1
    result = summary.finished[0][1]
    assert result["resumed"]["after_task"] == STOP_AT - 1
    same_run(result, reference)
    assert not path.exists()
    child = MlflowClient(server.uri).search_runs(
        [tracker.experiment_id], "tags.`clbench.role` = 'child'")[0]
    assert child.data.tags["clbench.resumed_after_task"] == str(STOP_AT - 1)
    assert np.isclose(child.data.metrics["AP"], result["metrics"]["AP"])

    # --force starts over: a forced job's (valid) resume point is removed before it runs
    shutil.copyfile(backup, path)
    again = run_jobs([job], tracker, backend, results_dir=tmp_path, force=True)
    assert again.ok and "resumed" not in again.finished[0][1] and not path.exists()
    same_run(again.finished[0][1], reference)


PLUGIN = '''
from clbench import register_method
from clbench.methods.finetune import NCTaskILBareTrainer


@register_method("{name}")
class EditedTrainer(NCTaskILBareTrainer):
    """version {version}"""
'''


def test_resume_tag_covers_a_plugin_methods_source(tmp_path):
    """Editing a plugin between two attempts changes the tag, so the new code does not
    continue from a point the old code saved; clbench's own methods carry no plugin part."""
    name = unique("edited-plugin")
    plugin = tmp_path / "edited.py"
    plugin.write_text(PLUGIN.format(name=name, version=1))
    load_plugin(str(plugin))
    backend = LocalBackend(1)
    job = backend.prepare(expand_jobs([name], ["synthetic"], [0], params=PARAMS,
                                      plugins=[str(plugin)]))[0]
    before = resume_tag(job)
    assert before == resume_tag(job)  # deterministic
    plugin.write_text(PLUGIN.format(name=name, version=2))
    after = resume_tag(job)
    assert " code=" in before and " code=" in after and before != after
    assert before.split(" code=")[0] == after.split(" code=")[0]  # only the plugin part moved

    builtin = backend.prepare(expand_jobs(["finetune"], ["synthetic"], [0], params=PARAMS))[0]
    assert external_code_digest(builtin.method, builtin.dataset) == ""
    assert " code=" not in resume_tag(builtin)


class _Evil:
    """What a planted pickle holds: unpickling it runs a shell command."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_planted_malicious_resume_point_is_refused_and_runs_nothing(tmp_path):
    """A file planted where a resume point would be (an object whose ``__reduce__`` runs
    a command) is refused with a warning, never unpickled, and the run starts over."""
    marker = tmp_path / "pwned"
    path = tmp_path / "run.resume.pt"
    torch.save(_Evil(marker), path)
    reference = run_experiment(method="ewc", seed=1, params=PARAMS)
    with pytest.warns(UserWarning, match="holds more than tensors and plain data.*refused"):
        fresh = run_experiment(method="ewc", seed=1, params=PARAMS, resume_file=path,
                               resume_tag="t")
    assert not marker.exists()
    assert "resumed" not in fresh
    same_run(fresh, reference)


def test_a_resume_point_may_not_call_classes_pyg_registers_as_safe(tmp_path, monkeypatch):
    """``weights_only=True`` alone accepts every class a library registered with
    ``add_safe_globals``; PyG registers ClusterData, whose constructor reads and writes
    files. A resume point naming it is refused before it is loaded."""
    from torch_geometric.data import Data
    from torch_geometric.loader import ClusterData

    calls = []
    monkeypatch.setattr(ClusterData, "__init__", lambda self, *a, **k: calls.append(a))

    class _Cluster:
        def __reduce__(self):
            return ClusterData, (Data(edge_index=torch.zeros(2, 0, dtype=torch.long)), 2)

    path = tmp_path / "run.resume.pt"
    torch.save({"format": 2, "trainer": _Cluster()}, path)
    with pytest.warns(UserWarning, match="refused"):
        fresh = run_experiment(method="finetune", seed=1, params=PARAMS, resume_file=path,
                               resume_tag="t")
    assert calls == [] and "resumed" not in fresh


def test_a_planted_resume_point_through_the_command(tmp_path):
    """As a user would meet it: `clbench run --track` with a malicious file where the job's
    resume point goes. The job starts over (exit 0, the warning on stderr), nothing runs."""
    marker = tmp_path / "pwned"
    args = ["--method", "finetune", "--dataset", "synthetic", "--param", "epochs=3",
            "--param", "hidden=16"]
    job = LocalBackend(1).prepare(expand_jobs(["finetune"], ["synthetic"], [0],
                                              params={"epochs": 3, "hidden": 16}))[0]
    path = resume_path(tmp_path / "results", "clbench", job)
    path.parent.mkdir(parents=True)
    torch.save(_Evil(marker), path)
    proc = cli_process("run", *args, "--track", "--tracking-uri",
                       f"sqlite:///{tmp_path / 'm.db'}", "--results-dir", tmp_path / "results",
                       "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert "refused" in proc.stderr
    assert "AP" in proc.stdout


def test_state_files_hold_plain_data_only(tmp_path):
    """The encoding round-trips what trainers keep (shared objects stay shared), refuses
    what it cannot store, and a crafted tree cannot name a class outside its allow-lists."""
    from torch import nn

    from clbench import statefile
    from clbench.trainer import TrainerResult

    model = nn.Linear(3, 2)
    extra = nn.Parameter(torch.randn(4))
    opt = torch.optim.Adam([extra], lr=0.01)
    extra.grad = torch.ones(4)
    opt.step()
    main = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(main, patience=3)
    sched.step(1.0)
    states = {"masks": {"w": extra}, "opt": opt, "sched": sched, "packed": np.arange(5),
              "rng": np.random.get_state(), "dtype": torch.int8, 3: (1.5, None, "x"),
              "scalar": np.float64(0.25), "count": np.int64(7),
              "frozen": [(model.weight, torch.ones(2, 3).bool(), model.weight.detach().clone())],
              "result": TrainerResult(np.eye(2), np.eye(2), np.ones(2), np.ones(2))}
    tree = statefile.encode(states, model)
    torch.save(tree, tmp_path / "s.pt")
    back = statefile.decode(torch.load(tmp_path / "s.pt", weights_only=True), model)
    assert back["frozen"][0][0] is model.weight  # the model's own parameter, by name
    assert back["opt"].param_groups[0]["params"][0] is back["masks"]["w"]  # shared object
    assert back["sched"].optimizer.param_groups[0]["params"][0] is model.weight
    assert back["sched"].patience == 3 and back["sched"].best == 1.0
    assert torch.equal(back["opt"].state_dict()["state"][0]["exp_avg"],
                       opt.state_dict()["state"][0]["exp_avg"])
    assert np.array_equal(back["packed"], np.arange(5)) and back[3] == (1.5, None, "x")
    assert back["rng"][0] == "MT19937" and np.array_equal(back["rng"][1], states["rng"][1])
    assert isinstance(back["result"], TrainerResult) and back["dtype"] is torch.int8
    assert type(back["scalar"]) is np.float64 and back["scalar"] == 0.25
    assert type(back["count"]) is np.int64 and back["count"] == 7

    from collections import OrderedDict, defaultdict

    ordered = statefile.decode(statefile.encode({"o": OrderedDict(a=1), "leaf":
                                                 torch.ones(2, requires_grad=True)}))
    assert type(ordered["o"]) is OrderedDict and ordered["leaf"].requires_grad
    for bad in (lambda: 0, nn.ReLU(), object(), np.array([object()]), defaultdict(int),
                torch.ones(2, requires_grad=True) * 2):
        with pytest.raises(statefile.Unsupported):
            statefile.encode({"x": bad}, model)
    crafted = {statefile.KIND: "object", "id": 0, "class": "os.system", "vars": {}}
    with pytest.raises(statefile.Malformed):
        statefile.decode(crafted)
    with pytest.raises(statefile.Malformed):
        statefile.decode({statefile.KIND: "optimizer", "id": 0, "class": "__init__",
                          "params": [], "state": {}})
