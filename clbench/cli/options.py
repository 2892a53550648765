"""Options shared by several commands, and the checks of what a user gave that need
no data: empty values, output paths, devices, plugin paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clbench.errors import ClbenchError, clip

JobsOpt = Annotated[int | None, typer.Option(
    "--jobs", "-j", help="Parallel jobs on this machine (loky workers). Default: the usable "
                         "cores (-1 says the same).")]
BackendOpt = Annotated[str | None, typer.Option(
    help="loky (local processes, default) or dask (an existing dask.distributed cluster).")]
SchedulerOpt = Annotated[str | None, typer.Option(
    help="Dask scheduler address for --backend dask, e.g. tcp://10.0.0.5:8786.")]
TrackingOpt = Annotated[str | None, typer.Option(
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
         "in the working directory).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Rerun jobs that already have a FINISHED run.")]
ResultsOpt = Annotated[Path, typer.Option(
    help="Where each finished job's result JSON is saved (under runs/).")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Show which jobs are finished, saved or still to run, with an "
                      "estimate of the time left; run and log nothing.")]

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
PluginOpt = Annotated[list[str] | None, typer.Option(
    help="Python file or module that registers methods/datasets (repeatable).")]


def check_given(**options: str | None) -> None:
    """Options given as an empty string are an error (not their default)."""
    for name, value in options.items():
        if value is not None and not value.strip():
            raise ClbenchError(f"--{name.replace('_', '-')} is empty")


def check_output_file(path: Path | None, option: str) -> None:
    """Fail before anything runs when ``path`` cannot be written as a file: it is a
    directory, or one of its parents is a file."""
    if path is None:
        return
    try:
        if path.is_dir():
            raise ClbenchError(f"{option} {clip(path)} is a directory")
        parent = next((d for d in path.parents if d.exists()), None)
    except OSError as exc:  # e.g. a name too long for the file system
        raise ClbenchError(f"{option} {clip(path)}: {exc.strerror or exc}") from None
    if parent is not None and not parent.is_dir():
        raise ClbenchError(f"{option} {clip(path)}: {clip(parent)} is not a directory")


def check_local_device(backend: str | None, jobs: int | None, scheduler: str | None,
                        device: str) -> None:
    """Jobs that run on this machine need ``device`` here (a Dask cluster's workers are
    checked when they run)."""
    from clbench.orchestrate import check_backend_options
    from clbench.resolve import check_device

    if check_backend_options(backend, jobs, scheduler)[0] == "loky":
        check_device(device)


def check_output_dir(path: Path, option: str) -> None:
    """Fail before anything is read when ``path`` cannot be a directory to write into."""
    try:
        clash = next((d for d in (path, *path.parents) if d.exists() and not d.is_dir()),
                     None)
    except OSError as exc:  # e.g. a name too long for the file system
        raise ClbenchError(f"{option} {clip(path)}: {exc.strerror or exc}") from None
    if clash is not None:
        raise ClbenchError(f"{option} {clip(path)}: {clip(clash)} is not a directory")


def plugin_paths(plugins: list[str]) -> list[str]:
    """Plugin files as absolute paths (workers may not share the working directory)."""
    from clbench.plugins import is_plugin_file

    return [str(Path(p).resolve()) if is_plugin_file(p) else p for p in plugins]
