"""The planning pipeline in one call: spec → compiler → cost models → ILP → lowered plan.

The CLI and the daemon both call ``plan_spec``; nothing else strings the stages together.
"""

from __future__ import annotations

from compiler.spec import AgentGraph
from costmodels.catalog import Catalog, ClusterInventory
from planner.place import PlanOptions, place_graph
from planner.plan import Plan


def apply_model_overrides(graph: AgentGraph, cluster: ClusterInventory, catalog: Catalog) -> AgentGraph:
    """The graph as the cluster serves it: models renamed per ``cluster.model_overrides``, re-validated."""
    if not cluster.model_overrides:
        return graph
    from compiler.spec import validate_graph

    doc = graph.model_dump()
    for node in doc["spec"]["nodes"]:
        if node.get("model") in cluster.model_overrides:
            node["model"] = cluster.model_overrides[node["model"]]
    served = AgentGraph.model_validate(doc)
    validate_graph(served, catalog)
    return served


def plan_spec(graph: AgentGraph, cluster: ClusterInventory, opts: PlanOptions, catalog: Catalog) -> Plan:
    from compiler.ir import compile_graph
    from compiler.lowering import lower_to_execution_configs

    graph = apply_model_overrides(graph, cluster, catalog)
    _, granular = compile_graph(graph, catalog)
    plan = place_graph(granular, catalog, cluster, opts)
    if plan.feasible:
        placements = {
            o.name: dict(
                device=o.device,
                replicas=o.replicas,
                tensor_parallel=o.tensor_parallel,
                batch=o.batch,
                device_class=o.device_class,
                **({"threads": o.cores_per_replica} if o.cores_per_replica else {}),
            )
            for o in plan.ops
        }
        plan.engines = lower_to_execution_configs(granular, placements, catalog)
        by_op = {name: cfg for cfg in plan.engines for name in cfg.get("ops", [])}
        for o in plan.ops:
            o.execution = by_op.get(o.name, {})
    return plan
