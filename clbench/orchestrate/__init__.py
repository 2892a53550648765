"""Run a grid of (method, dataset, seed) jobs in parallel, log them, resume, survive crashes.

One job is one run, a :class:`~clbench.spec.RunSpec` (``Job`` is kept as its alias). The
package, in the order a command goes through it:

* :func:`~clbench.resolve.resolve_grid` (``expand_jobs``) turns methods x datasets x
  seeds (and the shared settings) into specs, resolving and validating every
  hyperparameter up front; :mod:`~clbench.orchestrate.sweep` does the same for a sweep
  file (:mod:`~clbench.orchestrate.sweepfile`) and selects its configurations.
* :mod:`~clbench.orchestrate.plan`: which jobs are done (a FINISHED MLflow run), saved
  (a result JSON not logged yet) or to run (``--dry-run``).
* :mod:`~clbench.orchestrate.backends`: a backend runs them, :class:`LocalBackend`
  through joblib's loky process pool (each job with its own torch threads: 1 unless
  ``--threads``), :class:`DaskBackend` through joblib's Dask backend on an existing
  ``dask.distributed`` scheduler; a dead worker becomes a failed job, not a hung or
  broken command.
* :mod:`~clbench.orchestrate.worker`: what runs one job in a worker process
  (:func:`execute_job`), or in a child process of a Dask worker
  (:func:`execute_job_isolated`, ``python -m clbench.orchestrate``).
* :mod:`~clbench.orchestrate.loop`: :func:`run_jobs`, the loop in the parent process,
  which logs every job to MLflow (only the parent writes to the store), FAILED or KILLED
  when it did not finish.
* :mod:`~clbench.orchestrate.results`: each job's result JSON (written before it is
  logged) and resume point under ``results/runs/``.
"""

from clbench.orchestrate.backends import (
    Backend,
    DaskBackend,
    LocalBackend,
    check_backend_options,
    make_backend,
    stop_loky_pool,
)
from clbench.orchestrate.loop import Reporter, Summary, run_jobs
from clbench.orchestrate.plan import (
    Plan,
    plan_jobs,
    relative_run_costs,
    typical_run_seconds,
)
from clbench.orchestrate.results import (
    check_results_dir,
    prepare_datasets,
    read_saved_result,
    result_path,
    results_folder,
    resume_path,
    write_json_atomic,
)
from clbench.orchestrate.worker import (
    Outcome,
    execute_job,
    execute_job_isolated,
    resume_tag,
)
from clbench.resolve import resolve_grid
from clbench.spec import RunSpec

#: One job of the orchestrator is one run (the name older code imports).
Job = RunSpec
#: Methods x datasets x seeds into validated specs (the name older code imports).
expand_jobs = resolve_grid

__all__ = [
    "Backend",
    "DaskBackend",
    "Job",
    "LocalBackend",
    "Outcome",
    "Plan",
    "Reporter",
    "Summary",
    "check_backend_options",
    "check_results_dir",
    "execute_job",
    "execute_job_isolated",
    "expand_jobs",
    "make_backend",
    "plan_jobs",
    "prepare_datasets",
    "read_saved_result",
    "relative_run_costs",
    "result_path",
    "results_folder",
    "resume_path",
    "resume_tag",
    "run_jobs",
    "stop_loky_pool",
    "typical_run_seconds",
    "write_json_atomic",
]
