"""`hetagent serve` as a subprocess, for tests and bench/ scripts: one launcher instead of a copy each.

    from tests.support.daemon import Daemon

    with Daemon() as d:                      # free loopback port, fresh data dir, a write key
        with d.client() as c:
            c.post("/v1/graphs", ...)
        d.kill()                             # SIGKILL of the daemon and the local Ray it started
        d.start()                            # same data dir, same port, same keys

The daemon runs in a process group of its own (``start_new_session``), so ``kill`` and ``terminate``
reach the local Ray it starts too. Keys are created with ``hetagent keys create`` before the first
start (a SQLite file takes one process), and stay valid across restarts. Each start writes its own
log file in the data dir (``log_path``); a daemon that exits or is not ready in time raises with the
log's tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
HETAGENT = [sys.executable, "-m", "orchestrator.cli"]


def free_port() -> int:
    """A loopback port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DaemonError(RuntimeError):
    """The daemon exited, or did not become ready in time; the message ends with its log's tail."""


class Daemon:
    """One `hetagent serve` process: start, wait for /readyz, API keys, kill -9 / terminate, restart.

    ``data_dir``: kept if given, else a fresh temporary one. ``database_url``: PostgreSQL (or any
    SQLAlchemy URL) instead of SQLite in the data dir. ``scopes``: keys created before the first start
    (``keys[scope]``; ``key`` is the write one). ``env``: extra environment (e.g. ``HETAGENT_*``
    settings) over the test defaults. ``args``: extra `serve` flags. ``preexec_fn``: run in the child
    before exec (e.g. a resource limit). ``log_dir``: where the logs go (default the data dir; elsewhere
    when the data dir is made to fail, e.g. a full disk)."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        database_url: str | None = None,
        port: int | None = None,
        ray_address: str | None = None,
        control_interval_s: float = 1.0,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        scopes: Sequence[str] = ("write",),
        ready_timeout_s: float = 180.0,
        preexec_fn: Callable[[], Any] | None = None,
        log_dir: Path | None = None,
    ):
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="hetagent-d-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ray_address = ray_address
        self.control_interval_s = control_interval_s
        self.args = list(args)
        self.scopes = tuple(scopes)
        self.ready_timeout_s = ready_timeout_s
        self.preexec_fn = preexec_fn
        self.log_dir = Path(log_dir) if log_dir is not None else self.data_dir
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            # graphs of tests and bench/soak.py call tests/support/callables.py (the default allows workers' only)
            "HETAGENT_FUNCTION_MODULES": os.environ.get(
                "HETAGENT_FUNCTION_MODULES", "workers.transforms,workers.tools,tests.support.callables"
            ),
            **(env or {}),
        }
        if database_url is None:
            self.env.pop("HETAGENT_DATABASE_URL", None)
        else:
            self.env["HETAGENT_DATABASE_URL"] = database_url
        if ray_address is None:
            self.env.pop("RAY_ADDRESS", None)
        self.keys: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.starts = 0

    # ------------------------------------------------------------------ keys
    def create_key(self, scope: str = "write", name: str = "") -> str:
        """A new API key of ``scope`` (`hetagent keys create`); on SQLite, before the daemon runs."""
        db = ["--database-url", self.database_url] if self.database_url else []
        out = subprocess.run(
            [*HETAGENT, "keys", "create", "--scope", scope, "--name", name, "--data-dir", str(self.data_dir), *db],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=self.env,
        )
        if out.returncode != 0:
            raise DaemonError(f"hetagent keys create failed ({out.returncode}): {out.stderr[-2000:]}")
        return out.stdout.strip()

    @property
    def key(self) -> str:
        """The write-scope key (created at the first start)."""
        return self.keys["write"]

    # ------------------------------------------------------------------ process
    def command(self) -> list[str]:
        cmd = [*HETAGENT, "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        cmd += ["--control-interval-s", str(self.control_interval_s)]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        if self.ray_address:
            cmd += ["--ray-address", self.ray_address]
        return cmd + self.args

    def start(self, wait: bool = True) -> Daemon:
        """Start the daemon (again, after ``kill``/``terminate``: same data dir, port and keys)."""
        if self.proc is not None and self.proc.poll() is None:
            raise DaemonError(f"the daemon on port {self.port} is already running (pid {self.proc.pid})")
        for scope in self.scopes:
            if scope not in self.keys:
                self.keys[scope] = self.create_key(scope, name=f"test-{scope}")
        self.starts += 1
        self.log_path = self.log_dir / f"daemon-{self.starts}.log"
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self.preexec_fn,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float | None = None) -> float:
        """Wait until /readyz answers 200; the seconds it took. Raises ``DaemonError`` if it exits or times out."""
        t0 = time.monotonic()
        deadline = t0 + (timeout_s if timeout_s is not None else self.ready_timeout_s)
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise DaemonError(f"the daemon exited ({code}) before it was ready:\n{self.log_tail()}")
            time.sleep(0.2)
        raise DaemonError(f"the daemon was not ready in {time.monotonic() - t0:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the daemon's process group (the daemon and the local Ray it started) and reap it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)

    def terminate(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM (a graceful stop: in-flight writes committed), SIGKILL of the group after ``timeout_s``
        or once the daemon is gone (its local Ray with it); the daemon's exit code (None if killed)."""
        if self.proc is None:
            return None
        code: int | None = None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout_s)
        else:
            code = self.proc.returncode
        self.kill()
        return code

    def restart(self, kill: bool = False) -> float:
        """Stop (SIGKILL if ``kill``, else SIGTERM) and start again on the same data dir and port; the
        seconds from the new start to ready."""
        if kill:
            self.kill()
        else:
            self.terminate()
        self.start(wait=False)
        return self.wait_ready()

    # ------------------------------------------------------------------ clients
    def client(self, scope: str = "write", timeout_s: float = 120.0, **kwargs: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[scope]}"}, timeout=timeout_s, **kwargs
        )

    def async_client(self, scope: str = "write", timeout_s: float = 120.0, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[scope]}"}, timeout=timeout_s, **kwargs
        )

    def readyz(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(f"{self.url}/readyz", timeout=5)
        return r.status_code, r.json()

    def log_text(self) -> str:
        """This start's log (the daemon's stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def sqlite_path(self) -> Path:
        """The SQLite file of a daemon without ``database_url``."""
        return self.data_dir / "hetagent.db"

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Daemon:
        if not self.running():
            try:
                self.start()
            except BaseException:
                self.kill()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def wait_until(what: Callable[[], Any], timeout_s: float, every_s: float = 0.2) -> Any:
    """``what()`` once it is truthy (retried on HTTP errors); fails after ``timeout_s`` with the last value."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = what()
            if last:
                return last
        time.sleep(every_s)
    raise AssertionError(f"not reached in {timeout_s} s; last: {last!r}")


def deploy(c: httpx.Client, spec_yaml: str, rate_per_s: float = 0.01, timeout_s: float = 180.0) -> tuple[str, str]:
    """Create, plan and deploy a graph from its YAML through the API; (graph id, deployment id) once ready."""
    g = c.post("/v1/graphs", content=spec_yaml, headers={"Content-Type": "application/yaml"})
    assert g.status_code == 201, g.text
    gid = g.json()["id"]
    p = c.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": rate_per_s})
    assert p.status_code == 201 and p.json()["plan"]["feasible"], p.text
    d = c.post(f"/v1/graphs/{gid}/deployments", json={})
    assert d.status_code == 202, d.text
    dep_id = d.json()["id"]

    def settled() -> dict[str, Any] | None:
        state = c.get(f"/v1/graphs/{gid}/deployments/{dep_id}").json()
        return state if state["state"] != "starting" else None

    state = wait_until(settled, timeout_s)
    assert state["state"] == "ready", state
    return gid, dep_id
