"""The discrete-event simulator against queueing theory, the cost model's batching, and itself (seeds).

The queueing checks are statistical but deterministic: a fixed seed and 200,000 calls at utilisation 0.5,
where the sample mean's relative standard error is about 1% (M/M/1) — the 5% band is several errors wide
for this seed, and any seed would pass it with high probability.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from costmodels import work as W
from costmodels.catalog import load_catalog, load_cluster
from costmodels.granular import GranularEdge, GranularGraph, GranularOp
from costmodels.roofline import roofline_step_s
from planner.plan import Plan, PlannedOp
from simulator import SimOptions, SimulationError, arrival_times, simulate
from simulator.arrivals import ArrivalError

ROOT = Path(__file__).resolve().parents[1]
DEEP = ROOT / "examples/graphs/deep_research.yaml"


def _plan(ops: list[PlannedOp], graph: str = "g") -> Plan:
    return Plan(
        graph=graph,
        cluster="hand-built",
        feasible=True,
        sla_ms=1000.0,
        rate_per_s=1.0,
        max_utilisation=0.8,
        solver="hand",
        solve_seconds=0.0,
        ops=ops,
    )


def _planned(name: str, kind: str, device: str, cls: str, latency_ms: float, tput: float, batch: int = 1, **kw):
    return PlannedOp(
        name=name,
        kind=kind,
        source_node=name.split(".")[0],
        device=device,
        device_class=cls,
        replicas=1,
        batch=batch,
        tensor_parallel=1,
        cores_per_replica=0,
        devices_allocated=0,
        predicted_latency_ms=latency_ms,
        throughput_per_replica=tput,
        utilisation=0.0,
        memory_bytes_per_replica=0.0,
        bound="fixed",
        **kw,
    )


def _one_transform(service_ms: float) -> tuple[Plan, GranularGraph]:
    op = GranularOp(name="t.transform", kind="transform", source_node="t", fixed_latency_ms=service_ms)
    graph = GranularGraph("g", 1000.0, None, (op,), ())
    plan = _plan([_planned("t.transform", "transform", "xeon-8592", "cpu", service_ms, 1000.0 / service_ms)])
    return plan, graph


@pytest.mark.parametrize(
    ("service", "theory"),
    [
        # M/M/1: Wq = ρ / (μ − λ);  M/D/1 (Pollaczek–Khinchine): Wq = ρ / (2μ(1 − ρ))
        ("exponential", lambda lam, mu: (lam / mu) / (mu - lam)),
        ("deterministic", lambda lam, mu: (lam / mu) / (2 * mu * (1 - lam / mu))),
    ],
)
def test_single_server_mean_wait_matches_queueing_theory(service, theory):
    catalog = load_catalog()
    plan, graph = _one_transform(10.0)  # μ = 100 calls/s
    lam = 50.0  # ρ = 0.5
    arrivals = arrival_times("poisson", lam, 4000.0, seed=3)  # ~200,000 calls
    r = simulate(plan, graph, catalog, arrivals, SimOptions(seed=3, host_service=service))
    expected_ms = theory(lam, 100.0) * 1000.0
    got = r.ops["t.transform"].mean_wait_ms
    assert got == pytest.approx(expected_ms, rel=0.05), (service, got, expected_ms)
    # a run of this graph is its one call: e2e = wait + service, in the mean
    assert r.mean_ms == pytest.approx(got + 10.0, rel=0.01)
    assert r.ops["t.transform"].utilisation == pytest.approx(0.5, rel=0.03)


def _decode_only(batch: int, prompt: int, out: int) -> tuple[Plan, GranularGraph, float]:
    """A graph of one decode op on a B200 at ``batch``; returns the plan and the cost model's step sum."""
    catalog = load_catalog()
    model, device = catalog.model("llama-3.1-8b-instruct"), catalog.device("b200")
    op = GranularOp(
        name="gen.decode", kind="decode", source_node="gen", model=model.name, input_tokens=prompt, output_tokens=out
    )
    graph = GranularGraph("g", 1e9, None, (op,), ())

    def step(ctx: float) -> float:
        return roofline_step_s(W.decode_step_work(model, ctx, batch), device, model.dtype)[0]

    # one full generation of a batch that joined together: the context grows from P to P + N − 1
    generation_s = sum(step(prompt + k) for k in range(out))
    latency_ms = step(prompt + out / 2) * out * 1000.0  # the planner's latency: N steps at the mean context
    plan = _plan([_planned("gen.decode", "decode", "b200", "gpu", latency_ms, batch / latency_ms * 1000, batch)])
    return plan, graph, generation_s


def test_continuous_batching_throughput_matches_the_cost_model():
    catalog = load_catalog()
    prompt, out, requests = 512, 128, 640
    measured, predicted = {}, {}
    for batch in (1, 32):
        plan, graph, generation_s = _decode_only(batch, prompt, out)
        r = simulate(plan, graph, catalog, [0.0] * requests, SimOptions(size_sigma=0))
        assert r.completed == requests
        measured[batch] = requests / r.horizon_s
        predicted[batch] = batch / generation_s  # B sequences every generation, back to back at saturation
        assert measured[batch] == pytest.approx(predicted[batch], rel=0.02), batch
        assert r.ops["gen.decode"].mean_batch == pytest.approx(batch, rel=0.01)
    gain = measured[32] / measured[1]
    assert gain == pytest.approx(predicted[32] / predicted[1], rel=0.02)
    assert gain > 5  # memory-bound decode: 32 sequences share each step's weight reads


@pytest.fixture(scope="module")
def deep_plan(tmp_path_factory):
    from compiler.ir import compile_graph
    from compiler.spec import load_graph
    from planner.pipeline import apply_model_overrides, plan_spec
    from planner.place import PlanOptions

    catalog = load_catalog()
    spec = load_graph(DEEP, catalog)
    cluster = load_cluster("homogeneous_b200", catalog)
    plan = plan_spec(spec, cluster, PlanOptions(rate_per_s=5, baselines=False), catalog)
    assert plan.feasible
    _, graph = compile_graph(apply_model_overrides(spec, cluster, catalog), catalog)
    path = tmp_path_factory.mktemp("sim") / "plan.json"
    path.write_text(plan.model_dump_json())
    return plan, graph, path


def test_same_seed_same_result_other_seed_differs(deep_plan):
    plan, graph, _ = deep_plan
    catalog = load_catalog()

    def once(seed: int) -> dict:
        times = arrival_times("bursty:2", 5.0, 60.0, seed)
        return simulate(plan, graph, catalog, times, SimOptions(seed=seed)).model_dump()

    a, b, c = once(7), once(7), once(8)
    assert a == b
    assert a["runs"] > 200 and a["completed"] == a["runs"]
    assert (a["runs"], a["p50_ms"], a["p99_ms"]) != (c["runs"], c["p50_ms"], c["p99_ms"])


def test_request_sizes_are_drawn_per_run(deep_plan):
    """Log-normal sizes spread the e2e latency; the expected sizes alone at a low rate barely do."""
    plan, graph, _ = deep_plan
    catalog = load_catalog()
    times = [i * 2.0 for i in range(100)]  # 0.5 runs/s: nearly no queueing
    fixed = simulate(plan, graph, catalog, times, SimOptions(size_sigma=0))
    drawn = simulate(plan, graph, catalog, times, SimOptions(size_sigma=0.5))
    assert fixed.p99_ms - fixed.p50_ms < 0.05 * fixed.p50_ms
    assert drawn.p99_ms - drawn.p50_ms > 0.2 * drawn.p50_ms


def test_arrival_processes():
    poisson = arrival_times("poisson", 10.0, 1000.0, seed=1)
    assert len(poisson) == pytest.approx(10_000, rel=0.03)
    gaps = [b - a for a, b in zip(poisson, poisson[1:], strict=False)]
    bursty = arrival_times("bursty:3", 10.0, 1000.0, seed=1)
    bgaps = [b - a for a, b in zip(bursty, bursty[1:], strict=False)]

    def cv(xs):
        m = sum(xs) / len(xs)
        return (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5 / m

    assert cv(gaps) == pytest.approx(1.0, rel=0.05)
    assert cv(bgaps) == pytest.approx(3.0, rel=0.15)
    for bad in ("uniform", "bursty:x", "bursty:0", "bursty:-1"):
        with pytest.raises(ArrivalError):
            arrival_times(bad, 10.0, 10.0, seed=1)


def test_trace_arrivals(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("t_s\n0.5\n0.1\n3\n20\n")
    assert arrival_times(str(trace), 1.0, 10.0, seed=0) == [0.1, 0.5, 3.0]
    trace.write_text("0.1\nsoon\n")
    with pytest.raises(ArrivalError, match="not a time"):
        arrival_times(str(trace), 1.0, 10.0, seed=0)


def test_plan_and_graph_must_match(deep_plan):
    plan, _, _ = deep_plan
    _, other = _one_transform(1.0)
    with pytest.raises(SimulationError, match="does not match"):
        simulate(plan, other, load_catalog(), [0.0])


def test_cli_json(deep_plan):
    from orchestrator.cli import app

    _, _, path = deep_plan
    runner = CliRunner()
    args = ["simulate", str(path), "--graph", str(DEEP), "--rate", "5", "--duration", "30", "--seed", "7"]
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["completed"] == doc["runs"] > 50
    assert 0 < doc["p50_ms"] <= doc["p95_ms"] <= doc["p99_ms"]
    assert 0 <= doc["attainment"] <= 1 and doc["sla_ms"] == 8000 and doc["sla_percentile"] == 50
    assert doc["usd_per_1k_runs"] > 0
    assert set(doc["ops"]) == {o.name for o in deep_plan[0].ops}
    assert all(0 <= o["utilisation"] <= 1 for o in doc["ops"].values())
    again = runner.invoke(app, [*args, "--format", "json"])
    assert json.loads(again.stdout) == doc
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "SLA 8000 ms at p50" in table.stdout

    wrong = runner.invoke(app, ["simulate", str(path), "--graph", str(ROOT / "examples/graphs/rag_agent.yaml")])
    assert wrong.exit_code == 2 and "plan for graph 'deep-research'" in wrong.output
    bad = runner.invoke(app, [*args, "--arrivals", "bursty:nope"])
    assert bad.exit_code == 2 and "bursty:CV" in bad.output
    none = runner.invoke(app, ["simulate", str(path), "--graph", str(DEEP), "--rate", "0.001", "--duration", "1"])
    assert none.exit_code == 2 and "no runs arrive" in none.output
    # without --rate the plan's rate (5 runs/s): about 150 runs in 30 s
    default = runner.invoke(app, ["simulate", str(path), "--graph", str(DEEP), "--duration", "30", "--format", "json"])
    assert json.loads(default.stdout)["runs"] == pytest.approx(150, rel=0.25)


def _prefill_decode(link_gb_s: float, fixed_ms: float, budget: int | None = None):
    """prefill (B200) → KV over a link → decode (H100 SXM), one sequence at a time; fixed sizes."""
    from planner.plan import PlannedEdge

    catalog = load_catalog()
    model = catalog.model("llama-3.1-8b-instruct")
    pre_dev, dec_dev = catalog.device("b200"), catalog.device("h100-sxm")
    prompt, out = 3000, 64
    kv_bytes = model.kv_bytes_per_token * prompt
    pre = GranularOp("gen.prefill", "prefill", "gen", model=model.name, input_tokens=prompt, output_tokens=out)
    dec = GranularOp("gen.decode", "decode", "gen", model=model.name, input_tokens=prompt, output_tokens=out)
    graph = GranularGraph("g", 1e9, None, (pre, dec), (GranularEdge("gen.prefill", "gen.decode", kv_bytes),))

    def pre_s(tokens: int) -> float:
        return roofline_step_s(W.prefill_work(model, tokens, 1), pre_dev, model.dtype)[0]

    def dec_s(ctx: float) -> float:
        return roofline_step_s(W.decode_step_work(model, ctx, 1), dec_dev, model.dtype)[0]

    execution = {"engine_args": {"max_num_batched_tokens": budget}} if budget else {}
    pre_ms, dec_ms = pre_s(prompt) * 1000, dec_s(prompt + out / 2) * out * 1000
    plan = _plan(
        [
            _planned("gen.prefill", "prefill", "b200", "gpu", pre_ms, 1000 / pre_ms, execution=execution),
            _planned("gen.decode", "decode", "h100-sxm", "gpu", dec_ms, 1000 / dec_ms),
        ]
    )
    transfer_ms = fixed_ms + kv_bytes / (link_gb_s * 1e9) * 1000
    plan.edges = [
        PlannedEdge(
            src="gen.prefill",
            dst="gen.decode",
            bytes=kv_bytes,
            transfer_ms=transfer_ms,
            src_device="b200",
            dst_device="h100-sxm",
            link_gb_s=link_gb_s,
            link_fixed_ms=fixed_ms,
        )
    ]
    return plan, graph, pre_s, dec_s, prompt, out, transfer_ms


def test_kv_transfer_and_ttft_on_a_split_llm():
    plan, graph, pre_s, dec_s, prompt, out, transfer_ms = _prefill_decode(link_gb_s=2.0, fixed_ms=5.0)
    r = simulate(plan, graph, load_catalog(), [0.0], SimOptions(size_sigma=0))
    prefill_ms = pre_s(prompt) * 1000
    decode_ms = sum(dec_s(prompt + k) for k in range(out)) * 1000
    assert transfer_ms > 100  # 375 MiB of KV over 2 GB/s: the link matters here
    assert r.p50_ms == pytest.approx(prefill_ms + transfer_ms + decode_ms, rel=0.01)
    # the first token: prefill, the hand-off and one decode step at the prompt's context
    assert r.ttft_p50_ms == pytest.approx(prefill_ms + transfer_ms + dec_s(prompt) * 1000, rel=0.01)


def test_chunked_prefill_splits_a_prompt_over_the_token_budget():
    catalog = load_catalog()
    whole, graph, pre_s, _, prompt, _, _ = _prefill_decode(2.0, 5.0)
    chunked, *_ = _prefill_decode(2.0, 5.0, budget=1024)
    requests = 10
    a = simulate(whole, graph, catalog, [0.0] * requests, SimOptions(size_sigma=0))
    b = simulate(chunked, graph, catalog, [0.0] * requests, SimOptions(size_sigma=0))
    chunks = [1024, 1024, prompt - 2048]
    assert a.ops["gen.prefill"].mean_batch == 1 and b.ops["gen.prefill"].mean_batch == 1
    assert (a.ops["gen.prefill"].steps, b.ops["gen.prefill"].steps) == (requests, 3 * requests)
    assert b.ops["gen.decode"].steps == a.ops["gen.decode"].steps == requests * 64
    # one step per prompt unchunked, three chunks under a 1,024-token budget
    whole_s, chunked_s = requests * pre_s(prompt), requests * sum(pre_s(c) for c in chunks)
    busy_a = a.ops["gen.prefill"].utilisation * a.horizon_s
    busy_b = b.ops["gen.prefill"].utilisation * b.horizon_s
    assert busy_a == pytest.approx(whole_s, rel=0.01)
    assert busy_b == pytest.approx(chunked_s, rel=0.02)


def _cpu_device(cores: int):
    from planner.plan import DeviceUsage

    return DeviceUsage(
        device="xeon-8592",
        device_class="cpu",
        allocated=1,
        busy_fraction=0.0,
        usd_per_hour_per_device=1.0,
        cores=cores,
        usd_per_hour=1.0,
    )


def test_host_ops_time_share_the_cpu_cores():
    """Two 1-core, 100 ms calls at once: 100 ms on a 2-core socket, 200 ms when they share one core."""
    ops = tuple(GranularOp(f"t{i}.transform", "transform", f"t{i}", fixed_latency_ms=100.0) for i in (1, 2))
    graph = GranularGraph("g", 1e9, None, ops, ())
    e2e = {}
    for cores in (1, 2):
        plan = _plan([_planned(o.name, "transform", "xeon-8592", "cpu", 100.0, 10.0) for o in ops])
        for o in plan.ops:
            o.cores_per_replica = 1
        plan.devices = [_cpu_device(cores)]
        e2e[cores] = simulate(plan, graph, load_catalog(), [0.0]).p50_ms
    assert e2e == {1: pytest.approx(200.0), 2: pytest.approx(100.0)}


def test_sliced_plans_are_refused_clearly():
    from planner.plan import PlannedSlice

    plan, graph, *_ = _prefill_decode(2.0, 5.0)
    piece = PlannedSlice(
        input_tokens=3000,
        output_tokens=64,
        bucket_share=1.0,
        fraction=1.0,
        device="b200",
        tensor_parallel=1,
        batch=1,
        requests_per_s=1.0,
        rate_per_device=2.0,
        devices=0.6,
        latency_ms=30.0,
        estimate_source="roofline",
    )
    plan.ops[1].slices = [piece]
    with pytest.raises(SimulationError, match="slices requests by size"):
        simulate(plan, graph, load_catalog(), [0.0])


def test_runtime_cpu_is_work_the_cores_also_do():
    """The daemon's per-run CPU comes out of the same cores: a saturated 1-core socket finishes when the ops'
    and the runtime's core-seconds are both done (work conservation), whatever the sharing rule."""
    plan, graph = _one_transform(10.0)
    plan.ops[0].cores_per_replica = 1
    plan.devices = [_cpu_device(1)]
    arrivals = [i / 80.0 for i in range(8000)]  # 100 s at 80 runs/s: 0.8 of the core without the runtime
    quiet = simulate(plan, graph, load_catalog(), arrivals, SimOptions(size_sigma=0))
    assert quiet.horizon_s == pytest.approx(100.0, rel=0.01)  # keeps up
    busy = SimOptions(size_sigma=0, runtime_device="xeon-8592", runtime_cpu_s_per_run=0.005)
    loaded = simulate(plan, graph, load_catalog(), arrivals, busy)
    # 8,000 × (10 + 5) ms = 120 core-seconds on one core: it cannot keep up, and ends when the work is done
    assert loaded.horizon_s == pytest.approx(120.0, rel=0.03)
    assert loaded.p99_ms > 10 * quiet.p99_ms


def test_runtime_cpu_per_token_slows_a_cpu_engine_and_needs_a_cpu_device():
    catalog = load_catalog()
    plan, graph, _ = _decode_only(8, 128, 64)
    cpu = catalog.device("xeon-8592")
    plan.ops[0].device, plan.ops[0].device_class, plan.ops[0].cores_per_replica = cpu.name, "cpu", cpu.cores
    plan.devices = [_cpu_device(cpu.cores or 1)]
    arrivals = [i * 0.05 for i in range(40)]
    base = simulate(plan, graph, catalog, arrivals, SimOptions(size_sigma=0))
    per_token = SimOptions(size_sigma=0, runtime_cpu_s_per_output_token=0.02)  # ~1,100 tokens/s: ~22 cores
    slowed = simulate(plan, graph, catalog, arrivals, per_token)
    assert slowed.p50_ms > 1.2 * base.p50_ms
    with pytest.raises(SimulationError, match=r"runtime_device 'b200' is not a CPU device of the catalog"):
        simulate(plan, graph, catalog, arrivals, SimOptions(runtime_device="b200", runtime_cpu_s_per_run=0.1))
    # the daemon on a CPU type the plan does not use takes none of the plan's cores
    elsewhere = SimOptions(size_sigma=0, runtime_device="local-cpu", runtime_cpu_s_per_run=10.0)
    assert simulate(plan, graph, catalog, arrivals, elsewhere).p50_ms == base.p50_ms


def test_a_clusters_measured_runtime_cpu_reaches_the_simulation(tmp_path):
    from costmodels.catalog import ClusterInventory
    from simulator.core import runtime_options

    local = load_cluster("local", load_catalog())
    doc = local.model_dump(mode="json")
    doc["runtime_cpu"] = {"device": "local-cpu", "cpu_s_per_run": 0.3, "cpu_s_per_output_token": 0.001}
    opts = runtime_options(ClusterInventory.model_validate(doc))
    assert opts == {
        "runtime_device": "local-cpu",
        "runtime_cpu_s_per_run": 0.3,
        "runtime_cpu_s_per_output_token": 0.001,
        "engine_cores_busy": None,
    }
    doc["runtime_cpu"]["engine_cores_busy"] = 1.3
    assert runtime_options(ClusterInventory.model_validate(doc))["engine_cores_busy"] == 1.3
    doc["runtime_cpu"]["device"] = "xeon-8592"
    with pytest.raises(ValueError, match="runtime_cpu.device 'xeon-8592' is not a device of the cluster"):
        ClusterInventory.model_validate(doc)
    doc.pop("runtime_cpu")
    assert runtime_options(ClusterInventory.model_validate(doc)) == {}


def test_a_cpu_engine_holding_fewer_cores_is_not_slowed_by_what_the_others_leave():
    """A decode engine on a 2-core socket while the daemon's work of one arrival (0.8 core-s, spread over
    τ = 1 s) runs: a step that holds both cores is stretched; one that keeps only 1 core busy (measured
    engine_cores_busy) fits beside it and takes its unloaded time."""
    catalog = load_catalog()
    plan, graph, _ = _decode_only(1, 64, 32)
    plan.ops[0].device, plan.ops[0].device_class, plan.ops[0].cores_per_replica = "xeon-8592", "cpu", 2
    plan.devices = [_cpu_device(2)]
    charge = dict(size_sigma=0, runtime_device="xeon-8592", runtime_cpu_s_per_run=0.8)
    alone = simulate(plan, graph, catalog, [0.0], SimOptions(size_sigma=0)).p50_ms
    both_cores = simulate(plan, graph, catalog, [0.0], SimOptions(**charge)).p50_ms
    one_core = simulate(plan, graph, catalog, [0.0], SimOptions(**charge, engine_cores_busy=1.0)).p50_ms
    assert both_cores > 1.05 * alone
    assert one_core == pytest.approx(alone)
    # more than the plan's cores is not taken: the plan's 2 stand
    assert simulate(plan, graph, catalog, [0.0], SimOptions(**charge, engine_cores_busy=4.0)).p50_ms == both_cores


def test_host_steal_takes_its_share_of_the_cores_while_measured():
    """A 10 ms op holding the one core of its socket: while the host takes half the core (steal 0.5, from 5 s to
    10 s) it takes 20 ms; before and after, 10 ms. Shares outside [0, 1) and times out of order are refused."""
    plan, graph = _one_transform(10.0)
    plan.ops[0].cores_per_replica = 1
    plan.devices = [_cpu_device(1)]
    steal = [(5.0, 0.0), (10.0, 0.5)]  # 0 up to 5 s, 0.5 over (5, 10] s, 0 after
    result = simulate(plan, graph, load_catalog(), [1.0], SimOptions(size_sigma=0, cpu_steal=steal))
    assert result.p50_ms == pytest.approx(10.0)
    stolen = simulate(plan, graph, load_catalog(), [6.0], SimOptions(size_sigma=0, cpu_steal=steal))
    assert stolen.p50_ms == pytest.approx(20.0)
    after = simulate(plan, graph, load_catalog(), [11.0], SimOptions(size_sigma=0, cpu_steal=steal))
    assert after.p50_ms == pytest.approx(10.0)
    # an op holding 2 of 4 cores at s = 0.5: the pool's 2 cores left fit it (proportional: 10 ms); as a gang its
    # two threads both run only (1 − s)² of the time (40 ms)
    plan.ops[0].cores_per_replica = 2
    plan.devices = [_cpu_device(4)]
    proportional = SimOptions(size_sigma=0, cpu_steal=steal, steal_model="proportional")
    assert simulate(plan, graph, load_catalog(), [6.0], proportional).p50_ms == pytest.approx(10.0)
    gang = SimOptions(size_sigma=0, cpu_steal=steal)  # the default
    assert simulate(plan, graph, load_catalog(), [6.0], gang).p50_ms == pytest.approx(40.0)
    assert simulate(plan, graph, load_catalog(), [1.0], gang).p50_ms == pytest.approx(10.0)
    with pytest.raises(ValueError, match=r"shares must be in \[0, 1\)"):
        SimOptions(cpu_steal=[(1.0, 1.0)])
    with pytest.raises(ValueError, match="times must ascend"):
        SimOptions(cpu_steal=[(2.0, 0.1), (1.0, 0.1)])


def test_runs_past_the_daemons_run_threads_wait_for_one():
    """A 10 ms op with 10 slots never queues at 50 runs/s; with one run thread (max_runs_in_flight = 1) the
    daemon is an M/D/1 queue of μ = 100/s in front of it: mean wait ρ/(2μ(1 − ρ)) = 5 ms (Pollaczek–Khinchine)."""
    catalog = load_catalog()
    op = GranularOp(name="t.transform", kind="transform", source_node="t", fixed_latency_ms=10.0)
    graph = GranularGraph("g", 1000.0, None, (op,), ())
    plan = _plan([_planned("t.transform", "transform", "xeon-8592", "cpu", 10.0, 1000.0)])  # 10 slots
    arrivals = arrival_times("poisson", 50.0, 2000.0, seed=5)  # ~100,000 runs
    free = simulate(plan, graph, catalog, arrivals, SimOptions(seed=5))
    assert free.mean_ms == pytest.approx(10.0, abs=0.01)
    one = simulate(plan, graph, catalog, arrivals, SimOptions(seed=5, max_runs_in_flight=1))
    assert one.mean_ms - 10.0 == pytest.approx(0.5 / (2 * 100.0 * 0.5) * 1000.0, rel=0.05)
    assert one.completed == free.completed == len(arrivals)
    assert one.ops["t.transform"].mean_wait_ms == 0.0  # the wait is before the graph, not at the op
