"""How large is EWC's penalty in clbench's BeGin-faithful setting? Runs EWC at a given config and
records, per task, the Fisher's sum/max and the largest penalty term seen in training."""
import json
import sys

from clbench.experiment import ExperimentSpec, run_experiment
from clbench.trainer import TrainerCallback


class Probe(TrainerCallback):
    def __init__(self):
        self.pen = {}
        self.fisher = []

    def on_epoch_end(self, trainer, task_id, epoch, results):
        p = results["train_stats"].get("penalty", 0.0)
        self.pen[task_id] = max(self.pen.get(task_id, 0.0), p)

    def on_task_end(self, trainer, task_id, row):
        f = trainer.training_states["fishers"]
        self.fisher.append({"sum": float(f[-1].sum()), "max": float(f[-1].max()),
                            "nonzero": int((f[-1] > 0).sum()), "P": int(f.shape[1])})


ds, seed = sys.argv[1], int(sys.argv[2])
params = dict(kv.split("=", 1) for kv in sys.argv[3:])
probe = Probe()
r = run_experiment(ExperimentSpec(method="ewc", dataset=ds, seed=seed, num_tasks=3,
                                  classes_per_task=2, data_dir="/work/data-root", params=params,
                                  threads=1), callbacks=[probe])
print(json.dumps({"dataset": ds, "seed": seed, "params": params, "AP": r["metrics"]["AP"],
                  "AF": r["metrics"]["AF"], "fisher_per_task": probe.fisher,
                  "max_penalty_per_task": probe.pen}))
