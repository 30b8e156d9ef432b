"""Online calibration: measured op latencies pull the cost model's predictions toward them."""

import pytest

from compiler.spec import parse_graph
from costmodels.catalog import load_catalog, load_cluster
from costmodels.online import Observation, observations_from_records, refit
from planner.pipeline import plan_spec
from planner.place import PlanOptions

CAT = load_catalog()
GRAPH = parse_graph(
    {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "AgentGraph",
        "metadata": {"name": "c"},
        "spec": {
            "sla": {"e2e_ms": 600000},
            "inputs": {"q": {"type": "string"}},
            "nodes": [
                {
                    "name": "answer",
                    "kind": "llm",
                    "model": "qwen2.5-0.5b-instruct",
                    "prompt": "{{ inputs.q }}",
                    "expected": {"input_tokens": 256, "output_tokens": 64},
                }
            ],
        },
    },
    CAT,
)


def _llm_ms(catalog) -> float:
    plan = plan_spec(GRAPH, load_cluster("local", catalog), PlanOptions(rate_per_s=0.01, baselines=False), catalog)
    assert plan.feasible
    return sum(o.predicted_latency_ms for o in plan.ops if o.source_node == "answer")


def test_refit_converges_on_measured_latency():
    before = _llm_ms(CAT)
    measured = 2.0 * before  # the hardware turns out twice as slow as the catalog says
    catalog = CAT
    for _ in range(6):  # half a step per refit in log space: converges geometrically
        predicted = _llm_ms(catalog)
        obs = [Observation("local-cpu", "llm", measured * (1 + 0.01 * (i % 3)), predicted) for i in range(20)]
        catalog, applied = refit(catalog, obs)
    after = _llm_ms(catalog)
    assert after == pytest.approx(measured, rel=0.12), (before, after, measured)
    eff0, eff1 = CAT.hardware["local-cpu"].efficiency, catalog.hardware["local-cpu"].efficiency
    assert eff1.memory < eff0.memory and eff1.compute < eff0.compute
    assert catalog.hardware["l4"] == CAT.hardware["l4"]  # other devices untouched


def test_stand_ins_noise_and_thin_evidence_change_nothing():
    predicted = _llm_ms(CAT)
    stand_in = [Observation("local-cpu", "llm", 3 * predicted, predicted, stand_in=True)] * 50
    noise = [Observation("local-cpu", "llm", 1.05 * predicted, predicted)] * 50
    thin = [Observation("local-cpu", "llm", 3 * predicted, predicted)] * 5
    declared = [Observation("local-cpu", "tool", 900.0, 300.0)] * 50  # tool latency is the spec's, not the device's
    for obs in (stand_in, noise, thin, declared):
        catalog, applied = refit(CAT, obs)
        assert applied == {} and catalog is CAT


def test_runtime_records_mark_stand_in_models():
    records = [
        {
            "device": "local-cpu",
            "kind": "llm",
            "measured_ms": 800.0,
            "predicted_ms": 17000.0,
            "detail": {"model_requested": "qwen2.5-0.5b-instruct", "model_served": ".hetagent/models/tiny-llama"},
        },
        {"device": "local-cpu", "kind": "vector_search", "measured_ms": 2.0, "predicted_ms": 1.0, "detail": {}},
    ]
    obs = observations_from_records(records)
    assert [o.stand_in for o in obs] == [True, False]


def test_daemon_replans_with_the_refitted_catalog(tmp_path):
    import yaml

    from orchestrator.service import Service
    from orchestrator.settings import Settings

    service = Service(Settings(data_dir=tmp_path, control_enabled=False))
    gid = service.create_graph(yaml.safe_load(yaml.safe_dump(GRAPH.model_dump(mode="json", exclude_none=True))))["id"]
    first = service.create_plan(gid, None, 0.01)["plan"]
    llm_ms = sum(o["predicted_latency_ms"] for o in first["ops"] if o["source_node"] == "answer")
    service.control.observations.extend(Observation("local-cpu", "llm", 3 * llm_ms, llm_ms) for _ in range(20))
    applied = service.control.calibrate()
    assert set(applied) == {"local-cpu"} and not service.control.observations
    second = service.create_plan(gid, None, 0.01)["plan"]
    llm_ms2 = sum(o["predicted_latency_ms"] for o in second["ops"] if o["source_node"] == "answer")
    assert 1.4 * llm_ms < llm_ms2 < 3.1 * llm_ms  # moved toward the measured 3x, by half a step in log space
    service.stop()


def test_refits_do_not_compound_while_a_deployment_keeps_its_plan(tmp_path):
    """Runs of one plan keep carrying that plan's prediction after a refit: each pass must compare them
    with what the refitted catalog predicts, so the correction converges on the measured 3x instead of
    multiplying another √3 in at every pass (3^4 = 81x after eight passes, as the daemon did)."""
    import yaml

    from orchestrator.service import Service
    from orchestrator.settings import Settings

    service = Service(Settings(data_dir=tmp_path, control_enabled=False))
    gid = service.create_graph(yaml.safe_load(yaml.safe_dump(GRAPH.model_dump(mode="json", exclude_none=True))))["id"]
    first = service.create_plan(gid, None, 0.01)
    llm_ms = sum(o["predicted_latency_ms"] for o in first["plan"]["ops"] if o["source_node"] == "answer")
    records = [
        {"device": "local-cpu", "kind": "llm", "measured_ms": 3 * llm_ms, "predicted_ms": llm_ms, "detail": {}}
    ] * 20
    for _ in range(8):  # the deployment still runs the first plan: its records carry its prediction
        service.control.observe(records, first["id"])
        service.control.calibrate()
    again = service.create_plan(gid, None, 0.01)
    llm_ms_again = sum(o["predicted_latency_ms"] for o in again["plan"]["ops"] if o["source_node"] == "answer")
    assert 2.2 * llm_ms < llm_ms_again < 3.3 * llm_ms, llm_ms_again / llm_ms
    # the new plan already predicts the measured latency: its own runs are no reason to refit
    measured_now = [{**r, "measured_ms": llm_ms_again, "predicted_ms": llm_ms_again} for r in records]
    service.control.observe(measured_now, again["id"])
    assert service.control.calibrate() == {}
    service.stop()


def test_the_refits_remembered_per_plan_are_bounded(monkeypatch, tmp_path):
    """A daemon that makes plans all day must not keep a dict per plan for ever (seen as memory growth in
    bench/soak.py): past the bound, the oldest plan's entry goes first."""
    from orchestrator import control
    from orchestrator.service import Service
    from orchestrator.settings import Settings

    monkeypatch.setattr(control, "MAX_PLAN_SLOWDOWNS", 50)
    service = Service(Settings(data_dir=tmp_path, control_enabled=False))
    for i in range(120):
        service.control.plan_made(f"p{i}", {"local-cpu": 1.0 + i})
    kept = service.control.plan_slowdown
    assert len(kept) == 50 and "p0" not in kept and kept["p119"] == {"local-cpu": 120.0} and "p70" in kept
    service.stop()
