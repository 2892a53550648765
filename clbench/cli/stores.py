"""Opening the MLflow store for a command: resolve it, fail fast when it is unusable,
and create nothing a failed command would leave behind."""

from __future__ import annotations

from clbench.errors import ClbenchError, clip


def resolve_uri(tracking_uri: str | None) -> str:
    from clbench.tracking import resolve_tracking_uri

    return resolve_tracking_uri(tracking_uri)


def sqlite_store(uri: str) -> bool | None:
    """Whether the SQLite file of ``uri`` exists (None for other stores); a path the
    file system refuses (e.g. a name too long) is an error."""
    from clbench.tracking import sqlite_file

    path = sqlite_file(uri)
    try:
        return None if path is None else path.exists()
    except OSError as exc:
        raise ClbenchError(f"--tracking-uri {clip(uri)}: {exc.strerror or exc}") from None


def open_tracking(tracking_uri: str | None, experiment: str, must_exist: bool = False,
                   load_data=None):
    """Resolve the store and fail fast (exit 2) if it is unusable (or, ``must_exist``,
    a SQLite store that is not there yet: for commands that only read).

    ``load_data()`` (the datasets' loading) runs after that check, or before it when the
    check would create a new SQLite store: a dataset that fails to load then leaves no
    store behind."""
    from clbench.tracking import (
        Tracker,
        check_tracking_uri,
        require_existing_store,
        resolve_tracking_uri,
    )

    uri = resolve_tracking_uri(tracking_uri)
    new_store = sqlite_store(uri) is False
    if must_exist:
        require_existing_store(uri)
    if load_data is not None and new_store:
        load_data()
    check_tracking_uri(uri)
    if load_data is not None and not new_store:
        load_data()
    return uri, lambda: Tracker(uri, experiment)


def existing_tracker(tracking_uri: str | None, experiment: str):
    """The store's URI and the experiment's tracker, or None if the experiment (or the
    SQLite file) does not exist yet: a dry run creates nothing."""
    from mlflow.tracking import MlflowClient

    from clbench.tracking import Tracker, check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if sqlite_store(uri) is False:
        return uri, None
    check_tracking_uri(uri)
    if MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment) is None:
        return uri, None
    return uri, Tracker(uri, experiment, create=False)
