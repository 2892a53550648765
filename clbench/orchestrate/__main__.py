"""``python -m clbench.orchestrate JOB.json OUTCOME.json [PARENT_PID]``: one job in a
process of its own, as :func:`~clbench.orchestrate.worker.execute_job_isolated` starts it
on a Dask worker (see :func:`~clbench.orchestrate.worker.job_process_main`)."""

import sys

from clbench.orchestrate.worker import job_process_main

if __name__ == "__main__":
    sys.exit(job_process_main(sys.argv[1:]))
