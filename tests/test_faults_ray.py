"""Ray-side faults under a real daemon (issue 12, part 3): `hetagent serve` in a subprocess on the local Ray it
starts itself, real processes killed with SIGKILL while runs are in flight.

* a worker actor's process killed mid-op: an idempotent op is run again on the restarted actor and the run
  succeeds, its events and record say so; a non-idempotent tool op is not run again (its HTTP service sees
  one call) and the run ends ``failed`` naming the op; a replica that died more often than Ray restarts it
  (``max_restarts``) is replaced by a new actor, and the run and the deployment go on;
* the whole local Ray head killed (GCS, raylet, workers): /readyz turns 503 problem+json with Retry-After and
  names Ray, a run submitted meanwhile is refused with a 503 naming Ray, a run in flight ends ``failed``
  naming Ray, and the daemon starts a new local Ray by itself, becomes ready and brings the same deployment
  back (a run on it succeeds).

Only processes this test started are killed: every pid is checked to descend from the daemon first.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.daemon import Daemon, deploy

GRAPH = """
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {{name: {name}}}
spec:
  sla: {{e2e_ms: 60000}}
  inputs: {{{inputs}}}
  nodes:
{nodes}
  outputs: {{out: "{{{{ nodes.{sink}.output }}}}"}}
"""

# an idempotent transform that tells its worker's pid, then sleeps; a transform after it (fused with it)
SLOW_NODES = """\
    - name: crunch
      kind: transform
      function: tests.support.callables:slow_telling_pid
      inputs: {pid_file: "{{ inputs.pid_file }}", seconds: "{{ inputs.seconds }}"}
      expected: {latency_ms: 100}
      timeout_s: 120
    - name: after
      kind: transform
      function: tests.support.callables:join
      inputs: {x: "{{ nodes.crunch.output }}"}
"""

# a transform that kills its own worker process on its first ``times`` calls
FRAGILE_NODES = """\
    - name: fragile
      kind: transform
      function: tests.support.callables:crash_times
      inputs: {counter: "{{ inputs.counter }}", times: "{{ inputs.times }}"}
      retries: 3
"""

# a non-idempotent HTTP tool (a side effect: e.g. a payment)
TOOL_NODES = """\
    - name: charge
      kind: tool
      url: {url}
      idempotent: false
      inputs: {{order: "{{{{ inputs.pid_file }}}}"}}
      expected: {{latency_ms: 100}}
      timeout_s: 120
"""


class _ToolServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A slow HTTP tool: counts its calls and records each caller's source port (to find the worker process)."""

    daemon_threads = True
    hold_s = 30.0

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ToolHandler)
        self.calls: list[int] = []  # the source port of each call
        self.called = threading.Event()


class _ToolHandler(http.server.BaseHTTPRequestHandler):
    server: _ToolServer

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.calls.append(self.client_address[1])
        self.server.called.set()
        time.sleep(self.server.hold_s)
        out = b'{"charged": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the caller's process may have been killed meanwhile
            self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tool_server() -> Iterator[_ToolServer]:
    srv = _ToolServer()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The daemon's Ray keeps its files in a temp dir of its own (short: Ray's socket paths have a length limit)
    where a dead `ray start` cluster left its address (``ray_current_cluster``, which a plain ``ray.init()``
    would join): the daemon must start its own local Ray all the same, at first and after losing it."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ht-ray-", dir="/tmp"))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")  # nothing listens on port 9
    # tool nodes may call this test's loopback server (the egress allow-list refuses loopback by default)
    env = {"HETAGENT_TOOL_ALLOW": "127.0.0.1", "RAY_TMPDIR": str(ray_tmp)}
    try:
        with Daemon(tmp_path_factory.mktemp("faults-ray"), env=env) as d:
            yield d
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def slow_deployment(daemon: Daemon) -> tuple[str, str]:
    """(graph id, deployment id) of the slow transform graph, deployed once for the module's tests."""
    with daemon.client() as c:
        return _deploy(c, "slow-transform", SLOW_NODES, "after")


def _deploy(c: httpx.Client, name: str, nodes: str, sink: str) -> tuple[str, str]:
    names = ("counter", "times") if nodes is FRAGILE_NODES else ("pid_file", "seconds")
    inputs = ", ".join(f"{n}: {{type: string}}" for n in names)
    return deploy(c, GRAPH.format(name=name, nodes=nodes, sink=sink, inputs=inputs))


def _wait(get, until, timeout_s: float = 180.0, every_s: float = 0.2):
    """Poll ``get()`` until ``until(value)``; the last value (the caller asserts on it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = get()
        if until(value) or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


def _own_descendant(d: Daemon, pid: int) -> psutil.Process:
    """The process ``pid``, checked to be the daemon's descendant (this test's local Ray): never kill another."""
    proc = psutil.Process(pid)
    assert pid in {p.pid for p in psutil.Process(d.pid).children(recursive=True)}, f"{pid} is not the daemon's"
    return proc


def _async_run(c: httpx.Client, gid: str, inputs: dict) -> str:
    r = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": inputs, "mode": "async"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _finished(c: httpx.Client, run_id: str, timeout_s: float = 120.0) -> dict:
    return _wait(
        lambda: c.get(f"/v1/runs/{run_id}").json(),
        lambda r: r["status"] not in ("queued", "running"),
        timeout_s,
    )


def _events(c: httpx.Client, run_id: str) -> list[dict]:
    """The run's events from its SSE stream (the run has ended)."""
    import json

    out = []
    with c.stream("GET", f"/v1/runs/{run_id}/events") as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                out.append(json.loads(line[5:]))
    return out


def test_killed_worker_mid_op_idempotent_op_is_retried_and_the_run_completes(
    daemon: Daemon, slow_deployment: tuple[str, str], tmp_path: Path
):
    gid, dep_id = slow_deployment
    pid_file = tmp_path / "pid"
    with daemon.client() as c:
        run_id = _async_run(c, gid, {"pid_file": str(pid_file), "seconds": "60"})
        pid = int(_wait(lambda: pid_file.read_text() if pid_file.exists() else "", str.isdigit, 60))
        worker = _own_descendant(daemon, pid)
        assert "HostWorker" in " ".join(worker.cmdline())  # a Ray actor's worker process, mid-op
        os.kill(pid, signal.SIGKILL)
        run = _finished(c, run_id)
        assert run["status"] == "succeeded", run
        assert run["deployment_id"] == dep_id
        # the op ran again on the restarted actor: another process, a second attempt
        assert run["outputs"]["out"].startswith("done by ") and run["outputs"]["out"] != f"done by {pid}"
        crunch = next(r for r in run["records"] if r["node"] == "crunch")
        assert crunch["attempts"] == 2
        retries = [e for e in _events(c, run_id) if e.get("event") == "retry"]
        assert [e["node"] for e in retries] == ["crunch"]
        assert "worker died" in retries[0]["data"]["error"] and retries[0]["data"]["worker"] == "restarted"


def test_killed_worker_mid_non_idempotent_tool_fails_the_run_naming_the_op(
    daemon: Daemon, tool_server: _ToolServer, tmp_path: Path
):
    url = f"http://127.0.0.1:{tool_server.server_address[1]}/charge"
    with daemon.client() as c:
        gid, _ = _deploy(c, "charge", TOOL_NODES.format(url=url), "charge")
        run_id = _async_run(c, gid, {"pid_file": "order-1", "seconds": "0"})
        assert tool_server.called.wait(60), "the tool was never called"
        port = tool_server.calls[0]
        # the worker process holding the tool's connection (the client side of the call)
        holders = [
            p
            for p in psutil.Process(daemon.pid).children(recursive=True)
            if any(conn.laddr and conn.laddr.port == port for conn in _connections(p))
        ]
        assert len(holders) == 1, holders
        os.kill(_own_descendant(daemon, holders[0].pid).pid, signal.SIGKILL)
        run = _finished(c, run_id)
        assert run["status"] == "failed", run
        assert "'charge'" in run["error"] and "not idempotent" in run["error"], run["error"]
        time.sleep(2.0)  # a retry, had there been one, would have called the tool again by now
        assert len(tool_server.calls) == 1, tool_server.calls  # the side effect happened once


def test_a_replica_whose_restarts_are_spent_is_replaced_and_the_pool_goes_on(daemon: Daemon, tmp_path: Path):
    """Ray restarts an actor ``max_restarts`` (2) times; its third death leaves it dead for good. The runner puts
    a new actor in its place, so the run (within its retries) and the deployment go on."""
    counter = tmp_path / "deaths"
    with daemon.client() as c:
        gid, _ = _deploy(c, "fragile", FRAGILE_NODES, "fragile")
        run = _finished(c, _async_run(c, gid, {"counter": str(counter), "times": "3"}), 150)
        assert run["status"] == "succeeded", run
        assert counter.read_text() == "3" and run["outputs"]["out"] == "survived 3 deaths", run
        assert run["records"][0]["attempts"] == 4
        retries = [e["data"]["worker"] for e in _events(c, run_id=run["id"]) if e.get("event") == "retry"]
        assert retries == ["restarted", "restarted", "replaced"], retries
        again = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"counter": str(counter), "times": "3"}})
        assert again.status_code == 200 and again.json()["status"] == "succeeded", again.text


def _connections(p: psutil.Process) -> list:
    try:
        return p.net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def test_ray_head_killed_under_the_daemon_it_comes_back_by_itself(
    daemon: Daemon, slow_deployment: tuple[str, str], tmp_path: Path
):
    gid, dep_id = slow_deployment
    pid_file = tmp_path / "pid"
    with daemon.client() as c:
        first = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"pid_file": str(tmp_path / "warm"), "seconds": "0"}})
        assert first.status_code == 200 and first.json()["status"] == "succeeded", first.text
        in_flight = _async_run(c, gid, {"pid_file": str(pid_file), "seconds": "60"})
        _wait(lambda: pid_file.exists(), bool, 60)
        # the head: every process of the local Ray the daemon started (GCS, raylet, workers, agents)
        head = psutil.Process(daemon.pid).children(recursive=True)
        assert any(p.name() == "gcs_server" for p in head) and any(p.name() == "raylet" for p in head)
        killed_at = time.monotonic()
        for p in head:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()

        # not ready, saying why, with Retry-After
        down = _wait(lambda: _readyz(daemon), lambda r: r is not None and r.status_code == 503, 30)
        assert (
            down is not None
            and down.status_code == 503
            and down.headers["content-type"].startswith("application/problem+json")
        )
        assert int(down.headers["retry-after"]) > 0 and "Ray" in down.json()["detail"], down.text
        # a run submitted meanwhile: refused, naming Ray
        refused = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"pid_file": str(tmp_path / "x"), "seconds": "0"}})
        assert refused.status_code == 503 and "Ray" in refused.json()["detail"], refused.text
        assert (
            refused.headers["content-type"].startswith("application/problem+json") and "retry-after" in refused.headers
        )
        # the run that was in flight ends failed, naming Ray (not hanging until its op's timeout)
        lost = _finished(c, in_flight, 60)
        assert lost["status"] == "failed" and "Ray" in lost["error"], lost

        # ready again by itself, the same deployment serving runs on a new local Ray
        up = _wait(lambda: _readyz(daemon), lambda r: r is not None and r.status_code == 200)
        assert up is not None and up.status_code == 200, up and up.text
        ready_s = time.monotonic() - killed_at
        assert c.get(f"/v1/graphs/{gid}/deployments/{dep_id}").json()["state"] == "ready"
        after = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"pid_file": str(tmp_path / "y"), "seconds": "0"}})
        assert after.status_code == 200, after.text
        assert after.json()["status"] == "succeeded" and after.json()["deployment_id"] == dep_id, after.text
        new_head = psutil.Process(daemon.pid).children(recursive=True)
        assert any(p.name() == "gcs_server" for p in new_head) and not {p.pid for p in new_head} & {p.pid for p in head}
        print(f"Ray head killed -> /readyz 200 again in {ready_s:.1f} s")


def _readyz(d: Daemon) -> httpx.Response | None:
    """/readyz, or None when the daemon does not answer in time (a busy 2-core machine: poll again)."""
    try:
        return httpx.get(f"{d.url}/readyz", timeout=10)
    except httpx.HTTPError:
        return None
