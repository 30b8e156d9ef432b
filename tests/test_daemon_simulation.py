"""The daemon shows what the simulator found: POST /v1/graphs/{id}/plans with arrivals and a percentile plans
queueing-aware (orchestrator/queueing_plan.py) and stores the plan's simulation; GET /v1/plans/{id}/simulation
returns the distribution, simulating a plan made without arrivals on the first request.

The app runs in-process (FastAPI's TestClient) over a real SQLite database in a temporary directory; no
deployment is made, so no Ray. Each plan's numbers are checked against the simulator called here directly on
the stored plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from compiler.ir import compile_graph
from compiler.spec import parse_graph
from costmodels.catalog import load_catalog, load_cluster
from orchestrator.app import create_app
from orchestrator.auth import create_key
from orchestrator.service import Service
from orchestrator.settings import Settings
from planner.pipeline import apply_model_overrides
from planner.plan import Plan
from simulator import SimOptions, arrival_times, simulate

ROOT = Path(__file__).resolve().parents[1]
RAG = yaml.safe_load((ROOT / "examples" / "graphs" / "rag_agent.yaml").read_text())  # SLA 3000 ms at p99

# One 50 ms host call per run: planned at 40 runs/s on service times alone, Poisson arrivals keep its p99 well
# within the 400 ms SLA (tests/test_queueing_plan.py uses the same graph at a tighter SLA).
ONE_OP = {
    "apiVersion": "hetagent.dev/v1alpha1",
    "kind": "AgentGraph",
    "metadata": {"name": "one-op"},
    "spec": {
        "sla": {"e2e_ms": 400, "percentile": 95},
        "inputs": {"text": {"type": "string", "max_chars": 4000}},
        "nodes": [
            {
                "name": "clean",
                "kind": "transform",
                "function": "workers.transforms:redact_pii",
                "inputs": {"text": "{{ inputs.text }}"},
                "expected": {"latency_ms": 50},
            }
        ],
        "outputs": {"out": "{{ nodes.clean.output }}"},
    },
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("sim"), control_enabled=False)
    service = Service(settings)
    _, key = create_key(service.store.sessions, "write")
    with TestClient(create_app(settings, service)) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


def _graph(c: TestClient, doc: dict) -> str:
    r = c.post("/v1/graphs", json=doc)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _direct(doc: dict, stored_plan: dict, arrivals: str, seed: int, runs: int, percentile: float):
    """The simulator on the stored plan, called here: what the daemon's numbers must equal."""
    catalog = load_catalog()
    plan = Plan.model_validate(stored_plan)
    spec = parse_graph(doc, catalog)
    _, granular = compile_graph(apply_model_overrides(spec, load_cluster(plan.cluster, catalog), catalog), catalog)
    times = arrival_times(arrivals, plan.rate_per_s, runs / plan.rate_per_s, seed)
    return simulate(plan, granular, catalog, times, SimOptions(seed=seed, sla_percentile=percentile))


def _check_distribution(body: dict) -> None:
    """Shape of any simulation body: quantiles in order, the histogram covers every run."""
    h = body["histogram"]
    assert sum(h["counts"]) == body["completed"] == body["runs"] > 0
    assert len(h["edges_ms"]) == len(h["counts"]) + 1
    assert h["edges_ms"] == sorted(h["edges_ms"])
    assert h["edges_ms"][0] <= body["p50_ms"] <= body["p95_ms"] <= body["p99_ms"] <= h["edges_ms"][-1]
    if body["p99_9_ms"] is not None:
        assert body["p99_ms"] <= body["p99_9_ms"] <= h["edges_ms"][-1]
    if body["ttft_p50_ms"] is not None:
        assert body["ttft_p50_ms"] <= body["ttft_p95_ms"] <= body["ttft_p99_ms"] <= body["p99_ms"]
    assert 0 <= body["attainment"] <= 1
    assert body["sla_met"] == (body["attainment"] >= body["percentile"] / 100)
    assert body["pools"] and all(p["utilisation"] >= 0 and p["mean_queue"] >= 0 for p in body["pools"].values())
    assert body["usd_per_1k_runs"] is not None and body["usd_per_1k_runs"] > 0


def _same_as(body: dict, r) -> None:
    assert (body["runs"], body["completed"]) == (r.runs, r.completed)
    assert (body["p50_ms"], body["p95_ms"], body["p99_ms"], body["p99_9_ms"]) == (
        r.p50_ms,
        r.p95_ms,
        r.p99_ms,
        r.p99_9_ms,
    )
    assert (body["ttft_p50_ms"], body["ttft_p99_ms"]) == (r.ttft_p50_ms, r.ttft_p99_ms)
    assert (body["attainment"], body["sla_met"], body["usd_per_1k_runs"]) == (
        r.attainment,
        r.sla_met,
        r.usd_per_1k_runs,
    )
    assert r.e2e_histogram is not None
    assert body["histogram"] == r.e2e_histogram.model_dump()
    assert {n: (p["replicas"], p["utilisation"], p["mean_queue"]) for n, p in body["pools"].items()} == {
        n: (o.replicas, o.utilisation, o.mean_queue) for n, o in r.ops.items()
    }


def test_bursty_arrivals_at_p99_plan_and_store_the_simulation(client):
    gid = _graph(client, RAG)
    req = {"rate_per_s": 5, "cluster": "homogeneous_h100", "arrivals": "bursty:2", "percentile": 99, "seed": 3}
    r = client.post(f"/v1/graphs/{gid}/plans", json={**req, "simulation_runs": 1000})
    assert r.status_code == 201, r.text
    out = r.json()
    plan, s = out["plan"], out["plan"]["simulation"]
    assert plan["feasible"], plan["reason"]
    assert (s["arrivals"], s["percentile"], s["seed"], s["on_request"]) == ("bursty:2", 99, 3, False)
    assert s["sla_met"] and s["simulated_attainment"] >= 0.99 and s["simulated_p99_ms"] <= plan["sla_ms"] == 3000
    assert out["request"] | req == out["request"] and out["request"]["simulation_runs"] == 1000

    g = client.get(f"/v1/plans/{out['id']}/simulation")
    assert g.status_code == 200, g.text
    body = g.json()
    assert body["source"] == "stored" and body["plan_id"] == out["id"] and body["graph_id"] == gid
    assert (body["arrivals"], body["percentile"], body["seed"], body["rate_per_s"]) == ("bursty:2", 99, 3, 5)
    assert body["p99_ms"] == s["simulated_p99_ms"] <= body["sla_ms"] == 3000 and body["plan_feasible"]
    assert body["ttft_p50_ms"] is not None  # an LLM graph: time to first token is simulated
    assert set(body["pools"]) == {o["name"] for o in plan["ops"]}
    _check_distribution(body)
    _same_as(body, _direct(RAG, plan, "bursty:2", seed=3, runs=1000, percentile=99))


def test_a_plan_made_without_arrivals_is_simulated_on_request_once(client):
    gid = _graph(client, ONE_OP)
    r = client.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": 40, "cluster": "homogeneous_b200"})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["plan"]["feasible"] and out["plan"]["simulation"] is None  # plain planning: not simulated
    assert set(out["request"]) == {"sla_ms", "rate_per_s", "ttft_ms", "cluster"}

    first = client.get(f"/v1/plans/{out['id']}/simulation")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["source"] == "computed_on_request"
    assert (body["arrivals"], body["seed"], body["percentile"], body["rate_per_s"]) == ("poisson", 7, 95, 40)
    assert body["ttft_p50_ms"] is None  # no LLM
    _check_distribution(body)
    assert body["p99_9_ms"] is not None  # 2,000 runs
    _same_as(body, _direct(ONE_OP, out["plan"], "poisson", seed=7, runs=2000, percentile=95))

    second = client.get(f"/v1/plans/{out['id']}/simulation")
    assert second.status_code == 200 and second.json() == body
    # stored with the plan: the plan document now carries it
    again = client.get(f"/v1/graphs/{gid}/plans/{out['id']}").json()["plan"]["simulation"]
    assert again["on_request"] and again["simulated_p99_ms"] == body["p99_ms"] and again["iterations"] == []


def test_an_infeasible_plan_has_nothing_to_simulate(client):
    gid = _graph(client, ONE_OP)
    r = client.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": 40, "cluster": "homogeneous_b200", "sla_ms": 10})
    assert r.status_code == 201 and not r.json()["plan"]["feasible"]
    g = client.get(f"/v1/plans/{r.json()['id']}/simulation")
    assert g.status_code == 409 and g.headers["content-type"].startswith("application/problem+json")
    assert g.json()["title"] == "nothing to simulate" and "infeasible" in g.json()["detail"]


def test_a_plan_no_capacity_rescues_keeps_the_simulation_of_its_best_iteration(client):
    """50 ms of service leaves 10 ms for queueing at p99 under CV-3 bursts: the loop gives up, and says how close."""
    gid = _graph(client, ONE_OP)
    req = {"rate_per_s": 40, "cluster": "homogeneous_b200", "sla_ms": 60, "arrivals": "bursty:3", "percentile": 99}
    r = client.post(f"/v1/graphs/{gid}/plans", json={**req, "simulation_runs": 500})
    assert r.status_code == 201, r.text
    plan = r.json()["plan"]
    assert not plan["feasible"] and "best simulated attainment" in plan["reason"]
    g = client.get(f"/v1/plans/{r.json()['id']}/simulation")
    assert g.status_code == 200, g.text
    body = g.json()
    assert body["source"] == "stored" and not body["plan_feasible"] and not body["sla_met"]
    assert body["attainment"] < 0.99 and body["p99_ms"] > 60 and f"{body['attainment']:.1%}" in plan["reason"]
    _check_distribution(body)


def test_a_plan_the_simulator_refuses_is_a_409(client):
    """Size buckets make the planner slice the LLM's requests by size, which the simulator does not model."""
    expected = {"expected": {"input_tokens": 50, "output_tokens": 10}}
    mix = [(128, 64, 0.6), (2048, 256, 0.3), (3000, 1000, 0.1)]
    buckets = [{"input_tokens": i, "output_tokens": o, "share": s} for i, o, s in mix]
    node = {"name": "chat", "kind": "llm", "model": "llama-2-7b", "traffic": {"buckets": buckets}, **expected}
    gid = _graph(client, {**ONE_OP, "metadata": {"name": "sliced"}, "spec": {"sla": {"e2e_ms": 1e7}, "nodes": [node]}})
    r = client.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": 4, "cluster": "homogeneous_h100"})
    assert r.status_code == 201 and r.json()["plan"]["feasible"], r.text
    assert any(o["slices"] for o in r.json()["plan"]["ops"])
    g = client.get(f"/v1/plans/{r.json()['id']}/simulation")
    assert g.status_code == 409 and g.headers["content-type"].startswith("application/problem+json")
    assert g.json()["title"] == "cannot simulate this plan" and "slices requests by size" in g.json()["detail"]
    # queueing-aware planning cannot check such a plan either: the request is refused, not planned unchecked
    q = client.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": 4, "cluster": "homogeneous_h100", "percentile": 90})
    assert q.status_code == 422 and "slices requests by size" in q.json()["detail"], q.text


def test_unknown_plan_is_404(client):
    g = client.get("/v1/plans/p_0000000000000000/simulation")
    assert g.status_code == 404 and g.headers["content-type"].startswith("application/problem+json")
    assert "p_0000000000000000" in g.json()["detail"]


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ({"arrivals": "trace.csv"}, "arrivals", "CLI only"),
        ({"arrivals": "/etc/passwd"}, "arrivals", "poisson or bursty:CV"),
        ({"arrivals": "bursty:fast"}, "arrivals", "needs a number"),
        ({"arrivals": "bursty:0"}, "arrivals", "CV > 0"),
        ({"arrivals": "bursty:1e9"}, "arrivals", "CV ≤ 20"),
        ({"arrivals": "poisson", "percentile": 100}, "percentile", "99.9"),
        ({"percentile": 12}, "percentile", "50"),
        ({"arrivals": "poisson", "simulation_runs": 5}, "simulation_runs", "100"),
        ({"seed": 3}, "body", "need arrivals or percentile"),
    ],
)
def test_bad_simulation_input_is_a_422_naming_the_field(client, extra, field, reason):
    gid = _graph(client, ONE_OP)
    r = client.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": 40, **extra})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    paths = [e["path"] for e in problem["errors"]]
    assert any(p.split(".")[-1] == field for p in paths), paths
    assert reason in problem["detail"], problem["detail"]


def test_the_control_loops_replan_keeps_the_arrival_process_it_was_planned_under(tmp_path):
    """A deployment planned under bursty arrivals at p99 is re-planned (a new rate) under the same arrivals and
    percentile, so its plan stays checked by the simulator; one planned on service times stays so."""
    service = Service(Settings(data_dir=tmp_path, control_enabled=False))
    try:
        gid = service.create_graph(ONE_OP)["id"]
        queueing = {"arrivals": "bursty:2", "percentile": 99, "seed": 5, "simulation_runs": None}
        bursty = service.create_plan(gid, None, 2.0, "homogeneous_h100", None, queueing)
        assert bursty["plan"]["simulation"]["arrivals"] == "bursty:2"
        again = service._replan(gid, bursty["request"], 4.0)
        assert again["request"]["arrivals"] == "bursty:2" and again["request"]["percentile"] == 99
        sim = again["plan"]["simulation"]
        assert (sim["arrivals"], sim["percentile"], sim["seed"], again["plan"]["rate_per_s"]) == (
            "bursty:2",
            99,
            5,
            4.0,
        )
        assert again["plan"]["cluster"] == "homogeneous_h100"  # the deployed plan's, not the daemon's (local)
        plain = service.create_plan(gid, None, 2.0, "homogeneous_h100")
        replanned = service._replan(gid, plain["request"], 4.0)
        assert replanned["plan"]["simulation"] is None and "arrivals" not in replanned["request"]
    finally:
        service.stop()
