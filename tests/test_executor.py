"""Runtime on a real local Ray cluster: parallel fan-out, failures, restarts, bad inputs (no LLM engine needed)."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time

import pytest

from compiler.spec import parse_graph
from costmodels.catalog import load_catalog, load_cluster
from planner.pipeline import plan_spec
from planner.place import PlanOptions
from workers.executor import GraphRunner, InputError, RunError, ensure_ray

CAT = load_catalog()
SLEEP_S = 0.5


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        time.sleep(SLEEP_S)
        out = b'{"echo": ' + (body or b"null") + b"}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def slow_server():
    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = Server(("127.0.0.1", 0), _SlowHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ensure_ray(None, ["local-cpu"])
    yield
    ray.shutdown()


def _graph(nodes, inputs=None, outputs=None):
    return parse_graph(
        {
            "apiVersion": "hetagent.dev/v1alpha1",
            "kind": "AgentGraph",
            "metadata": {"name": "t"},
            "spec": {"sla": {"e2e_ms": 60000}, "inputs": inputs or {}, "nodes": nodes, "outputs": outputs or {}},
        },
        CAT,
    )


def _runner(graph):
    plan = plan_spec(graph, load_cluster("local", CAT), PlanOptions(rate_per_s=0.1, baselines=False), CAT)
    assert plan.feasible, plan.reason
    return GraphRunner(graph, plan)


def test_the_local_rays_gcs_keeps_a_bounded_number_of_task_events():
    """The GCS process of a local Ray that ensure_ray starts has the task-event cap in its environment (Ray reads
    RAY_task_events_max_num_task_in_gcs there; its own log names the variable when the cap is reached). In a process
    of its own, so no other test's Ray (or its exited processes) is among its children."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from workers.executor import RAY_TASK_EVENTS_ENV

    code = (
        "import psutil, ray\n"
        "from workers.executor import RAY_TASK_EVENTS_ENV, ensure_ray\n"
        "ensure_ray(None, ['local-cpu'])\n"
        "gcs = [p for p in psutil.Process().children(recursive=True) if p.name() == 'gcs_server']\n"
        "print(len(gcs), gcs[0].environ().get(RAY_TASK_EVENTS_ENV) if gcs else None)\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", RAY_TASK_EVENTS_ENV)}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "1 10000", done.stdout


def test_the_task_event_cap_defaults_and_yields_to_the_users(monkeypatch):
    from workers.executor import RAY_TASK_EVENTS_ENV, ray_node_env

    monkeypatch.delenv(RAY_TASK_EVENTS_ENV, raising=False)
    assert ray_node_env() == {RAY_TASK_EVENTS_ENV: "10000"}
    monkeypatch.setenv(RAY_TASK_EVENTS_ENV, "77")
    assert ray_node_env() == {RAY_TASK_EVENTS_ENV: "77"}


def test_fan_out_runs_in_parallel(ray_local, slow_server):
    k = 4
    nodes = [
        {
            "name": f"call_{i}",
            "kind": "tool",
            "url": f"{slow_server}/x",
            "inputs": {"q": "{{ inputs.q }}"},
            "expected": {"latency_ms": SLEEP_S * 1000},
        }
        for i in range(k)
    ]
    nodes.append(
        {
            "name": "merge",
            "kind": "transform",
            "function": "tests.support.callables:join",
            "inputs": {f"p{i}": f"{{{{ nodes.call_{i}.output }}}}" for i in range(k)},
        }
    )
    graph = _graph(nodes, inputs={"q": {"type": "string"}}, outputs={"merged": "{{ nodes.merge.output }}"})
    runner = _runner(graph)
    try:
        runner.start()
        result = runner.run({"q": "hello"})
    finally:
        runner.shutdown()
    assert result.status == "succeeded"
    assert result.outputs["merged"].count("echo") == k and "hello" in result.outputs["merged"]
    fan_out_ms = max(r.measured_ms for r in result.records if r.node.startswith("call_"))
    # k calls of SLEEP_S each: in parallel they take about one, never k
    assert fan_out_ms < 0.5 * k * SLEEP_S * 1000, fan_out_ms
    assert result.e2e_ms < 0.5 * k * SLEEP_S * 1000 + 1000
    merge = next(r for r in result.records if r.node == "merge")
    assert merge.device == "local-cpu" and merge.ops == ["merge.transform"] and merge.predicted_ms > 0


def test_failing_op_names_op_device_and_error(ray_local, slow_server):
    graph = _graph(
        [
            {"name": "fine", "kind": "tool", "url": f"{slow_server}/x", "expected": {"latency_ms": 500}},
            {
                "name": "explode",
                "kind": "transform",
                "function": "tests.support.callables:boom",
                "inputs": {"x": "{{ nodes.fine.output }}"},
            },
            {
                "name": "after",
                "kind": "transform",
                "function": "tests.support.callables:join",
                "inputs": {"x": "{{ nodes.explode.output }}"},
            },
        ]
    )
    runner = _runner(graph)
    try:
        with pytest.raises(RunError) as err:
            runner.run({})
    finally:
        runner.shutdown()
    assert err.value.node == "explode" and err.value.device == "local-cpu"
    assert "transform exploded on purpose" in str(err.value)


def test_killed_worker_is_restarted_and_op_retried(ray_local, tmp_path):
    marker = tmp_path / "crashed"
    graph = _graph(
        [
            {
                "name": "fragile",
                "kind": "transform",
                "function": "tests.support.callables:crash_once",
                "inputs": {"marker": str(marker)},
            },
            {
                "name": "after",
                "kind": "transform",
                "function": "tests.support.callables:join",
                "inputs": {"x": "{{ nodes.fragile.output }}"},
            },
        ],
        outputs={"fragile": "{{ nodes.fragile.output }}", "after": "{{ nodes.after.output }}"},
    )
    runner = _runner(graph)
    events = []
    try:
        result = runner.run({}, on_event=lambda kind, name, data: events.append((kind, name)))
    finally:
        runner.shutdown()
    assert marker.exists()  # the first call really killed the worker process
    assert ("retry", "fragile") in events
    assert result.outputs["fragile"] == "recovered" and result.records[0].attempts == 2
    # the downstream op (fused with fragile on the same CPU) ran again behind the retry
    assert result.outputs["after"] == "recovered"


def test_transient_error_is_retried_when_the_node_allows(ray_local, tmp_path):
    nodes = [
        {
            "name": "flaky",
            "kind": "transform",
            "function": "tests.support.callables:flaky_once",
            "inputs": {"marker": str(tmp_path / "m")},
            "retries": 1,
        },
        {
            "name": "after",
            "kind": "transform",
            "function": "tests.support.callables:join",
            "inputs": {"x": "{{ nodes.flaky.output }}"},
        },
    ]
    runner = _runner(_graph(nodes))
    try:
        result = runner.run({})
        (tmp_path / "m2").mkdir()
        nodes[0]["retries"] = 0
        nodes[0]["inputs"]["marker"] = str(tmp_path / "m2" / "m")
    finally:
        runner.shutdown()
    assert result.outputs == {"after": "second try"} and result.records[0].attempts == 2
    assert any(
        "ConnectionError" in e and "transient failure on purpose" in e
        for e in result.records[0].detail["retried_errors"]
    )
    runner = _runner(_graph(nodes))  # the same failure without retries fails the run
    try:
        with pytest.raises(RunError, match="flaky.*ConnectionError"):
            runner.run({})
    finally:
        runner.shutdown()


def test_per_op_timeout_cancels_the_run(ray_local):
    graph = _graph(
        [
            {
                "name": "sleepy",
                "kind": "transform",
                "function": "tests.support.callables:slow",
                "inputs": {"seconds": "60"},
                "timeout_s": 0.5,
            }
        ]
    )
    runner = _runner(graph)
    t0 = time.perf_counter()
    try:
        with pytest.raises(RunError, match="sleepy.*timed out"):
            runner.run({})
    finally:
        runner.shutdown()
    assert time.perf_counter() - t0 < 30  # not the op's 60 s: it was cancelled (slack for a loaded machine)


@pytest.mark.parametrize(
    "inputs, needle",
    [
        ({}, "missing input 'question'"),
        ({"question": 42}, "must be string"),
        ({"question": "x" * 50}, "max_chars"),
        ({"question": "ok", "extra": 1}, "unknown input 'extra'"),
    ],
)
def test_bad_inputs_fail_before_anything_starts(inputs, needle):
    graph = _graph(
        [
            {
                "name": "t",
                "kind": "transform",
                "function": "tests.support.callables:join",
                "inputs": {"q": "{{ inputs.question }}"},
            }
        ],
        inputs={"question": {"type": "string", "max_chars": 10}},
    )
    plan = plan_spec(graph, load_cluster("local", CAT), PlanOptions(rate_per_s=0.1, baselines=False), CAT)
    runner = GraphRunner(graph, plan)
    with pytest.raises(InputError, match=needle):
        runner.run(inputs)
    assert runner.pools == {}  # nothing was started


def test_split_plan_becomes_a_prefill_pool_and_a_decode_pool():
    from tests.support.plans import draft_writer_plans, phase_devices
    from workers.units import build_layout

    graph, low, split = draft_writer_plans(CAT)
    layout = build_layout(graph, split)
    unit = layout.units["draft"]
    assert unit.split and unit.llm
    pre, dec = (layout.pools[p] for p in unit.pools)
    assert (pre.device, dec.device) == phase_devices(split, "draft") and pre.device != dec.device
    # the pools are the plan's engine groups, with the plan's replica counts and KV roles
    engines = {e["name"]: e for e in split.engines}
    for pool, role in ((pre, "kv_producer"), (dec, "kv_consumer")):
        engine = engines[pool.id]
        assert (pool.device, pool.replicas) == (engine["device"], engine["replicas"])
        kv = engine["engine_args"]["kv_transfer_config"]
        assert (kv["kv_connector"], kv["kv_connector_module_path"], kv["kv_role"]) == (
            "HetagentKVConnector",
            "workers.kv_connector",
            role,
        )
    assert layout.notes == []
    whole = build_layout(graph, low)
    assert not whole.units["draft"].split
    (engine,) = [e for e in low.engines if "draft.decode" in e["ops"]]
    assert (
        "kv_transfer_config" not in engine["engine_args"] and whole.pools[engine["name"]].replicas == engine["replicas"]
    )


def test_a_plan_the_runtime_cannot_honour_is_refused_before_start():
    from tests.support.plans import draft_writer_plans
    from workers.units import LayoutError

    graph, _, split = draft_writer_plans(CAT)
    bad = split.model_copy(deep=True)
    tok = next(o for o in bad.ops if o.name == "draft.tokenize")
    pre = next(o for o in bad.ops if o.name == "draft.prefill")
    tok.device = next(d.type for d in load_cluster("local_tiers", CAT).devices if d.type != pre.device)
    with pytest.raises(LayoutError, match=r"draft.tokenize: planned on .* its engine \(draft.prefill\) runs on"):
        GraphRunner(graph, bad)
    no_engines = split.model_copy(deep=True)
    no_engines.engines = []
    with pytest.raises(LayoutError, match="no engine groups"):
        GraphRunner(graph, no_engines)


def test_unplaceable_pool_is_a_clear_error(ray_local):
    graph = _graph(
        [{"name": "t", "kind": "transform", "function": "tests.support.callables:join", "inputs": {"q": "x"}}]
    )
    plan = plan_spec(graph, load_cluster("local", CAT), PlanOptions(rate_per_s=0.1, baselines=False), CAT)
    elsewhere = plan.model_copy(deep=True)
    for o in elsewhere.ops:
        o.device = "h100-sxm"  # no Ray node advertises device:h100-sxm here
    runner = GraphRunner(graph, elsewhere)
    with pytest.raises(RunError, match=r"'t' on h100-sxm .*device:h100-sxm"):
        runner.start(start_timeout_s=3)
    assert runner.pools == {}


def test_co_located_host_ops_fuse_into_convex_units():
    t = {"kind": "transform", "function": "tests.support.callables:join"}
    graph = _graph(
        [
            {"name": "a", **t, "inputs": {"x": "{{ inputs.q }}"}},
            {"name": "b", **t, "inputs": {"x": "{{ inputs.q }}"}},
            {"name": "c", **t, "inputs": {"x": "{{ nodes.a.output }}", "y": "{{ nodes.b.output }}"}},
            {
                "name": "llm",
                "kind": "llm",
                "model": "qwen2.5-0.5b-instruct",
                "prompt": "{{ nodes.c.output }}",
                "expected": {"input_tokens": 32, "output_tokens": 4},
            },
            {"name": "d", **t, "inputs": {"x": "{{ nodes.llm.output }}", "y": "{{ nodes.c.output }}"}},
            {
                "name": "post",
                "kind": "tool",
                "function": "tests.support.callables:join",
                "idempotent": False,
                "expected": {"latency_ms": 5},
                "inputs": {"x": "{{ nodes.d.output }}"},
            },
        ],
        inputs={"q": {"type": "string"}},
    )
    plan = plan_spec(graph, load_cluster("local", CAT), PlanOptions(rate_per_s=0.01, baselines=False), CAT)
    units = GraphRunner(graph, plan).units
    # a, b, c fuse; d cannot join them (c -> llm -> d would leave and re-enter); the LLM and the
    # non-idempotent tool stand alone; the order is topological
    assert [u.nodes for u in units.values()] == [["a", "b", "c"], ["llm"], ["d"], ["post"]]
    assert [u.llm for u in units.values()] == [False, True, False, False]
