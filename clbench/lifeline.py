"""Tie a process's life to the process that started it.

A worker that outlives its command (the command was SIGKILLed, its session closed
without a signal reaching the workers) would otherwise go on training queued jobs
nobody will log, and then sit idle holding torch and a graph in memory.
:func:`die_with` makes it exit within about a second of its parent's death.

How it tells. When a process dies, the kernel hands its children to another process
(init, or a subreaper), so a child's ``os.getppid()`` changes at that moment and
never changes back: comparing it with the pid the parent had is exact, and cannot be
fooled by the parent's pid being reused. A daemon thread does that every ``interval``
seconds and calls ``os._exit``.

``prctl(PR_SET_PDEATHSIG)`` (Linux) is faster and does not need the GIL, but the kernel
sends it when the *thread* that started the child ends, not the process: loky starts
workers from whichever thread submits work or manages the pool, so a worker would be
killed under a live pool when such a thread ends. :func:`die_with` therefore only uses
it when asked (``signal_on_death``), for a child whose starting thread waits for it
until it exits (a job process of a Dask worker).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

#: Exit status of a process that stops because its parent is gone.
EXIT_ORPHANED = 1

_PR_SET_PDEATHSIG = 1
_lock = threading.Lock()
_watching: dict[int, int] = {}  # this process's pid -> the pid it lives with


def orphaned(parent_pid: int) -> bool:
    """Whether ``parent_pid``, this process's parent when it started, is gone.

    Exact for the direct parent (see the module docstring). Should ``parent_pid`` be
    an ancestor further up instead, it counts as alive while it exists and is still
    among this process's ancestors.
    """
    if os.getppid() == parent_pid:
        return False
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return not _is_ancestor(parent_pid)


def _is_ancestor(pid: int) -> bool:
    """Whether ``pid`` is among this process's ancestors (read from ``/proc`` on Linux;
    assumed elsewhere)."""
    current = os.getppid()
    for _ in range(64):
        if current == pid:
            return True
        if current <= 1:
            return False
        try:
            with open(f"/proc/{current}/stat") as fh:
                current = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return True
    return True


def die_with(parent_pid: int | None, *, interval: float = 1.0,
             signal_on_death: bool = False) -> None:
    """Exit this process (``os._exit``) within ``interval`` seconds of ``parent_pid``'s death.

    ``parent_pid`` is normally this process's parent, captured by the parent itself
    (``os.getpid()`` when it builds the call), so a parent that died before this runs
    is noticed too: the process then exits at once. Nothing happens when
    ``parent_pid`` is None or this process (a job run in-process). Idempotent per process: a
    second call only changes the watched pid; a forked child starts watching afresh.

    ``signal_on_death`` also asks the kernel (Linux) for SIGKILL when the parent goes;
    only for a child whose starting thread outlives it (see the module docstring).
    """
    me = os.getpid()
    if parent_pid is None or parent_pid == me:
        return
    with _lock:
        started = me in _watching
        _watching[me] = parent_pid
    if signal_on_death:
        _set_parent_death_signal(signal.SIGKILL)
    if orphaned(parent_pid):
        os._exit(EXIT_ORPHANED)
    if not started:
        threading.Thread(target=_watch, args=(me, interval), name="clbench-lifeline",
                         daemon=True).start()


def _watch(me: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if orphaned(_watching[me]):
            os._exit(EXIT_ORPHANED)


def _set_parent_death_signal(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)`` on Linux; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    return False
