"""MLflow tracking for the orchestrator (through :class:`mlflow.tracking.MlflowClient`).

Layout of one experiment (one per ``clbench run`` / ``clbench sweep`` command, name
settable)::

    parent run   <method> · <dataset> · <configuration>   one per (method, dataset,
                                                          config hash)
      child run  <method> · <dataset> · seed <s>    one per seed (nested through the
                                                    ``mlflow.parentRunId`` tag)

The experiment is marked as a model-training one and holds a saved view of its runs
table for the MLflow UI (:mod:`~clbench.tracking.mlflow_ui`).

Only the orchestrating process talks to MLflow: workers return their results and
the parent logs them, so a SQLite store never sees concurrent writers.

A child run logs every resolved hyperparameter and the protocol settings as
params, the dataset card and package versions, per-task metrics with
``step = task index`` (``test/task_<j>``, ``val/task_<j>``, ``test/AP_so_far``, times
per task; ``train/penalty_ratio``, a regulariser's penalty / task loss at the end of
each task; ``learned/balanced_accuracy``, each task's balanced accuracy among its own
classes right after it was learned), the tags ``clbench.degenerate_tasks`` (tasks that
learned nothing, or ``none``), ``clbench.degenerate_check`` (how that was checked) and
``clbench.weakest_learned_task`` (the task of the final ``learned_bacc_min``, the lowest
of those balanced accuracies), the final
``AP``/``AF``/``BWT``/``FWT`` (and ``INT`` once a joint run of
the same dataset, seed and protocol exists in the experiment), time, peak memory
and the method's extra storage, plus artifacts (``R_test.csv``, ``R_val.csv``,
``R_test_heatmap.png``, ``ap_curve.png``, ``config.json``, ``result.json``).
A parent run logs ``<metric>_mean``/``<metric>_std`` over its seeds (population
std), ``n_seeds``, ``per_seed.csv`` and a ``seed_spread.png`` figure.

Runs are found again by tags (``clbench.role``, ``clbench.method``,
``clbench.dataset``, ``clbench.seed``, ``clbench.config_hash``), which is what
resume and ``clbench compare`` rely on.

The package's modules:

* :mod:`~clbench.tracking.store`: tracking URIs, the SQLite store's lock, failing fast
  on a store that cannot be used;
* :mod:`~clbench.tracking.records`: every tag name (``TAG_*``), :class:`RunRecord`, the
  aggregation over seeds, what a job logs (params, metrics, matrix CSVs), the owner of a
  run;
* :mod:`~clbench.tracking.tracker`: the :class:`Tracker`;
* :mod:`~clbench.tracking.mlflow_ui`: how an experiment looks in the MLflow UI (its
  kind, the saved view of AP and AF, the link that opens it, parent run names).
"""

from clbench.parsing import parse_seed_list, seeds_text
from clbench.tracking import records, store
from clbench.tracking.records import *  # noqa: F403  (what records.__all__ lists)
from clbench.tracking.store import *  # noqa: F403  (what store.__all__ lists)
from clbench.tracking.tracker import DEFAULT_EXPERIMENT, Tracker

__all__ = [*records.__all__, *store.__all__, "DEFAULT_EXPERIMENT", "Tracker",
           "parse_seed_list", "seeds_text"]
