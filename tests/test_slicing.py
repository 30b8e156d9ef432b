"""Request-size slicing: an LLM node's traffic split across device types by size bucket (planner/slicing.py).

Reference answers are computed here independently of the planner: Mélange's problem by enumerating whole-bucket
assignments, single-type costs by hand arithmetic, and the sliced optimum by enumerating GPU counts with an LP
(scipy's HiGHS) for the fractional split.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest

from compiler.ir import compile_graph
from compiler.spec import SpecError, parse_graph
from costmodels.catalog import ClusterInventory, DevicePool, load_catalog, load_cluster
from costmodels.profile_import import import_melange
from costmodels.profiles import load_profiles, write_profile_file
from costmodels.request_options import request_options
from planner.evaluate import check_plan
from planner.ilp import PlanningError
from planner.pipeline import plan_spec
from planner.place import PlanOptions

ROOT = Path(__file__).resolve().parent.parent
CAT = load_catalog()
TINY = Path(__file__).parent / "data" / "melange_tiny.json"
TOY = ROOT.parent / "shared" / "reference" / "melange" / "toy_inputs.json"
HOST = "xeon-8592"


def _spec(
    buckets: list[tuple[int, int, float]], *, tpot_ms: float | None = 100.0, sla_ms: float = 1e7, model="llama-2-7b"
) -> dict:
    traffic: dict = {"buckets": [{"input_tokens": i, "output_tokens": o, "share": s} for i, o, s in buckets]}
    if tpot_ms is not None:
        traffic["tpot_ms"] = tpot_ms
    return {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "AgentGraph",
        "metadata": {"name": "sliced"},
        "spec": {
            "sla": {"e2e_ms": sla_ms},
            "nodes": [
                {
                    "name": "chat",
                    "kind": "llm",
                    "model": model,
                    "expected": {"input_tokens": 50, "output_tokens": 10},
                    "traffic": traffic,
                }
            ],
        },
    }


def _cluster(prices: dict[str, float]) -> ClusterInventory:
    pools = [DevicePool(type=d, count=1000, per_node=8, pricing="cloud", price_usd_per_h=p) for d, p in prices.items()]
    return ClusterInventory(name="gpus", devices=[*pools, DevicePool(type=HOST, count=100, per_node=2)])


def _gpu_cost(plan) -> float:
    return sum(d.usd_per_hour for d in plan.devices if d.device_class != "cpu")


def _melange_whole_buckets(tputs: dict[str, list[list[float]]], cost: dict[str, float], load: list[list[float]]):
    """Mélange's optimum at slice_factor 1, by enumeration: every bucket whole on one type, ⌈Σ load / tput⌉ GPUs."""
    cells = [(i, j) for i, row in enumerate(load) for j, x in enumerate(row) if x > 0]
    best = math.inf
    for pick in itertools.product(list(tputs), repeat=len(cells)):
        use = {g: 0.0 for g in tputs}
        for (i, j), g in zip(cells, pick, strict=True):
            use[g] += load[i][j] / tputs[g][i][j]
        best = min(best, sum(cost[g] * math.ceil(u - 1e-9) for g, u in use.items()))
    return best


def _sliced_optimum(tputs: dict[str, list[list[float]]], cost: dict[str, float], load: list[list[float]], top=12):
    """The fractional split's optimum: every GPU count vector up to ``top``; is there a split s[c, g] ≥ 0 with
    Σ_g s[c, g] = 1 per bucket c and Σ_c load_c s[c, g] / tput[g][c] ≤ n_g per type? (an LP)."""
    from scipy.optimize import linprog

    gpus = list(tputs)
    cells = [(i, j) for i, row in enumerate(load) for j, x in enumerate(row) if x > 0]
    n_var = len(cells) * len(gpus)  # variable v = c · |G| + g
    a_eq = [[1.0 if v // len(gpus) == c else 0.0 for v in range(n_var)] for c in range(len(cells))]
    a_ub = [
        [
            load[i][j] / tputs[g][i][j] if v % len(gpus) == gi else 0.0
            for v, (i, j) in ((v, cells[v // len(gpus)]) for v in range(n_var))
        ]
        for gi, g in enumerate(gpus)
    ]
    best = math.inf
    for counts in itertools.product(range(top + 1), repeat=len(gpus)):
        price = sum(cost[g] * n for g, n in zip(gpus, counts, strict=True))
        if price >= best:
            continue
        res = linprog([0.0] * n_var, A_ub=a_ub, b_ub=list(counts), A_eq=a_eq, b_eq=[1.0] * len(cells), bounds=(0, 1))
        if res.status == 0:
            best = price
    return best


def _plan_melange_file(path: Path, case: str | None, devices: dict[str, str], edges, tpot: float, tmp: Path):
    """Import a Mélange input and plan its single-LLM graph (cap 1.0, gap 0): (plan, graph, store, cluster, load)."""
    data = json.loads(path.read_text())
    entry = data[case] if case else data
    config = entry["config"]
    profile = import_melange(
        path,
        CAT,
        model="llama-2-7b",
        devices=devices,
        input_tokens=edges[0],
        output_tokens=edges[1],
        tpot_slo_ms=None if "tpot_slo_ms" in entry else tpot,
        case=case,
    )
    write_profile_file(profile, tmp / "melange.json")
    dist = config["workload_distribution"]
    total = sum(map(sum, dist))
    buckets = [(edges[0][i], edges[1][j], w / total) for i, row in enumerate(dist) for j, w in enumerate(row) if w > 0]
    graph = parse_graph(_spec(buckets, tpot_ms=tpot), CAT)
    cluster = _cluster({devices[g]: float(v["cost"]) for g, v in config["gpu_info"].items()})
    rate = float(config["total_request_rate"])
    opts = PlanOptions(rate_per_s=rate * total, max_utilisation=1.0, gap=0.0, baselines=False, profiles_dir=tmp)
    plan = plan_spec(graph, cluster, opts, CAT)
    load = [[rate * w for w in row] for row in dist]
    tputs = {g: v["tputs"] for g, v in config["gpu_info"].items()}
    cost = {g: float(v["cost"]) for g, v in config["gpu_info"].items()}
    return plan, compile_graph(graph, CAT)[1], load_profiles(tmp, CAT), cluster, (tputs, cost, load)


# ----------------------------------------------------------------------------- cost against references


def test_slicing_is_strictly_cheaper_than_any_single_type_and_than_whole_buckets(tmp_path):
    """Short prompts are cheapest per request on the small GPU, long ones on the big one. By hand (rate 10 req/s,
    80% short): small only ⌈8/4 + 2/0.2⌉ = 12 × $1.01 = $12.12; big only ⌈8/10 + 2/5⌉ = 2 × $3.67 = $7.34; whole
    buckets (Mélange, slice factor 1) short→small, long→big = 2 × 1.01 + 3.67 = $5.69; split: one big GPU takes the
    long requests (0.4) and 75% of the short (0.6), one small GPU the rest (2 req/s ÷ 4 = 0.5): $4.68."""
    plan, granular, store, cluster, (tputs, cost, load) = _plan_melange_file(
        TINY, None, {"Small": "a10g", "Big": "a100-80g"}, ([100, 2000], [100]), 100.0, tmp_path
    )
    assert plan.feasible, plan.reason
    single = {
        g: cost[g] * math.ceil(sum(load[i][0] / tputs[g][i][0] for i in range(2)) - 1e-9) for g in ("Small", "Big")
    }
    assert single == pytest.approx({"Small": 12.12, "Big": 7.34})
    assert _melange_whole_buckets(tputs, cost, load) == pytest.approx(5.69)
    assert _sliced_optimum(tputs, cost, load) == pytest.approx(4.68)
    assert _gpu_cost(plan) == pytest.approx(4.68)
    assert _gpu_cost(plan) < min(single.values())
    assert {d.device: d.allocated for d in plan.devices if d.device_class != "cpu"} == {"a10g": 1, "a100-80g": 1}
    dec = plan.op("chat.decode")
    assert {s.device for s in dec.slices} == {"a10g", "a100-80g"} and dec.estimate_source == "profile:melange.json"
    short_on_big = sum(s.fraction for s in dec.slices if s.input_tokens == 100 and s.device == "a100-80g")
    assert short_on_big <= 0.75 + 1e-6  # one big GPU cannot take more of the short requests
    assert check_plan(plan, granular, CAT, cluster, store) == []


def test_the_checker_rejects_overloaded_or_unserved_slices(tmp_path):
    plan, granular, store, cluster, _ = _plan_melange_file(
        TINY, None, {"Small": "a10g", "Big": "a100-80g"}, ([100, 2000], [100]), 100.0, tmp_path
    )
    short = [i for i, s in enumerate(plan.op("chat.decode").slices) if s.input_tokens == 100]
    over = plan.model_copy(deep=True)
    for o in over.ops:
        if o.slices:  # the small GPU's slice moved to the big one: one big GPU cannot carry it all
            for i in short:
                o.slices[i].device = "a100-80g"
                o.slices[i].rate_per_device = 10.0
                o.slices[i].devices = o.slices[i].requests_per_s / 10.0
                o.slices[i].latency_ms = next(s for s in o.slices if s.device == "a100-80g").latency_ms
    assert any("a100-80g: 1 allocated but the ops need 2" in v for v in check_plan(over, granular, CAT, cluster, store))
    unserved = plan.model_copy(deep=True)
    for o in unserved.ops:
        o.slices = [s for s in o.slices if s.input_tokens != 2000]
    assert any("bucket (2000, 100) served 0.000000" in v for v in check_plan(unserved, granular, CAT, cluster, store))


@pytest.mark.skipif(not TOY.exists(), reason="../shared/reference/melange/toy_inputs.json (Mélange's toy) absent")
@pytest.mark.parametrize(
    ("case", "devices"),
    [
        ("toy_example_json", {"A10G": "a10g", "A100-80GB": "a100-80g"}),
        ("toy_v0_main_py", {"A10G": "a10g", "A100": "a100-80g"}),
    ],
)
def test_on_melanges_toy_inputs_hetagent_costs_no_more_than_melange(tmp_path, case, devices):
    """The toy states no bucket sizes or SLO (250/1000 tokens and 120 ms assumed; they change no cost)."""
    plan, granular, store, cluster, (tputs, cost, load) = _plan_melange_file(
        TOY, case, devices, ([250, 1000], [250, 1000]), 120.0, tmp_path
    )
    assert plan.feasible, plan.reason
    reference = _melange_whole_buckets(tputs, cost, load)
    assert _gpu_cost(plan) <= reference + 1e-9
    assert _gpu_cost(plan) == pytest.approx(_sliced_optimum(tputs, cost, load, top=10))
    assert check_plan(plan, granular, CAT, cluster, store) == []


@pytest.mark.skipif(not TOY.exists(), reason="../shared/reference/melange/toy_inputs.json (Mélange's toy) absent")
def test_the_bench_reference_is_melanges_problem():
    """bench/melange_compare.py's re-implementation of Mélange's ILP agrees with enumeration on both toys."""
    spec = importlib.util.spec_from_file_location("melange_compare", ROOT / "bench" / "melange_compare.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for entry in json.loads(TOY.read_text()).values():
        config = entry["config"]
        rate = float(config["total_request_rate"])
        load = [[rate * w for w in row] for row in config["workload_distribution"]]
        tputs = {g: v["tputs"] for g, v in config["gpu_info"].items()}
        cost = {g: float(v["cost"]) for g, v in config["gpu_info"].items()}
        usd, counts, _ = bench.melange_reference(config)
        assert usd == pytest.approx(_melange_whole_buckets(tputs, cost, load))
        assert usd == pytest.approx(sum(cost[g] * n for g, n in counts.items()))


# ----------------------------------------------------------------------------- the roofline, latency targets


L4_A100 = ClusterInventory(
    name="l4-a100",
    devices=[
        DevicePool(type="l4", count=64, per_node=8),
        DevicePool(type="a100-80g", count=64, per_node=8),
        DevicePool(type=HOST, count=8, per_node=2),
    ],
)
MIX = [(128, 64, 0.6), (2048, 256, 0.3), (3000, 1000, 0.1)]


def test_roofline_slicing_meets_a_binding_latency_target():
    """Without a profile every slice comes from the roofline; a tighter SLA than the cheapest plan's latency
    moves slices to faster options, costs no less, and the checker finds every path within it."""
    graph = parse_graph(_spec(MIX, tpot_ms=None), CAT)
    granular = compile_graph(graph, CAT)[1]
    loose = plan_spec(graph, L4_A100, PlanOptions(rate_per_s=4.0, gap=0.0, baselines=False), CAT)
    assert loose.feasible and check_plan(loose, granular, CAT, L4_A100) == []
    assert {s.estimate_source for s in loose.op("chat.decode").slices} == {"roofline"}
    fastest = min(
        o.prefill_ms + o.decode_ms
        for o in request_options(
            granular.op("chat.prefill"),
            granular.op("chat.decode"),
            CAT.device("a100-80g"),
            CAT,
            input_tokens=3000,
            output_tokens=1000,
            tpot_ms=None,
            per_node=8,
        )
    )
    sla = (loose.predicted_e2e_ms + fastest) / 2  # between the cheapest plan and the fastest long request
    assert sla < loose.predicted_e2e_ms
    tight = plan_spec(graph, L4_A100, PlanOptions(rate_per_s=4.0, sla_ms=sla, gap=0.0, baselines=False), CAT)
    assert tight.feasible, tight.reason
    assert tight.predicted_e2e_ms <= sla * (1 + 1e-6)
    assert _gpu_cost(tight) >= _gpu_cost(loose) - 1e-9
    assert check_plan(tight, granular, CAT, L4_A100) == []
    assert tight.op("chat.decode").predicted_latency_ms == pytest.approx(
        max(s.latency_ms for s in tight.op("chat.decode").slices)
    )


def test_a_tpot_target_excludes_slower_options():
    free = plan_spec(parse_graph(_spec(MIX, tpot_ms=None), CAT), L4_A100, PlanOptions(rate_per_s=2.0), CAT)
    assert any(s.latency_ms / s.output_tokens > 25.0 for s in free.op("chat.decode").slices)  # the target binds
    plan = plan_spec(parse_graph(_spec(MIX, tpot_ms=25.0), CAT), L4_A100, PlanOptions(rate_per_s=2.0), CAT)
    assert plan.feasible, plan.reason
    for s in plan.op("chat.decode").slices:
        assert s.latency_ms / s.output_tokens <= 25.0 + 1e-9
    assert _gpu_cost(plan) >= _gpu_cost(free) - 1e-9


def test_slicing_needs_an_accelerator():
    graph = parse_graph(_spec([(64, 16, 1.0)], tpot_ms=None, model="tiny-llama"), CAT)
    with pytest.raises(PlanningError, match="node 'chat': no accelerator .* uses accelerators only"):
        plan_spec(graph, load_cluster("local", CAT), PlanOptions(rate_per_s=0.1, baselines=False), CAT)


def test_single_type_baselines_of_a_sliced_graph(tmp_path):
    """The homogeneous baselines of the same sliced graph put every bucket on one type: never cheaper."""
    graph = parse_graph(_spec(MIX, tpot_ms=None), CAT)
    plan = plan_spec(graph, L4_A100, PlanOptions(rate_per_s=4.0), CAT)
    assert plan.feasible
    for b in plan.baselines:
        if b.feasible and b.name in ("homogeneous:l4", "homogeneous:a100-80g"):
            gpu = {d: n for d, n in b.devices.items() if d != HOST}
            assert set(gpu) == {b.name.split(":")[1]}
            assert sum(CAT.device(d).price_usd_per_h * n for d, n in gpu.items()) >= _gpu_cost(plan) * (1 - 6e-3)


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("buckets", "path", "message"),
    [
        ([(100, 50, 0.5), (1000, 50, 0.4)], "spec.nodes[0].traffic.buckets", "node 'chat': bucket shares sum to 0.9"),
        ([(100, 50, 0.5), (100, 50, 0.5)], "spec.nodes[0].traffic.buckets[1]", "node 'chat': bucket (100, 50) tokens"),
        ([(100, 50, 1.5)], "spec.nodes[0].traffic.buckets[0].share", "less than or equal to 1"),
        ([(0, 50, 1.0)], "spec.nodes[0].traffic.buckets[0].input_tokens", "greater than or equal to 1"),
        ([], "spec.nodes[0].traffic.buckets", "at least 1 item"),
    ],
)
def test_invalid_distributions_are_spec_errors_naming_the_node(buckets, path, message):
    with pytest.raises(SpecError) as err:
        parse_graph(_spec(buckets), CAT)
    assert any(p == path and message in reason for p, reason in err.value.problems), err.value.problems


def test_the_distribution_reaches_the_granular_ops():
    graph = parse_graph(_spec([(100, 50, 0.25), (1000, 200, 0.75)], tpot_ms=40.0), CAT)
    granular = compile_graph(graph, CAT)[1]
    for kind in ("prefill", "decode"):
        op = granular.op(f"chat.{kind}")
        assert op.params["traffic"] == [[100, 50, 0.25], [1000, 200, 0.75]] and op.params["tpot_ms"] == 40.0
    assert "traffic" not in granular.op("chat.tokenize").params


def test_the_runtime_refuses_a_plan_sliced_across_device_types(tmp_path):
    from workers.units import LayoutError, build_layout

    plan, *_ = _plan_melange_file(
        TINY, None, {"Small": "a10g", "Big": "a100-80g"}, ([100, 2000], [100]), 100.0, tmp_path
    )
    graph = parse_graph(_spec([(100, 100, 0.8), (2000, 100, 0.2)]), CAT)
    with pytest.raises(LayoutError, match=r"chat: the plan slices its requests by size across a100-80g, a10g"):
        build_layout(graph, plan)
