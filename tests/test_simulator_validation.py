"""bench/simulator_validation.py's comparison logic on real parts, without vLLM: a daemon running a transform
graph is driven with the replayed arrivals, the simulator is given the same list, and the fed-back plan is an
LLM plan made by the real planner (planned only; nothing serves it here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GRAPH = """
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: two-transforms}
spec:
  sla: {e2e_ms: 1000, percentile: 99}
  inputs: {brief: {type: string}}
  nodes:
    - name: first
      kind: transform
      function: workers.transforms:redact_pii
      inputs: {text: "{{ inputs.brief }}"}
      expected: {latency_ms: 2}
    - name: second
      kind: transform
      function: workers.transforms:redact_pii
      inputs: {text: "{{ nodes.first.output }}"}
      expected: {latency_ms: 3}
  outputs:
    text: "{{ nodes.second.output }}"
"""


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("simulator_validation", ROOT / "bench" / "simulator_validation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["simulator_validation"] = module  # dataclass/pydantic lookups by module name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("simulator_validation", None)


def test_replayed_runs_leave_at_the_simulators_arrival_times_and_both_are_compared(bench, tmp_path):
    from planner.plan import Plan
    from simulator.arrivals import arrival_times

    times = arrival_times("poisson", 8.0, 2.5, 11)
    assert len(times) >= 5
    with bench.Daemon(tmp_path / "d") as d, d.client() as c:
        gid, plan_doc = bench.deploy(c, GRAPH, 8.0, timeout_s=240)
        daemon_pid = d.proc.pid
        cpu0 = bench._process_cpu_s(daemon_pid)
        rows = bench.replay(d.client, gid, times, lambda i: {"brief": f"mail run{i}@example.com"})
        cpu1 = bench._process_cpu_s(daemon_pid)
        slowdown = bench.device_slowdown(c.get("/v1/hardware").json())
        # an open-loop probe far below what two host ops of 2-3 ms serve: it keeps up and prices the runtime
        probe = bench.open_loop_probe(d.client, gid, daemon_pid, 8.0, 2.5, 12)
    assert probe["runs"] == len(arrival_times("poisson", 8.0, 2.5, 12)) and probe["failed"] == 0
    assert probe["keeps_up"] and probe["runtime_cpu"]["runtime_cpu_s_per_run"] > 0
    # the daemon and the Ray it started are its tree; the runs cost the daemon CPU time
    assert daemon_pid in cpu1 and any(argv0 == "ray::HostWorker" for argv0, _ in cpu1.values())
    runtime = bench.runtime_cpu(cpu0, cpu1, len(times), 0)
    assert runtime["runtime_cpu_s_per_run"] > 0 and runtime["runtime_cpu_s_per_output_token"] == 0.0
    # every arrival became one run, in order, sent no earlier than its scheduled time, and it ran for real
    assert [r["arrival_s"] for r in rows] == times
    assert all(r["sent_s"] >= r["arrival_s"] for r in rows)
    assert all(r["ok"] for r in rows), [r["error"] for r in rows if not r["ok"]]
    assert all({rec["node"] for rec in r["records"]} == {"first", "second"} for r in rows)
    assert all(r["e2e_ms"] > 0 and r["client_ms"] >= r["e2e_ms"] for r in rows)
    # transforms are priced from their declared latency: no online-calibration evidence, nothing refitted
    assert set(slowdown.values()) == {1.0}

    plan = Plan.model_validate(plan_doc)
    sim = bench.simulate(plan, GRAPH, "local", times, 11, 0.0)
    assert sim.runs == len(times) and sim.completed == len(times)  # the simulator was given the same arrivals
    result = bench.compare(rows, {"plan": sim})
    assert result["runs"] == result["succeeded"] == len(times) and result["failed"] == 0
    assert result["plan"]["p50_ms"] == sim.p50_ms
    # host ops of 2 + 3 ms with no queueing at 8 runs/s: the simulated e2e is their sum, whatever was measured
    assert result["plan"]["p50_ms"] == pytest.approx(5.0, abs=0.5)
    client = sorted(r["client_ms"] for r in rows)  # the measured e2e is the client's, as the simulator's
    assert client[0] <= result["measured"]["p50_ms"] <= client[-1]
    e2e = sorted(r["e2e_ms"] for r in rows)
    assert e2e[0] <= result["measured"]["runtime_p50_ms"] <= e2e[-1]


def test_runtime_cpu_splits_the_tree_into_engine_front_end_host_ops_and_the_rest(bench):
    before = {1: ("python", 10.0), 2: ("VLLM::EngineCore", 5.0), 3: ("ray::LLMWorker", 1.0), 4: ("raylet", 0.5)}
    after = {
        1: ("python", 14.0),  # the daemon: +4 s
        2: ("VLLM::EngineCore", 65.0),  # the engine's steps: priced by the plan, not the runtime
        3: ("ray::LLMWorker", 3.0),  # +2 s of front-end for 1,000 tokens
        4: ("raylet", 1.5),  # +1 s
        5: ("ray::HostWorker", 7.0),  # started in the window: the plan's host ops, not the runtime
        6: ("ray::IDLE", 1.0),  # started in the window: +1 s
    }
    rt = bench.runtime_cpu(before, after, 10, 1000)
    assert rt["runtime_cpu_s_per_run"] == pytest.approx((4 + 1 + 1) / 10)
    assert rt["runtime_cpu_s_per_output_token"] == pytest.approx(2 / 1000)
    assert rt["cpu_s_by_process"]["VLLM::EngineCore"] == pytest.approx(60.0)


def test_engine_cores_are_its_core_process_cpu_over_its_requests_time(bench):
    before = {2: ("VLLM::EngineCore", 5.0), 3: ("ray::LLMWorker", 1.0)}
    after = {2: ("VLLM::EngineCore", 8.9), 3: ("ray::LLMWorker", 4.0)}  # 3.9 core-s of the engine core only
    llm = {"kind": "llm", "detail": {"e2e_ms": 1500.0}}
    rows = [
        {"ok": True, "records": [{"kind": "transform", "detail": {}}, llm]},
        {"ok": True, "records": [llm]},
        {"ok": False, "records": [{"kind": "llm", "detail": {"e2e_ms": 9e9}}]},  # failed runs do not count
    ]
    out = bench.engine_cores(before, after, rows)
    assert out["runs"] == 2 and out["engine_s"] == pytest.approx(3.0)
    assert out["engine_cores_busy"] == pytest.approx(3.9 / 3.0)
    assert bench.engine_cores(before, before, rows)["engine_cores_busy"] is None  # no CPU seen: unknown


def test_compare_reads_percentiles_and_signed_errors(bench):
    """Hand-made rows: client e2e 1…101 ms → p50 51, p99 100 (interpolated between order statistics); the
    runtime's e2e (1 ms less each) is reported beside it, not compared."""

    class Sim:
        p50_ms, p99_ms, ttft_p50_ms, ttft_p99_ms, completed, ops = 61.2, 80.0, None, None, 101, {}

    rows = [{"ok": True, "e2e_ms": float(v) - 1, "ttft_ms": None, "client_ms": float(v)} for v in range(1, 102)]
    rows.append({"ok": False, "e2e_ms": None, "ttft_ms": None, "client_ms": 5.0})
    out = bench.compare(rows, {"plan": Sim()})
    assert (out["runs"], out["succeeded"], out["failed"]) == (102, 101, 1)
    assert out["measured"]["p50_ms"] == 51.0 and out["measured"]["p99_ms"] == 100.0
    assert out["measured"]["runtime_p50_ms"] == 50.0 and out["measured"]["runtime_p99_ms"] == 99.0
    assert out["measured"]["ttft_p50_ms"] is None
    assert out["plan"]["p50_error"] == pytest.approx(0.2)  # 61.2 vs 51: 20 % pessimistic
    assert out["plan"]["p99_error"] == pytest.approx(-0.2)  # 80 vs 100: 20 % optimistic
    row = {"fraction": 0.6, "rate_per_s": 3.0, "other_cpu": 0.25, **out, "fed_back": out["plan"]}
    line = bench.table([row]).splitlines()[-1]
    assert line.startswith("| 60% | 3.00 | 102 (101) | 25% | 51 / 100 | 61 / 80 | +20% / -20% |"), line
    assert line.endswith("| +nan% / +nan% |"), line  # no (d) simulated
    # as main() stores a rate: the measured steal share beside (d)'s simulation
    row |= {"steal": 0.04, "with_steal": out["plan"]}
    assert bench.table([row]).splitlines()[-1].endswith("| +20% / -20% |")


def test_ttft_and_slowdown_are_read_from_the_daemons_documents(bench):
    run = {
        "e2e_ms": 900.0,
        "records": [
            {"kind": "transform", "detail": {}},
            {"kind": "llm", "detail": {"ttft_ms": 40.0, "e2e_ms": 820.0}},
        ],
    }
    assert bench.measured_ttft_ms(run) == 120.0  # 900 − (820 − 40)
    assert bench.measured_ttft_ms({"e2e_ms": 5.0, "records": [{"kind": "transform", "detail": {}}]}) is None
    hardware = [
        {"name": "local-cpu", "calibrations": [{"slowdown": 1.5}, {"slowdown": 1.2}]},
        {"name": "a100-80g", "calibrations": []},
    ]
    assert bench.device_slowdown(hardware) == pytest.approx({"local-cpu": 1.8, "a100-80g": 1.0})


def test_the_fed_back_plan_carries_the_slowdown_on_llm_ops_only(bench):
    import yaml

    from compiler.spec import parse_graph
    from costmodels.catalog import load_catalog, load_cluster
    from planner.pipeline import plan_spec
    from planner.place import PlanOptions
    from simulator.arrivals import arrival_times

    graph_yaml = bench.served_graph(ROOT / "examples/graphs/draft_writer.yaml", "tiny-llama")
    assert "model: tiny-llama" in graph_yaml and "llama-3.1-8b" not in graph_yaml
    catalog = load_catalog()
    spec = parse_graph(yaml.safe_load(graph_yaml), catalog)
    plan = plan_spec(spec, load_cluster("local", catalog), PlanOptions(rate_per_s=5.0, baselines=False), catalog)
    assert plan.feasible
    slowed = bench.fed_back(plan, {"local-cpu": 2.0})
    before = {o.name: o for o in plan.ops}
    for o in slowed.ops:
        b = before[o.name]
        if o.source_node == "draft":
            assert o.predicted_latency_ms == pytest.approx(2.0 * b.predicted_latency_ms)
        else:  # the transform keeps its declared latency
            assert o.predicted_latency_ms == b.predicted_latency_ms
    assert bench.fed_back(plan, {"a100-80g": 3.0}).ops == plan.ops  # another device's refit changes nothing
    times = arrival_times("poisson", 2.0, 30.0, 3)
    base = bench.simulate(plan, graph_yaml, "local", times, 3, 0.0)
    slow = bench.simulate(slowed, graph_yaml, "local", times, 3, 0.0)
    assert slow.p50_ms > 1.5 * base.p50_ms  # the simulator sees the slower engine


def test_keeps_up_reads_a_growing_wait_and_failures(bench):
    def rows(ms, ok=True):
        return [{"ok": ok, "client_ms": float(v)} for v in ms]

    flat = rows([100, 120, 90, 110, 105, 95, 115, 100, 98, 130, 90, 101])
    assert bench.keeps_up(flat) == {"growth": pytest.approx(1.0, abs=0.1), "vs_lone": None, "keeps_up": True}
    # the same runs against a lone run of 40 ms: a median 2.51 × it is past the latency bound (2.5 ×)
    assert bench.keeps_up(flat, 40.0)["vs_lone"] == pytest.approx(100.5 / 40)
    assert not bench.keeps_up(flat, 40.0)["keeps_up"]
    assert bench.keeps_up(flat, 45.0)["keeps_up"]
    growing = rows([100 + 60 * i for i in range(12)])  # the backlog grows: last third's median ≫ first's
    verdict = bench.keeps_up(growing)
    assert verdict["growth"] == pytest.approx(670 / 190)  # medians of 100…280 and 580…760 and not verdict["keeps_up"]
    assert not bench.keeps_up(flat[:-1] + rows([100], ok=False))["keeps_up"]  # a failed run: not kept up
    assert not bench.keeps_up(flat[:6])["keeps_up"]  # too few runs to tell


def test_capacity_by_probes_brackets_the_rate_a_probe_keeps_up_with(bench):
    """A deployment that keeps up with up to 2.3 runs/s, probed from a guess of 1.3 (a saturated closed loop's
    under-read): up by 1.4× while it keeps up, then bisection."""
    seen = []

    def probe(rate, k):
        seen.append((round(rate, 4), k))
        return {
            "rate_per_s": rate,
            "runs": 50,
            "failed": 0,
            "growth": 1.0,
            "vs_lone": 1.2,
            "p50_ms": 1.0,
            "keeps_up": rate <= 2.3,
        }

    found = bench.capacity_by_probes(probe, 1.3, 6)
    assert [k for _, k in seen] == list(range(6))
    assert [r for r, _ in seen[:3]] == [1.3, 1.82, 2.548]  # 2.548 falls behind: bisect from here
    assert found["capacity_per_s"] <= 2.3 < found["above_per_s"]
    assert found["above_per_s"] - found["capacity_per_s"] < 0.1
    assert found["at_capacity"]["rate_per_s"] == found["capacity_per_s"]
    # a guess above capacity comes down by 1.4× until one keeps up
    down = bench.capacity_by_probes(probe, 5.0, 4)
    assert down["capacity_per_s"] == pytest.approx(5.0 / 1.4**3) and down["above_per_s"] == pytest.approx(5.0 / 1.4**2)
    none = bench.capacity_by_probes(lambda rate, k: {**probe(rate, k), "keeps_up": False}, 1.0, 2)
    assert none["capacity_per_s"] is None and none["at_capacity"] is None


def test_steal_report_splits_runs_by_the_steal_in_their_lifetime(bench, tmp_path, capsys):
    """Four runs; the host stole 40 % of the CPU from second 10 to 12: the run alive then is 'steal-hit'."""
    import json

    timeline = [[float(t), 0.0, 0.4 if 10 <= t <= 12 else 0.01, 1.5] for t in range(1, 31)]
    detail = [[2.0, 3000.0, 2950.0], [9.0, 3000.0, 2950.0], [16.0, 2000.0, 1950.0], [22.0, 4000.0, 3950.0]]
    row = {"fraction": 0.15, "rate_per_s": 0.2, "steal": 0.04, "cpu_timeline": timeline, "runs_detail": detail}
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"results": [{**row, "runtime": {"p50_ms": 2500.0, "p99_ms": 3900.0}}]}))
    assert bench.steal_report(path) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    # quiet: the runs at 2 s, 16 s and 22 s (p50 3,000); hit: the one alive from 9 to 12 s
    assert line.startswith("| 15% | 0.20 | 4.0% | 3 of 30 | 3, 3,000 / "), line
    assert "| 1, 3,000 / 3,000 |" in line and line.endswith("| 2,500 / 3,900 |")
    path.write_text(json.dumps({"results": [{"rate_per_s": 0.2, "fraction": 0.15}]}))
    with pytest.raises(SystemExit, match="no cpu_timeline"):
        bench.steal_report(path)


def test_engine_report_reads_the_engines_batch_and_time_per_token(bench, tmp_path, capsys):
    """Two runs of 256 tokens whose engine took 2,560 ms each, the second starting 1 s later: the engine held
    (2 × 2.56 s) ÷ (0.44 s → 4.0 s) = 1.44 requests on average, at 10.0 ms per output token."""
    import json

    row = {
        "fraction": 0.6,
        "rate_per_s": 1.0,
        "cpu_timeline": [[1.0, 0.0, 0.0, 1.0]],
        "runs_detail": [[0.0, 3000.0, 2560.0], [1.0, 3000.0, 2560.0], [2.0, None, None]],
        "tokens": {"prompt_tokens": [30, 34, 40], "output_tokens": [256, 256, 256]},
    }
    plan_doc = {"ops": [{"kind": "prefill", "device": "local-cpu"}, {"kind": "decode", "device": "local-cpu"}]}
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"model": "tiny-llama", "plan_doc": plan_doc, "results": [row]}))
    assert bench.engine_report(path) == 0
    cells = capsys.readouterr().out.splitlines()[-1].split(" | ")
    assert cells[1:4] == ["1.00", "1.4", "10.0"], cells
    assert float(cells[4]) > 0
