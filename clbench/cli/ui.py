"""``clbench ui``: the MLflow UI on the store clbench logs to."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from clbench.cli.app import ClbenchCommand, app, console
from clbench.cli.options import TrackingOpt
from clbench.errors import ClbenchError


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line serving the store at ``uri``."""
    import shutil

    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if exe is None:
        raise ClbenchError("the mlflow command is not installed (pip install mlflow)")
    return [exe, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


@app.command(cls=ClbenchCommand)
def ui(
    tracking_uri: TrackingOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")]
        = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Start the MLflow UI on the store clbench logs to (Ctrl-C stops it).

    The server and every process it starts stop with this command: on Ctrl-C or
    SIGTERM, and within seconds if the command itself is killed.
    """
    from clbench.serve import serve
    from clbench.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        console.print(f"{uri} is an MLflow server already: open it in a browser.", markup=False)
        return
    cmd = ui_command(uri, host, port)
    console.print(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C stops it)",
                  highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(serve(cmd))
