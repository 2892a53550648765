"""Run a server (the MLflow UI) so that it stops with the command that started it.

``mlflow ui`` is a tree of processes: the ``mlflow`` command starts uvicorn (which
starts its workers) and a job runner (which starts huey consumers). Signalling only
the ``mlflow`` process does not stop the tree: on SIGTERM it forwards the signal to
uvicorn alone, and the rest goes on (measured with MLflow 3.17: after 40 s the port
was closed but uvicorn's supervisor, the job runner and seven huey consumers were
still there). So :func:`serve` starts the server as the leader of a process group of
its own (``start_new_session``) and stops the whole group:

* SIGTERM, SIGINT (Ctrl-C) or SIGHUP to the serving command: the same signal goes to
  the whole group (``os.killpg``); whatever is left after ``grace`` seconds gets
  SIGKILL; the command returns once the group is empty. A second signal skips the
  rest of the grace period.
* The server exits by itself: what it left in its group is stopped the same way.
* The serving command is SIGKILLed (or dies otherwise) and can do nothing: a small
  guard process (``python -m clbench.serve``, started beside the server, outside its
  group) notices within ``POLL`` seconds (its ``os.getppid()`` changes, see
  :mod:`clbench.lifeline`) and stops the group.

``PR_SET_PDEATHSIG`` on the ``mlflow`` process itself would not do: SIGKILL would
kill that one process and orphan the rest, and SIGTERM is the partial shutdown above.
(The guard polls rather than asking for it too: the kernel sends it when the thread
that started the guard ends, which need not be the serving command's end.)
What still escapes: SIGKILL to the serving command *and* its guard at once (e.g.
``pkill -9 -f clbench``), and processes that leave the group on their own (MLflow
starts the jobs it runs for its job executor in sessions of their own; those watch
their parent). ``kill -- -PGID`` stops the rest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from clbench.lifeline import orphaned

#: Seconds a stopped server gets to shut down cleanly before SIGKILL (the MLflow UI
#: takes 2-4 s on a busy 2-core machine).
GRACE = 8.0
#: How often the serving command and the guard check on the server.
POLL = 0.5
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP")
                     if hasattr(signal, name))


def group_exists(pgid: int) -> bool:
    """Whether process group ``pgid`` has a process (zombies count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Whether a process of process group ``pgid`` is still running. Where ``/proc``
    tells (Linux), zombies do not count: dead processes that only wait for their
    parent, for orphans init (which on some machines takes seconds), to reap them."""
    return group_exists(pgid) and _has_running_member(pgid)


def _has_running_member(pgid: int) -> bool:
    if not os.path.isdir("/proc/self"):
        return True
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    state, _, group = fh.read().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError, IndexError):
                continue
            if int(group) == pgid and state not in ("Z", "X"):
                return True
    return False


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, sig: int = signal.SIGTERM, grace: float = GRACE, *,
               leader: subprocess.Popen | None = None,
               hurry: Callable[[], bool] = lambda: False) -> bool:
    """Send ``sig`` to process group ``pgid``, give it ``grace`` seconds (less if
    ``hurry()`` turns true) to empty, then SIGKILL what is left and wait for that.

    ``leader``: the group's leader when it is our child, reaped while waiting (its
    zombie would keep the group alive). True if the group ended before SIGKILL.
    """
    if not _signal_group(pgid, sig):
        return True
    if _wait_group(pgid, grace, leader, hurry):
        return True
    _signal_group(pgid, signal.SIGKILL)
    _wait_group(pgid, 10.0, leader)
    return False


def _wait_group(pgid: int, timeout: float, leader: subprocess.Popen | None,
                hurry: Callable[[], bool] = lambda: False) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if leader is not None:
            leader.poll()
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline or hurry():
            return False
        time.sleep(0.1)


@contextlib.contextmanager
def _stop_requests(requests: list[int]) -> Iterator[None]:
    """Record SIGTERM, SIGINT and SIGHUP in ``requests`` instead of dying (main thread
    only: elsewhere signal handlers cannot be set and the defaults stay)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: requests.append(signum))
                for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_status(code: int | None) -> int:
    if code is None:
        return 1
    return 128 - code if code < 0 else code


def serve(cmd: Sequence[str], *, grace: float = GRACE) -> int:
    """Run the server command ``cmd`` until it exits or this process is asked to stop
    (SIGTERM, SIGINT, SIGHUP), then stop its whole process group (see the module
    docstring). Returns 0 after a requested stop, else the server's exit status."""
    if not hasattr(os, "killpg"):  # no process groups (Windows): the plain command
        return subprocess.call(list(cmd))
    requests: list[int] = []
    with _stop_requests(requests):
        server = subprocess.Popen(list(cmd), start_new_session=True)
        guard = _start_guard(server.pid, grace)
        try:
            while server.poll() is None and not requests:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(POLL)
        finally:
            stop_group(server.pid, requests[0] if requests else signal.SIGTERM, grace,
                       leader=server, hurry=lambda: len(requests) > 1)
            server.wait()
            _stop_guard(guard)
    return 0 if requests else _exit_status(server.returncode)


def _start_guard(pgid: int, grace: float) -> subprocess.Popen | None:
    """The guard process that stops group ``pgid`` if this process dies (best effort)."""
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "clbench.serve", str(os.getpid()), str(pgid), str(grace)],
            stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return None


def _stop_guard(guard: subprocess.Popen | None) -> None:
    if guard is None:
        return
    with contextlib.suppress(OSError):
        guard.terminate()  # the group is gone: it exits at once
    try:
        guard.wait(5)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait()


def guard(parent_pid: int, pgid: int, grace: float = GRACE) -> int:
    """Wait while ``parent_pid`` (the serving command) lives and group ``pgid`` exists;
    when the parent dies, or this process gets SIGTERM/SIGINT/SIGHUP, stop the group."""
    requests: list[int] = []
    with _stop_requests(requests):
        while not requests and not orphaned(parent_pid) and group_exists(pgid):
            time.sleep(POLL)
        stop_group(pgid, signal.SIGTERM, grace, hurry=lambda: len(requests) > 1)
    return 0


if __name__ == "__main__":  # the guard started by serve()
    sys.exit(guard(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
