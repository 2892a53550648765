"""The MLflow store: tracking URIs, the SQLite store's lock, and failing fast (with one
clear line) when a store cannot be used."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

from clbench.errors import ClbenchError

#: Fast failure while checking the store: no retries, a few seconds per request.
QUICK_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default store.

    MLflow's default is a SQLite file in the working directory
    (``sqlite:///<cwd>/mlflow.db``); it is returned as an absolute URI.
    """
    if cli_value:
        return cli_value
    import mlflow

    return mlflow.get_tracking_uri()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def require_existing_store(uri: str) -> None:
    """For ``compare``, which only reads: a SQLite store must exist already (MLflow
    would create an empty one, and its directories, at a mistyped path)."""
    path = sqlite_file(uri)
    if path is not None and not path.is_file():
        raise ClbenchError(
            f"no MLflow store at {uri}: {path} does not exist (check --tracking-uri or "
            f"MLFLOW_TRACKING_URI; `clbench run` and `clbench sweep` create a store)"
        )


#: How long a command waits for another that is creating (or opening) the same SQLite
#: store before it gives up.
STORE_LOCK_TIMEOUT = 300.0


def store_lock_file(uri: str) -> Path | None:
    """``<store>.db.lock`` beside a SQLite store's file (None for other stores)."""
    path = sqlite_file(uri)
    if path is None or path.name in ("", ":memory:"):
        return None
    return path.with_name(path.name + ".lock")


def _quiet_store_creation() -> None:
    """MLflow logs "Creating initial MLflow database tables..." and "Updating database
    tables" at INFO when it creates a SQLite store: bookkeeping, not news for a user."""
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def store_lock(uri: str, timeout: float = STORE_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive file lock beside a SQLite store while MLflow opens it.

    MLflow creates a new SQLite store's tables and runs its schema migrations when it
    first opens the file, unguarded: two commands doing that at once both migrate,
    and one (or both) fails (``Online migration expected to match one row``, ``table
    ... already exists``) and can leave the schema half-migrated. Under this lock the
    second command waits and then finds the store complete. MLflow keeps an opened
    store for the process, so only a process's first opening takes long. A lock that
    cannot be created (a read-only folder, where no store can be created either) is
    skipped; other stores need none.
    """
    _quiet_store_creation()
    lock_file = store_lock_file(uri)
    if lock_file is None:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(lock_file, timeout=timeout)
    held = False
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would
        lock.acquire()
        held = True
    except Timeout:
        raise ClbenchError(
            f"another process has been creating or opening the MLflow store {uri} for "
            f"{timeout:.0f} s (it holds {lock_file}); try again when it is done"
        ) from None
    except OSError:
        pass
    try:
        yield
    finally:
        if held:
            lock.release()


def quick_http(env: Mapping[str, str] = QUICK_HTTP_ENV) -> contextlib.AbstractContextManager:
    """Temporarily make MLflow's HTTP client fail in seconds instead of retrying."""
    return temporary_env(env)


#: MLflow draws a progress bar for every artifact it downloads, even one small file.
NO_PROGRESS_BAR_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@contextlib.contextmanager
def temporary_env(env: Mapping[str, str]) -> Iterator[None]:
    """Set the environment variables ``env`` for the block, then restore them (MLflow
    reads its settings from the environment at each use)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def first_line(text: str, limit: int = 300) -> str:
    """The first non-blank line of ``text``, cut to ``limit`` characters."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _explain_store_error(uri: str, exc: BaseException) -> str:
    text = str(exc)
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        for needle, reason in (
            ("Connection refused", "connection refused"),
            ("timed out", "timed out"),
            ("Read timed out", "timed out"),
            ("Name or service not known", "unknown host"),
            ("Failed to resolve", "unknown host"),
            ("nodename nor servname", "unknown host"),
            ("Max retries exceeded", "no answer"),
        ):
            if needle in text:
                return (
                    f"cannot reach the MLflow tracking server at {uri} ({reason}); start it "
                    f"(e.g. `mlflow server --host 127.0.0.1 --port 5000`) or pass another "
                    f"--tracking-uri / MLFLOW_TRACKING_URI"
                )
        return f"the MLflow tracking server at {uri} does not answer properly: {first_line(text)}"
    return f"cannot use MLflow tracking URI {uri!r}: {first_line(text)}"


def check_tracking_uri(uri: str) -> None:
    """Fail fast (seconds) with a :class:`ClbenchError` when the store is unusable.

    Runs one cheap query through the MLflow client with retries disabled and a short
    HTTP timeout, so a mistyped URI or a server that is down is reported before any
    training starts.
    """
    from mlflow.tracking import MlflowClient

    with quick_http(), store_lock(uri):
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:
            raise ClbenchError(_explain_store_error(uri, exc)) from None


#: What ``clbench.tracking`` re-exports of this module.
__all__ = [
    "NO_PROGRESS_BAR_ENV",
    "QUICK_HTTP_ENV",
    "STORE_LOCK_TIMEOUT",
    "check_tracking_uri",
    "quick_http",
    "require_existing_store",
    "resolve_tracking_uri",
    "sqlite_file",
    "store_lock",
    "store_lock_file",
    "temporary_env",
]
