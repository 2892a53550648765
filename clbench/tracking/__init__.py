"""MLflow tracking for the orchestrator (through :class:`mlflow.tracking.MlflowClient`).

Layout of one experiment (one per ``clbench run`` / ``clbench sweep`` command, name
settable)::

    parent run   <method> · <dataset>       one per (method, dataset, config hash)
      child run  <method> · <dataset> · seed <s>    one per seed (nested through the
                                                    ``mlflow.parentRunId`` tag)

Only the orchestrating process talks to MLflow: workers return their results and
the parent logs them, so a SQLite store never sees concurrent writers.

A child run logs every resolved hyperparameter and the protocol settings as
params, the dataset card and package versions, per-task metrics with
``step = task index`` (``test/task_<j>``, ``val/task_<j>``, ``test/AP_so_far``, times
per task), the final ``AP``/``AF``/``BWT``/``FWT`` (and ``INT`` once a joint run of
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
* :mod:`~clbench.tracking.tracker`: the :class:`Tracker`.
"""

from clbench.parsing import parse_seed_list, seeds_text
from clbench.tracking.records import (
    CODE_TAG_NAMES,
    FINAL_METRICS,
    SPREAD_METRICS,
    TAG_ABANDONED,
    TAG_COMMAND,
    TAG_CONFIG,
    TAG_DATASET,
    TAG_ERROR,
    TAG_EXTERNAL_CODE_DIGEST,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_HOST,
    TAG_INT_REFERENCE,
    TAG_METHOD,
    TAG_PARENT,
    TAG_PROTOCOL,
    TAG_RECOVERED_FROM,
    TAG_REPORT_SEEDS,
    TAG_RESUMED_AFTER,
    TAG_ROLE,
    TAG_SEED,
    TAG_SEEDS,
    TAG_SELECTED,
    TAG_SELECTED_PREFIX,
    TAG_SELECTION,
    TAG_SOURCE,
    TAG_SOURCE_DIGEST,
    TAG_SWEEP_FILE,
    RunRecord,
    aggregate,
    code_tag,
    command_owner,
    dataset_card_info,
    job_params,
    owner_gone,
    process_token,
    read_matrix_csv,
    result_metrics,
    result_params,
    select_seed_runs,
    write_matrix_csv,
)
from clbench.tracking.store import (
    QUICK_HTTP_ENV,
    STORE_LOCK_TIMEOUT,
    check_tracking_uri,
    quick_http,
    require_existing_store,
    resolve_tracking_uri,
    sqlite_file,
    store_lock,
    store_lock_file,
)
from clbench.tracking.tracker import DEFAULT_EXPERIMENT, Tracker

__all__ = [
    "CODE_TAG_NAMES",
    "DEFAULT_EXPERIMENT",
    "FINAL_METRICS",
    "QUICK_HTTP_ENV",
    "SPREAD_METRICS",
    "STORE_LOCK_TIMEOUT",
    "TAG_ABANDONED",
    "TAG_COMMAND",
    "TAG_CONFIG",
    "TAG_DATASET",
    "TAG_ERROR",
    "TAG_EXTERNAL_CODE_DIGEST",
    "TAG_GIT_COMMIT",
    "TAG_GIT_DIRTY",
    "TAG_HOST",
    "TAG_INT_REFERENCE",
    "TAG_METHOD",
    "TAG_PARENT",
    "TAG_PROTOCOL",
    "TAG_RECOVERED_FROM",
    "TAG_REPORT_SEEDS",
    "TAG_RESUMED_AFTER",
    "TAG_ROLE",
    "TAG_SEED",
    "TAG_SEEDS",
    "TAG_SELECTED",
    "TAG_SELECTED_PREFIX",
    "TAG_SELECTION",
    "TAG_SOURCE",
    "TAG_SOURCE_DIGEST",
    "TAG_SWEEP_FILE",
    "RunRecord",
    "Tracker",
    "aggregate",
    "check_tracking_uri",
    "code_tag",
    "command_owner",
    "dataset_card_info",
    "job_params",
    "owner_gone",
    "parse_seed_list",
    "process_token",
    "quick_http",
    "read_matrix_csv",
    "require_existing_store",
    "resolve_tracking_uri",
    "result_metrics",
    "result_params",
    "seeds_text",
    "select_seed_runs",
    "sqlite_file",
    "store_lock",
    "store_lock_file",
    "write_matrix_csv",
]
