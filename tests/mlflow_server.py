"""Test helpers: a real ``mlflow server`` on 127.0.0.1, the CLI in-process, a crash plugin.

The server is started once per test session (lazily, by the first test that needs
it) and stopped at exit; tests keep apart by using their own experiment names.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

#: A plugin with two methods that misbehave on seed ``bad_seed``, at the start of task 1:
#: ``raiser`` raises, ``killer`` SIGKILLs its own (worker) process.
CRASH_PLUGIN = '''
import os
import signal

import torch

from clbench.methods import register_method
from clbench.trainer import NCTrainer


class _Crashy(NCTrainer):
    card = {"params": {"bad_seed": 1}}

    def crash(self):
        raise NotImplementedError

    def processBeforeTraining(self, task_id, *args):
        if task_id == 1 and torch.initial_seed() == self.hparams["bad_seed"]:
            self.crash()
        super().processBeforeTraining(task_id, *args)


@register_method("raiser")
class Raiser(_Crashy):
    def crash(self):
        raise RuntimeError("boom on purpose")


@register_method("killer")
class Killer(_Crashy):
    def crash(self):
        os.kill(os.getpid(), signal.SIGKILL)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_exe() -> str:
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    assert exe, "the mlflow command is not installed"
    return exe


class MlflowServer:
    """``mlflow server`` with a SQLite store and a local artifact root under ``root``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.log = open(self.root / "server.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [mlflow_exe(), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'm.db'}",
             "--default-artifact-root", str(self.root / "artifacts"), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.root / "server.log").read_text()
                raise RuntimeError(f"mlflow server exited: {log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"{self.uri}/health", timeout=2) as r:
                if r.status == 200:
                    return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not ready after {timeout}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


_SERVER: MlflowServer | None = None


def shared_server() -> MlflowServer:
    """The session's server, started on first use and stopped when Python exits."""
    global _SERVER
    if _SERVER is None:
        root = Path(tempfile.mkdtemp(prefix="clbench-mlflow-"))
        server = MlflowServer(root).start()

        def cleanup() -> None:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)

        atexit.register(cleanup)
        _SERVER = server
    return _SERVER


def unique(name: str) -> str:
    """An experiment name no other test (or earlier session) uses."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def cli(*args: object) -> int:
    """Run ``clbench ARGS`` in this process through the console entry point; its exit code."""
    from clbench.cli import main

    old = sys.argv
    sys.argv = ["clbench", *map(str, args)]
    try:
        main()
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old


def cli_process(*args: object, cwd: Path, timeout: float = 300, env: dict | None = None
                ) -> subprocess.CompletedProcess:
    """Run ``clbench ARGS`` as a separate process (the real console script)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "clbench.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def child_runs(client, experiment_id: str) -> list:
    return client.search_runs([experiment_id], "tags.`clbench.role` = 'child'",
                              max_results=1000)


def parent_runs(client, experiment_id: str) -> list:
    return client.search_runs([experiment_id], "tags.`clbench.role` = 'parent'",
                              max_results=1000)
