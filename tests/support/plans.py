"""Plans the tests share: the draft_writer example on `local_tiers`, split and unsplit by the planner itself."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRAFT_WRITER = ROOT / "examples" / "graphs" / "draft_writer.yaml"


def phase_devices(plan, node: str) -> tuple[str, str]:
    ops = {o.kind: o for o in plan.ops if o.source_node == node}
    return ops["prefill"].device, ops["decode"].device


def draft_writer_plans(catalog, output_tokens: int | None = None):
    """(graph served on local_tiers, an unsplit plan at a low rate, the first plan the planner splits as the
    rate rises). The split is found, not forced: the rate goes up until decode crowds one core."""
    from compiler.spec import load_graph
    from costmodels.catalog import load_cluster
    from planner.pipeline import apply_model_overrides, plan_spec
    from planner.place import PlanOptions

    inv = load_cluster("local_tiers", catalog)
    graph = load_graph(DRAFT_WRITER, catalog)
    if output_tokens is not None:
        for node in graph.spec.nodes:
            if node.kind == "llm":
                node.expected.output_tokens = output_tokens
    graph = apply_model_overrides(graph, inv, catalog)

    def plan(rate: float):
        return plan_spec(graph, inv, PlanOptions(rate_per_s=rate, baselines=False), catalog)

    low = plan(0.5)
    assert low.feasible and len(set(phase_devices(low, "draft"))) == 1, "at a low rate one tier holds the graph"
    rate, split = 1.0, None
    while rate < 500:
        candidate = plan(rate)
        if not candidate.feasible:
            break
        if len(set(phase_devices(candidate, "draft"))) == 2:
            split = candidate
            break
        rate *= 1.15
    assert split is not None, "the planner never split prefill and decode on local_tiers"
    return graph, low, split
