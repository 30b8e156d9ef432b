"""The daemon's error paths end in something a client or an operator can see, never in silence:

- a calibration pass that raises is logged and counted, and the loop goes on;
- a deployment whose bring-up raises, whatever the exception, ends ``failed`` with the error;
- a run whose result the database refuses wakes its waiters at once with a 503 (Retry-After).

The failures are real: malformed evidence fed to the real refit, and a real SQLite database that
refuses a write (a trigger raising, as a constraint would), under a real `hetagent serve`.
"""

from __future__ import annotations

import logging
import sqlite3
import time

import httpx
import pytest

from tests.support.daemon import ROOT, Daemon, deploy
from tests.test_daemon import BUSY_GRAPH, CONTROL_ENV, _metric

BROKEN_TOOL_GRAPH = """
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: broken-tool}
spec:
  sla: {e2e_ms: 5000}
  inputs: {text: {type: string}}
  nodes:
    - name: lookup
      kind: tool
      function: tests.support.callables.no_such_module:lookup  # allowed by function_modules, not importable
      inputs: {text: "{{ inputs.text }}"}
      expected: {latency_ms: 10}
"""


def _sql(d: Daemon, statement: str) -> None:
    """Change the daemon's own database behind its back (a second connection, as an operator would)."""
    db = sqlite3.connect(d.data_dir / "hetagent.db", timeout=30)
    try:
        db.execute(statement)
        db.commit()
    finally:
        db.close()


def _settle(c: httpx.Client, gid: str, dep_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dep = c.get(f"/v1/graphs/{gid}/deployments/{dep_id}").json()
        if dep["state"] != "starting":
            return dep
        time.sleep(0.2)
    return dep


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with Daemon(tmp_path_factory.mktemp("errors"), env=CONTROL_ENV, control_interval_s=0.5) as d:
        yield d


def test_layers_run_one_way():
    """The store and the controller work without the request layer or HTTP (the split's point)."""
    import subprocess
    import sys

    code = (
        "import sys, orchestrator.control, orchestrator.store; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn') "
        "or m in ('orchestrator.service', 'orchestrator.app', 'orchestrator.errors') "
        "or m.startswith('orchestrator.routers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_calibration_failure_is_logged_counted_and_the_loop_goes_on(tmp_path, caplog):
    from prometheus_client import generate_latest

    from costmodels.online import Observation
    from orchestrator.service import Service
    from orchestrator.settings import Settings

    caplog.set_level(logging.ERROR, logger="hetagent.control")
    service = Service(Settings(data_dir=tmp_path, control_enabled=True, control_interval_s=0.05))
    service.start()
    try:
        # evidence refit cannot read (no measured latency): the pass raises inside costmodels.online.refit
        service.control.observations.extend(Observation("local-cpu", "llm", None, 100.0) for _ in range(20))

        def failures() -> float:
            return _metric(generate_latest(service.metrics.registry).decode(), "hetagent_calibration_failures_total")

        deadline = time.monotonic() + 10
        while failures() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failures() >= 1
        failures = [r for r in caplog.records if "online calibration failed" in r.getMessage()]
        assert failures and failures[0].exc_info and failures[0].exc_info[0] is TypeError
        assert not service.control.observations  # the bad batch is dropped, not retried forever
        # the loop survived: good evidence is refitted on a later pass, and GET /v1/hardware shows it
        service.control.observations.extend(Observation("local-cpu", "llm", 300.0, 100.0) for _ in range(20))
        deadline = time.monotonic() + 10
        while not service.control.calibrations and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu = next(d for d in service.hardware() if d["name"] == "local-cpu")
        assert len(cpu["calibrations"]) == 1 and cpu["calibrations"][0]["slowdown"] == pytest.approx(3**0.5)
        assert cpu["efficiency"]["compute"] == pytest.approx(cpu["calibrations"][0]["compute"])
        assert all(not d["calibrations"] for d in service.hardware() if d["name"] != "local-cpu")
    finally:
        service.stop()


def test_bring_up_failure_of_any_kind_ends_failed_with_the_error(daemon):
    with daemon.client() as c:
        gid = c.post(
            "/v1/graphs",
            content=BUSY_GRAPH.replace("name: busy", "name: refused"),
            headers={"Content-Type": "application/yaml"},
        ).json()["id"]
        c.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": 0.01}).raise_for_status()
        # the pools start, then the database refuses to record `ready` (not a RunError, ValueError or OSError)
        _sql(
            daemon,
            "CREATE TRIGGER refuse_ready BEFORE UPDATE OF state ON deployments WHEN NEW.state = 'ready' "
            "BEGIN SELECT RAISE(ABORT, 'deployments cannot become ready on this volume'); END",
        )
        try:
            dep_id = c.post(f"/v1/graphs/{gid}/deployments", json={}).json()["id"]
            dep = _settle(c, gid, dep_id)
        finally:
            _sql(daemon, "DROP TRIGGER refuse_ready")
        assert dep["state"] == "failed", dep
        assert "cannot become ready on this volume" in dep["detail"] and "IntegrityError" in dep["detail"]
        r = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "x"}})
        assert r.status_code == 409 and r.json()["title"] == "graph not deployed"  # its pools were stopped
        # nothing was left behind: the same graph deploys and runs once the database accepts writes again
        again = c.post(f"/v1/graphs/{gid}/deployments", json={}).json()["id"]
        assert _settle(c, gid, again)["state"] == "ready"
        assert c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "a@b.com"}}).json()["status"] == "succeeded"
        c.delete(f"/v1/graphs/{gid}/deployments/{again}")

        # a worker that cannot start (its tool's callable does not import) fails the deployment too
        gid = c.post("/v1/graphs", content=BROKEN_TOOL_GRAPH, headers={"Content-Type": "application/yaml"}).json()["id"]
        c.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": 0.01}).raise_for_status()
        dep = _settle(c, gid, c.post(f"/v1/graphs/{gid}/deployments", json={}).json()["id"])
        assert (
            dep["state"] == "failed" and "No module named 'tests.support.callables.no_such_module'" in dep["detail"]
        ), dep


def test_a_refused_result_write_wakes_the_waiter_with_a_503(daemon):
    with daemon.client() as c:
        gid, dep_id = deploy(c, BUSY_GRAPH.replace("name: busy", "name: unstored"))
        _sql(
            daemon,
            "CREATE TRIGGER refuse_results BEFORE UPDATE OF status ON runs WHEN NEW.status <> 'running' "
            "BEGIN SELECT RAISE(ABORT, 'run results refused by the volume'); END",
        )
        try:
            t0 = time.monotonic()
            r = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "a@b.com"}, "timeout_s": 60})
            waited = time.monotonic() - t0
            assert r.status_code == 503, r.text
            assert waited < 10, f"the waiter slept {waited:.1f} s instead of being woken"
            assert r.headers["content-type"] == "application/problem+json" and int(r.headers["retry-after"]) > 0
            problem = r.json()
            assert problem["title"] == "storage unavailable"
            assert "could not be stored" in problem["detail"]
            assert "run results refused by the volume" in problem["detail"]
            # the outcome is not lost for the client: it reads the run (from memory) and its events end
            run = c.get(f"/v1/runs/{problem['run_id']}").json()
            assert run["status"] == "succeeded" and run["outputs"] == {"clean": "[EMAIL]"}
            assert any("not stored" in n for n in run["notes"])
            a = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "x"}, "mode": "async"}).json()
            with c.stream("GET", f"/v1/runs/{a['id']}/events", timeout=30) as stream:
                kinds = [line.split(": ", 1)[1] for line in stream.iter_lines() if line.startswith("event: ")]
            assert kinds[-1] == "end" and "completed" in kinds
            r = c.post(f"/v1/runs/{a['id']}/cancel")
            assert r.status_code == 409 and r.json()["title"] == "run already finished"
        finally:
            _sql(daemon, "DROP TRIGGER refuse_results")
        # a run the database refuses to even record is a 503 too, not a 500
        _sql(
            daemon,
            "CREATE TRIGGER refuse_runs BEFORE INSERT ON runs "
            "BEGIN SELECT RAISE(ABORT, 'no new runs on this volume'); END",
        )
        try:
            r = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "x"}})
            assert r.status_code == 503 and "no new runs on this volume" in r.json()["detail"], r.text
            assert r.headers["content-type"] == "application/problem+json" and "retry-after" in r.headers
        finally:
            _sql(daemon, "DROP TRIGGER refuse_runs")
        # the writer outlived the refusals
        ok = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "call 555-123-4567"}}).json()
        assert ok["status"] == "succeeded"
        assert c.get(f"/v1/runs/{ok['id']}").json()["outputs"] == {"clean": "call [PHONE]"}  # stored this time
        metrics = httpx.get(f"{daemon.url}/metrics").text
        assert _metric(metrics, "hetagent_storage_errors_total", what="run_result") >= 2
        c.delete(f"/v1/graphs/{gid}/deployments/{dep_id}")
