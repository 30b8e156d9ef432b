"""Security of the daemon (issue 12, part 5): every route's scope, keys compared in constant time,
listed and revoked (CLI and REST), per-key rate limits, keys never in logs, tool nodes' outbound HTTP
behind an allow-list, CORS off by default.

The app runs in-process (TestClient) or under uvicorn in a thread for the log test; the egress test
runs a real `hetagent serve` with a tool node aimed at a loopback HTTP server."""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from compiler.spec import ToolNode
from orchestrator import auth
from tests.support.daemon import ROOT, Daemon, deploy
from workers.egress import EgressRefused, check_target
from workers.ops import ToolError, ToolOp

# Every route of the app and the scope it needs (None: open). A route added without a row fails
# test_every_route_is_in_the_scope_table; a row whose route is gone fails it too.
SCOPES: dict[tuple[str, str], str | None] = {
    ("GET", "/openapi.json"): None,
    ("GET", "/docs"): None,
    ("GET", "/docs/oauth2-redirect"): None,
    ("GET", "/redoc"): None,
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("GET", "/v1/hardware"): "read",
    ("GET", "/v1/clusters"): "read",
    ("POST", "/v1/graphs"): "write",
    ("GET", "/v1/graphs"): "read",
    ("GET", "/v1/graphs/{graph_id}"): "read",
    ("DELETE", "/v1/graphs/{graph_id}"): "write",
    ("POST", "/v1/graphs/{graph_id}/plans"): "write",
    ("GET", "/v1/graphs/{graph_id}/plans"): "read",
    ("GET", "/v1/graphs/{graph_id}/plans/diff"): "read",
    ("GET", "/v1/graphs/{graph_id}/plans/{plan_id}"): "read",
    ("GET", "/v1/plans/{plan_id}/simulation"): "read",
    ("POST", "/v1/graphs/{graph_id}/deployments"): "write",
    ("GET", "/v1/graphs/{graph_id}/deployments"): "read",
    ("GET", "/v1/graphs/{graph_id}/deployments/{deployment_id}"): "read",
    ("DELETE", "/v1/graphs/{graph_id}/deployments/{deployment_id}"): "write",
    ("POST", "/v1/graphs/{graph_id}/runs"): "write",
    ("GET", "/v1/runs/{run_id}"): "read",
    ("POST", "/v1/runs/{run_id}/cancel"): "write",
    ("GET", "/v1/runs/{run_id}/events"): "read",
    ("GET", "/v1/keys"): "admin",
    ("POST", "/v1/keys"): "admin",
    ("DELETE", "/v1/keys/{key_id}"): "admin",
}


def _app(tmp_path, **settings):
    from orchestrator.app import create_app
    from orchestrator.settings import Settings

    return create_app(Settings(data_dir=tmp_path, control_enabled=False, **settings))


@pytest.fixture(scope="module")
def app_and_keys(tmp_path_factory):
    from fastapi.testclient import TestClient

    app = _app(tmp_path_factory.mktemp("security"), rate_limit_per_s=0)
    with TestClient(app) as c:
        sessions = app.state.service.store.sessions
        keys = {scope: auth.create_key(sessions, scope, f"test-{scope}")[1] for scope in auth.SCOPES}
        yield app, c, keys


def _routes(app) -> dict[tuple[str, str], str | None]:
    """(method, path) -> the scope its dependencies require, read from the dependency tree."""
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    def scope_of(dependant) -> str | None:
        found = [getattr(d.call, "scope", None) for d in dependant.dependencies] + [
            scope_of(d) for d in dependant.dependencies
        ]
        return next((s for s in found if s), None)

    out: dict[tuple[str, str], str | None] = {}
    for r in app.routes:
        if isinstance(r, APIRoute):
            for m in r.methods:
                out[(m, r.path)] = scope_of(r.dependant)
        elif isinstance(r, Route):  # /openapi.json, /docs, /redoc: FastAPI's own
            for m in r.methods or ():
                if m != "HEAD":
                    out[(m, r.path)] = None
    return out


def test_every_route_is_in_the_scope_table(app_and_keys):
    app, _, _ = app_and_keys
    routes = _routes(app)
    missing = sorted(set(routes) - set(SCOPES))
    assert not missing, f"routes without a row in SCOPES (add one, with the scope they need): {missing}"
    gone = sorted(set(SCOPES) - set(routes))
    assert not gone, f"rows in SCOPES for routes the app no longer has: {gone}"
    assert routes == SCOPES


@pytest.mark.parametrize(("method", "path"), sorted(SCOPES))
def test_each_route_answers_as_its_scope_says(app_and_keys, method, path):
    """Behaviour, not only declarations: no key -> 401 on a scoped route (and never on an open one),
    a key one scope too low -> 403, the right scope -> past auth (any answer but 401/403)."""
    _, c, keys = app_and_keys
    need = SCOPES[(method, path)]
    url = path.format(graph_id="g_x", plan_id="p_x", deployment_id="d_x", run_id="r_x", key_id="k_x")
    if path.endswith("/diff"):
        url += "?from=p_a&to=p_b"
    saved = c.headers.pop("Authorization", None)
    try:
        bare = c.request(method, url, json={} if method == "POST" else None)
        if need is None:
            assert bare.status_code not in (401, 403), bare.text
            return
        assert bare.status_code == 401, bare.text
        level = auth.SCOPES.index(need)
        if level > 0:
            low = keys[auth.SCOPES[level - 1]]
            r = c.request(
                method, url, json={} if method == "POST" else None, headers={"Authorization": f"Bearer {low}"}
            )
            assert r.status_code == 403 and f"needs '{need}'" in r.json()["detail"], r.text
        if path.endswith("/events"):
            return  # an unknown run's stream is a 404, covered elsewhere; no stream to hold open here
        ok = c.request(
            method, url, json={} if method == "POST" else None, headers={"Authorization": f"Bearer {keys[need]}"}
        )
        assert ok.status_code not in (401, 403), ok.text
    finally:
        if saved is not None:
            c.headers["Authorization"] = saved


# ----------------------------------------------------------------------------- keys
def test_keys_are_compared_in_constant_time_over_hashes(app_and_keys, monkeypatch):
    app, _, keys = app_and_keys
    sessions = app.state.service.store.sessions
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    good = keys["read"]
    assert auth.lookup_scope(sessions, good) == "read"
    assert calls[-1] == (auth.hash_key(good), auth.hash_key(good))  # the stored hash against the presented one
    wrong_secret = good[: good.rindex("_") + 1] + "x" * 32  # the right id, another secret
    assert auth.lookup_scope(sessions, wrong_secret) is None
    assert calls[-1] == (auth.hash_key(good), auth.hash_key(wrong_secret))
    assert auth.lookup_scope(sessions, "hta_00000000_nope") is None  # unknown id: still one comparison
    assert len(calls) == 3


def test_keys_list_and_revoke_over_rest(app_and_keys):
    app, c, keys = app_and_keys
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    r = c.post("/v1/keys", json={"scope": "write", "name": "ci"}, headers=admin)
    assert r.status_code == 201, r.text
    created = r.json()
    new_key, key_id = created["key"], created["id"]
    assert new_key.startswith(f"hta_{key_id}_")
    assert c.get("/v1/graphs", headers={"Authorization": f"Bearer {new_key}"}).status_code == 200
    listed = c.get("/v1/keys", headers=admin).json()
    assert key_id in {k["id"] for k in listed}
    text = json.dumps(listed)
    assert all(k not in text for k in [new_key, *keys.values()])  # no key, no hash
    assert auth.hash_key(new_key) not in text
    assert c.post("/v1/keys", json={"scope": "root"}, headers=admin).status_code == 422
    r = c.delete(f"/v1/keys/{key_id}", headers=admin)
    assert r.status_code == 200 and r.json()["revoked"] is True
    r = c.get("/v1/graphs", headers={"Authorization": f"Bearer {new_key}"})  # refused at once by this process
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert c.delete("/v1/keys/k_missing", headers=admin).status_code == 404


def test_keys_list_and_revoke_cli(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli import app as cli
    from orchestrator.db import open_database
    from orchestrator.settings import Settings

    sessions = open_database(Settings(data_dir=tmp_path).db_url())
    key_id, key = auth.create_key(sessions, "write", "from-cli")
    runner = CliRunner()
    res = runner.invoke(cli, ["keys", "list", "--data-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["id"], r["scope"], r["name"], r["revoked"]) for r in rows] == [(key_id, "write", "from-cli", False)]
    assert key not in res.output
    res = runner.invoke(cli, ["keys", "revoke", key, "--data-dir", str(tmp_path)])  # a pasted whole key works too
    assert res.exit_code == 0 and key not in res.output, res.output
    assert auth.list_keys(sessions)[0]["revoked"] is True
    assert auth.lookup_scope(sessions, key) is None
    res = runner.invoke(cli, ["keys", "revoke", "nope", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and "no API key" in res.output


# ----------------------------------------------------------------------------- rate limits
def test_rate_limit_per_key_429_with_retry_after(tmp_path):
    from fastapi.testclient import TestClient

    app = _app(tmp_path, rate_limit_per_s=0.5, rate_limit_burst=3)
    with TestClient(app) as c:
        sessions = app.state.service.store.sessions
        a, b = (auth.create_key(sessions, "read")[1] for _ in range(2))
        ha, hb = ({"Authorization": f"Bearer {k}"} for k in (a, b))
        assert [c.get("/v1/graphs", headers=ha).status_code for _ in range(3)] == [200, 200, 200]
        r = c.get("/v1/graphs", headers=ha)
        assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["retry-after"]) >= 1 and "rate_limit_per_s" in r.json()["detail"]
        assert c.get("/v1/graphs", headers=hb).status_code == 200  # per key: another key is not limited
        assert all(c.get("/healthz").status_code == 200 for _ in range(10))  # open routes carry no key
        time.sleep(int(r.headers["retry-after"]))
        assert c.get("/v1/graphs", headers=ha).status_code == 200  # the bucket refilled


def test_wrong_keys_from_one_address_are_limited_before_the_lookup(tmp_path):
    """Guessing keys: past auth_failures_burst wrong keys an address gets 429 — for a right key too, so a guess
    cannot be told right while blocked; a missing key is no guess and costs nothing; other addresses go on."""
    from fastapi.testclient import TestClient

    app = _app(tmp_path, auth_failures_per_s=0.5, auth_failures_burst=3)
    with TestClient(app) as c:
        good = {"Authorization": f"Bearer {auth.create_key(app.state.service.store.sessions, 'read')[1]}"}
        assert {c.get("/v1/graphs").status_code for _ in range(10)} == {401}  # no key: not counted
        assert c.get("/v1/graphs", headers=good).status_code == 200
        wrong = [c.get("/v1/graphs", headers={"Authorization": f"Bearer hta_00000000_guess{i}"}) for i in range(4)]
        assert [r.status_code for r in wrong] == [401, 401, 401, 429]
        r = c.get("/v1/graphs", headers=good)
        assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["retry-after"]) >= 1 and "auth_failures_per_s" in r.json()["detail"]
        other = TestClient(app, client=("203.0.113.7", 50000))  # another client address: its own bucket
        assert other.get("/v1/graphs", headers=good).status_code == 200
        time.sleep(int(r.headers["retry-after"]))
        assert c.get("/v1/graphs", headers=good).status_code == 200  # the bucket refilled


def test_rate_limit_zero_is_off(app_and_keys):
    _, c, keys = app_and_keys  # this app runs with rate_limit_per_s=0
    h = {"Authorization": f"Bearer {keys['read']}"}
    assert {c.get("/v1/graphs", headers=h).status_code for _ in range(150)} == {200}


# ----------------------------------------------------------------------------- logs
def test_keys_never_appear_in_logs(tmp_path, caplog):
    """Create a key, use it over a real uvicorn (access log on), revoke it, fail with it: every log
    record at DEBUG and up, from every logger, holds neither the key nor its hash."""
    import uvicorn

    from orchestrator.db import open_database
    from orchestrator.settings import Settings

    caplog.set_level(logging.DEBUG)
    sessions = open_database(Settings(data_dir=tmp_path).db_url())
    key_id, key = auth.create_key(sessions, "admin", "logged?")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = _app(tmp_path)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="debug", log_config=None))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}) as c:
            assert c.get("/v1/graphs").status_code == 200
            made = c.post("/v1/keys", json={"scope": "read"}).json()["key"]
            assert c.get("/v1/graphs", headers={"Authorization": f"Bearer {made}"}).status_code == 200
            bad = httpx.get(f"http://127.0.0.1:{port}/v1/graphs", headers={"X-API-Key": made + "x"})
            assert bad.status_code == 401
            assert c.delete(f"/v1/keys/{key_id}").status_code == 200
            assert c.get("/v1/graphs").status_code == 401
    finally:
        srv.should_exit = True
        thread.join(30)
    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "GET /v1/graphs" in text  # the access log was captured: the check below can fail
    # the secret part is everything after the id: token_urlsafe may itself hold "_" (a CI run split
    # at the last "_" and searched the logs for the single letter "l")
    secret_part = key.split("_", 2)[2]
    assert len(secret_part) >= 24
    for secret in (key, made, auth.hash_key(key), auth.hash_key(made), secret_part):
        assert secret not in text


# ----------------------------------------------------------------------------- outbound HTTP of tool nodes
def test_egress_refuses_internal_targets_and_names_the_setting():
    for url in (
        "http://127.0.0.1:8900/book",
        "http://localhost/x",
        "http://[::1]/x",
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
        "http://10.1.2.3/x",
        "http://192.168.0.1/x",
        "http://0.0.0.0/x",
        "http://[::ffff:127.0.0.1]/x",
    ):
        with pytest.raises(EgressRefused) as err:
            check_target(url, [])
        assert url in str(err.value) and "tool_allow" in str(err.value)
    with pytest.raises(EgressRefused, match="only http"):
        check_target("file:///etc/passwd", [])
    check_target("http://8.8.8.8/x", [])  # a public address: allowed (no request is made here)
    check_target("http://127.0.0.1:8900/x", ["127.0.0.1"])
    check_target("http://127.0.0.1:8900/x", ["127.0.0.0/8"])
    check_target("http://localhost:8900/x", ["localhost"])
    check_target("http://10.1.2.3/x", ["10.0.0.0/8"])
    with pytest.raises(EgressRefused):
        check_target("http://10.1.2.3/x", ["127.0.0.0/8"])
    check_target("http://127.0.0.1/x", None)  # no policy: the embedded runner


class _Echo(BaseHTTPRequestHandler):
    hits = 0

    def do_POST(self):  # noqa: N802
        type(self).hits += 1
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        out = json.dumps({"echo": json.loads(body or b"{}")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def echo():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_tool_op_egress_policy(echo):
    node = ToolNode(kind="tool", name="svc", url=echo + "/x", expected={"latency_ms": 5}, retries=3)
    assert ToolOp(node, {}, ".")({"q": 1}) == {"echo": {"q": 1}}  # embedded: no policy
    before = _Echo.hits
    with pytest.raises(ToolError) as err:
        ToolOp(node, {"egress": []}, ".")({"q": 1})
    assert "tool_allow" in str(err.value) and echo in str(err.value) and err.value.attempts == 1
    assert _Echo.hits == before  # refused before connecting, and not retried
    assert ToolOp(node, {"egress": ["127.0.0.1"]}, ".")({"q": 2}) == {"echo": {"q": 2}}


def test_connections_are_checked_on_the_address_they_are_opened_to(echo):
    """The request hook checks the URL; the transport checks again where it connects, on the address it opens
    the socket to, so a DNS answer that turns internal after the hook's lookup (rebinding) is refused there.
    Here the hook is left out (a client with the transport alone), as if the hook's lookup had said public."""
    from workers.egress import checked_transport

    port = echo.rsplit(":", 1)[1]
    before = _Echo.hits
    for url in (f"http://localhost:{port}/x", f"{echo}/x"):
        with httpx.Client(transport=checked_transport([])) as c, pytest.raises(EgressRefused) as err:
            c.post(url, json={"q": 1})
        assert "127.0.0.1" in str(err.value) or "::1" in str(err.value)
        assert "tool_allow" in str(err.value)
    assert _Echo.hits == before  # no connection reached the server
    # allowed by address: "localhost" is resolved once and each answer tried in order (the echo listens on
    # 127.0.0.1 only, so ::1 first, where the resolver says so, is refused by the server and 127.0.0.1 follows)
    with httpx.Client(transport=checked_transport(["127.0.0.0/8", "::1"])) as c:
        assert c.post(f"http://localhost:{port}/x", json={"q": 3}).json() == {"echo": {"q": 3}}
    assert _Echo.hits == before + 1
    # the pool keeps httpx's own limits (a tool holds many calls at once): only the socket opening changes
    plain, checked = httpx.HTTPTransport()._pool, checked_transport([])._pool
    assert (checked._max_connections, checked._max_keepalive_connections, checked._keepalive_expiry) == (
        plain._max_connections,
        plain._max_keepalive_connections,
        plain._keepalive_expiry,
    )


TOOL_GRAPH = """
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {{name: reach-in}}
spec:
  sla: {{e2e_ms: 5000}}
  inputs: {{text: {{type: string}}}}
  nodes:
    - name: lookup
      kind: tool
      url: {url}/x
      inputs: {{text: "{{{{ inputs.text }}}}"}}
      expected: {{latency_ms: 10}}
"""


def test_daemon_refuses_loopback_tools_unless_allowed(tmp_path, echo):
    """`hetagent serve` passes its tool_allow (empty) to the workers: a graph aimed at a loopback
    service fails its run with the URL and the setting named; the server is never called."""
    d = Daemon(tmp_path)
    d.start()
    try:
        with d.client() as c:
            gid, _ = deploy(c, TOOL_GRAPH.format(url=echo))
            before = _Echo.hits
            run = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "hi"}}).json()
    finally:
        d.kill()
    assert run["status"] == "failed", run
    assert "tool_allow" in json.dumps(run) and f"{echo}/x" in json.dumps(run)
    assert _Echo.hits == before


# ----------------------------------------------------------------------------- CORS
def test_cors_is_off_by_default_and_configurable(tmp_path):
    from fastapi.testclient import TestClient

    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    with TestClient(_app(tmp_path / "a")) as c:
        r = c.options("/v1/graphs", headers=pre)
        assert "access-control-allow-origin" not in r.headers
        assert (
            "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "https://evil.example"}).headers
        )
    with TestClient(_app(tmp_path / "b", cors_origins=["https://ui.example"])) as c:
        ok = c.options("/v1/graphs", headers={**pre, "Origin": "https://ui.example"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://ui.example"
        assert "access-control-allow-origin" not in c.options("/v1/graphs", headers=pre).headers


def test_graphs_may_call_only_the_modules_the_server_allows(tmp_path):
    """A transform's or tool's 'function' runs code in the workers: a graph naming a module outside
    function_modules (default: the shipped workers.transforms and workers.tools) is refused with a 422 that
    names the node, the callable and the setting; nothing is stored."""
    from fastapi.testclient import TestClient

    from orchestrator.service import Service
    from orchestrator.settings import Settings

    def graph(function: str, kind: str = "transform") -> dict:
        node = {"name": "n", "kind": kind, "function": function, "inputs": {"text": "{{ inputs.text }}"}}
        if kind == "tool":
            node["expected"] = {"latency_ms": 1}
        return {
            "apiVersion": "hetagent.dev/v1alpha1",
            "kind": "AgentGraph",
            "metadata": {"name": "callables"},
            "spec": {"sla": {"e2e_ms": 1000}, "inputs": {"text": {"type": "string"}}, "nodes": [node]},
        }

    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HETAGENT_FUNCTION_MODULES"}  # tests/conftest.py sets it
    probe = "from orchestrator.settings import Settings; print(Settings().function_modules)"
    default = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert default.stdout.strip() == "['workers.transforms', 'workers.tools']", default
    settings = Settings(
        data_dir=tmp_path, control_enabled=False, function_modules=["workers.transforms", "workers.tools"]
    )
    service = Service(settings)
    _, key = auth.create_key(service.store.sessions, "write")
    from orchestrator.app import create_app

    with TestClient(create_app(settings, service)) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        for function, kind in (
            ("os:system", "transform"),
            ("subprocess:run", "tool"),
            ("workers.transformsx:f", "transform"),
        ):
            r = c.post("/v1/graphs", json=graph(function, kind))
            assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
            body = r.json()
            assert body["title"] == "callable not allowed" and f"node 'n': '{function}'" in body["detail"], body
            assert "HETAGENT_FUNCTION_MODULES" in body["detail"], body
        assert c.get("/v1/graphs").json() == []
        ok = c.post("/v1/graphs", json=graph("workers.transforms:redact_pii"))
        assert ok.status_code == 201, ok.text
