"""End to end: example specs through compiler, cost models and ILP; the CLI; the plan JSON contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from compiler.ir import compile_graph
from compiler.spec import SpecError, load_graph, parse_graph
from costmodels.catalog import load_catalog, load_cluster
from planner.evaluate import check_plan
from planner.pipeline import apply_model_overrides, plan_spec
from planner.place import PlanOptions
from planner.plan import Plan, plan_json_schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples" / "graphs").glob("*.yaml"))
CAT = load_catalog()
# runs/s each example is planned at on the mixed fleet (the long-context coding agent is heavier)
FLEET_RATE = {"coding_agent": 1.0}


def _hetagent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_four_examples_exist():
    assert {p.stem for p in EXAMPLES} >= {"rag_agent", "deep_research", "voice_assistant", "coding_agent"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_plans_on_mixed_fleet_and_passes_the_evaluator(path):
    graph = load_graph(path, CAT)
    cluster = load_cluster("mixed_fleet", CAT)
    plan = plan_spec(graph, cluster, PlanOptions(rate_per_s=FLEET_RATE.get(path.stem, 5.0), gap=0), CAT)
    assert plan.feasible, plan.reason
    _, granular = compile_graph(graph, CAT)
    assert check_plan(plan, granular, CAT, cluster) == []
    assert plan.predicted_e2e_ms <= graph.spec.sla.e2e_ms * (1 + 1e-6)
    # every op has a lowered execution config, model ops an engine
    for op in plan.ops:
        assert op.execution, op.name
    assert any(e.get("engine") or e.get("engine_args") or e.get("kind") for e in plan.engines)
    # the baselines include every accelerator type and the greedy heuristic, and no feasible baseline
    # that fits the cluster's inventory is cheaper than the optimum
    names = {b.name for b in plan.baselines}
    assert "greedy-fastest" in names and "homogeneous:h100-sxm" in names and "homogeneous:b200" in names
    greedy = next(b for b in plan.baselines if b.name == "greedy-fastest")
    if greedy.feasible:
        assert greedy.tco_usd_per_hour >= plan.tco_usd_per_hour * (1 - 1e-6)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_plans_on_local(path):
    """This machine's CPU: the spec SLA is out of reach for 7B+ models; the answer names the tightest SLA,
    and planning at that SLA succeeds."""
    graph = load_graph(path, CAT)
    cluster = load_cluster("local", CAT)
    opts = PlanOptions(rate_per_s=1e-5, baselines=False)
    plan = plan_spec(graph, cluster, opts, CAT)
    if not plan.feasible:
        assert plan.tightest_sla_ms is not None or plan.max_rate_per_s is not None, plan.reason
        if plan.tightest_sla_ms is not None:
            assert plan.tightest_sla_ms > graph.spec.sla.e2e_ms
            relaxed = PlanOptions(
                rate_per_s=1e-5,
                sla_ms=plan.tightest_sla_ms * 1.01,
                ttft_ms=plan.tightest_sla_ms * 1.01,
                baselines=False,
            )
            plan = plan_spec(graph, cluster, relaxed, CAT)
    assert plan.feasible, plan.reason
    assert {o.device for o in plan.ops} == {"local-cpu"}
    # the local cluster serves every LLM as its small stand-in
    assert {o.model for o in plan.ops if o.kind in ("prefill", "decode")} == {"qwen2.5-0.5b-instruct"}
    _, granular = compile_graph(apply_model_overrides(graph, cluster, CAT), CAT)
    assert check_plan(plan, granular, CAT, cluster) == []


def test_plan_json_contract_and_schema():
    graph = load_graph(ROOT / "examples/graphs/rag_agent.yaml", CAT)
    plan = plan_spec(graph, load_cluster("mixed_fleet", CAT), PlanOptions(rate_per_s=5.0), CAT)
    doc = json.loads(plan.model_dump_json())
    jsonschema.validate(doc, plan_json_schema())
    for key in (
        "feasible",
        "sla_ms",
        "rate_per_s",
        "predicted_e2e_ms",
        "tco_usd_per_hour",
        "usd_per_1k_runs",
        "solver",
        "solve_seconds",
        "binding_constraints",
        "ops",
        "edges",
        "baselines",
    ):
        assert key in doc
    for op in doc["ops"]:
        assert {"name", "kind", "source_node", "device", "replicas", "predicted_latency_ms"} <= op.keys()
    for e in doc["edges"]:
        assert {"src", "dst", "bytes", "transfer_ms"} <= e.keys()
        if e["src_device"] == e["dst_device"]:
            assert e["transfer_ms"] == 0
    for b in doc["baselines"]:
        assert {"name", "feasible", "tco_usd_per_hour", "predicted_e2e_ms"} <= b.keys()
    # $ per 1,000 runs follows from TCO and rate (hand arithmetic: $/h ÷ runs/h × 1000)
    assert doc["usd_per_1k_runs"] == pytest.approx(doc["tco_usd_per_hour"] / (5.0 * 3600) * 1000, rel=1e-4)
    # the round trip through the model is lossless (what the runtime and daemon consume)
    assert Plan.model_validate(doc) == plan
    # the shipped schema file is the generated one
    shipped = json.loads((ROOT / "docs" / "plan.schema.json").read_text())
    assert shipped == plan_json_schema()


def test_prefill_decode_split_sends_the_kv_cache_over_the_link():
    """deep_research on the mixed fleet: when prefill and decode of one call land on different tiers, the edge
    carries the KV cache (2·layers·kv_heads·head_dim·2 B per prompt token) and costs bytes / link time."""
    graph = load_graph(ROOT / "examples/graphs/deep_research.yaml", CAT)
    plan = plan_spec(graph, load_cluster("mixed_fleet", CAT), PlanOptions(rate_per_s=5.0), CAT)
    kv_edges = [e for e in plan.edges if e.src.endswith(".prefill") and e.dst.endswith(".decode")]
    assert kv_edges
    for e in kv_edges:
        node = graph.node(e.src.split(".")[0])
        if node.model == "llama-3.1-8b-instruct":  # 32 layers, 8 KV heads, head_dim 128, bf16
            assert e.bytes == 32 * 8 * 128 * 2 * 2 * node.expected.input_tokens
        if e.src_device != e.dst_device:
            assert e.transfer_ms > 0


def test_cli_validate_compile_plan(tmp_path):
    r = _hetagent("validate", "examples/graphs/rag_agent.yaml")
    assert r.returncode == 0 and "valid" in r.stdout
    r = _hetagent("compile", "examples/graphs/rag_agent.yaml", "--emit", "mlir")
    assert r.returncode == 0 and "agent.llm" in r.stdout and "agent.graph" in r.stdout
    r = _hetagent("compile", "examples/graphs/rag_agent.yaml", "--emit", "granular")
    assert r.returncode == 0 and "granular.prefill" in r.stdout and "granular.decode" in r.stdout
    out = tmp_path / "plan.json"
    r = _hetagent(
        "plan",
        "examples/graphs/deep_research.yaml",
        "--cluster",
        "configs/clusters/mixed_fleet.yaml",
        "--sla-ms",
        "8000",
        "--rate",
        "5",
        "--format",
        "json",
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["feasible"] and doc["sla_ms"] == 8000 and doc["rate_per_s"] == 5
    assert json.loads(out.read_text()) == doc
    r = _hetagent("plan", "examples/graphs/rag_agent.yaml", "--cluster", "mixed_fleet", "--rate", "5")
    assert r.returncode == 0
    for heading in ("devices", "baselines", "predicted e2e", "TCO", "per 1,000 runs", "binding"):
        assert heading in r.stdout


def test_cli_infeasible_sla_says_tightest_and_exits_3():
    r = _hetagent(
        "plan",
        "examples/graphs/rag_agent.yaml",
        "--cluster",
        "mixed_fleet",
        "--sla-ms",
        "50",
        "--format",
        "json",
        "--no-baselines",
    )
    assert r.returncode == 3
    doc = json.loads(r.stdout)
    assert doc["feasible"] is False and doc["tightest_sla_ms"] > 50 and "tightest" in doc["reason"]


def test_cli_bad_inputs_are_clear_errors(tmp_path):
    spec = yaml.safe_load((ROOT / "examples/graphs/rag_agent.yaml").read_text())
    spec["spec"]["nodes"][0]["dependencies"] = ["answer"]
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text(yaml.safe_dump(spec))
    r = _hetagent("validate", str(cyclic))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "embed_question -> search_docs -> redact -> answer -> embed_question" in r.stderr
    r = _hetagent("plan", "examples/graphs/rag_agent.yaml", "--cluster", "no_such_cluster")
    assert r.returncode == 2 and "no_such_cluster" in r.stderr and "Traceback" not in r.stderr
    r = _hetagent("plan", "examples/graphs/rag_agent.yaml", "--rate", "-1")
    assert r.returncode == 2 and "rate" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "mutate, path, needle",
    [
        (lambda s: s["spec"]["nodes"][3].update(model="gpt-9"), "spec.nodes[3].model", "unknown model 'gpt-9'"),
        (lambda s: s["spec"]["nodes"][3].update(model="bge-small-en-v1.5"), "spec.nodes[3].model", "embedding model"),
        (lambda s: s["spec"]["nodes"][1].update(kind="graph_search"), "spec.nodes[1]", "graph_search"),
        (
            lambda s: s["spec"]["nodes"][2]["inputs"].update(text="{{ nodes.nowhere.output }}"),
            "spec.nodes[2].inputs.text",
            "unknown node 'nowhere'",
        ),
        (
            lambda s: s["spec"]["nodes"][3].update(placement={"allowed_devices": ["tpu-v9"]}),
            "spec.nodes[3].placement.allowed_devices",
            "unknown device type 'tpu-v9'",
        ),
        (lambda s: s["spec"]["nodes"].append(dict(s["spec"]["nodes"][0])), "spec.nodes[4].name", "duplicate"),
        (lambda s: s["spec"]["sla"].update(e2e_ms=-5), "spec.sla.e2e_ms", "greater than 0"),
        (lambda s: s.update(apiVersion="v0"), "apiVersion", "hetagent.dev/v1alpha1"),
    ],
)
def test_spec_errors_name_path_and_reason(mutate, path, needle):
    spec = yaml.safe_load((ROOT / "examples/graphs/rag_agent.yaml").read_text())
    mutate(spec)
    with pytest.raises(SpecError) as err:
        parse_graph(spec, CAT)
    lines = [f"{p}: {r}" for p, r in err.value.problems]
    assert any(line.startswith(path) and needle in line for line in lines), lines


def test_schema_command_prints_both_schemas():
    for what in ("graph", "plan"):
        r = _hetagent("schema", what)
        assert r.returncode == 0
        assert json.loads(r.stdout)["title"] in ("AgentGraph", "Plan")
