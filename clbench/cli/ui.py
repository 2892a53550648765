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
    """Start the MLflow UI on the store clbench logs to (Ctrl-C stops it), and print a
    link per clbench experiment that opens its runs table on AP and AF.

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
    base = f"http://{host}:{port}"
    console.print(f"MLflow UI for {uri} at {base} (Ctrl-C stops it)",
                  highlight=False, soft_wrap=True, markup=False)
    links = experiment_links(uri, base.replace("//0.0.0.0:", "//127.0.0.1:"))
    if links:
        console.print("Compare methods (parent runs with AP and AF, best AP first):",
                      highlight=False, markup=False)
        for name, url in links:
            console.print(f"  {name}: {url}", highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(serve(cmd))


#: At most this many experiments get a link (the most recently updated ones).
MAX_LINKS = 10


def experiment_links(uri: str, base: str) -> list[tuple[str, str]]:
    """(name, link) of the clbench experiments in the local store ``uri``, each marked
    for the UI first (stores written by an older clbench lack the marks). Empty when
    the store does not exist yet or cannot be read (``mlflow ui`` then says why)."""
    from clbench.tracking import TAG_SOURCE, sqlite_file, store_lock
    from clbench.tracking.mlflow_ui import mark_experiment, runs_url

    path = sqlite_file(uri)
    if path is not None and not path.is_file():
        return []
    try:
        from mlflow.tracking import MlflowClient

        with store_lock(uri):
            client = MlflowClient(tracking_uri=uri)
        found = client.search_experiments(
            filter_string=f"tags.`{TAG_SOURCE}` = 'clbench'", max_results=MAX_LINKS,
            order_by=["last_update_time DESC"])
        for exp in found:
            mark_experiment(client, exp.experiment_id, exp.tags)
    except Exception:
        return []
    return [(exp.name, runs_url(base, exp.experiment_id)) for exp in found]
