"""The runtime's layout: the replica pools a plan asks for, and the units a run dispatches to them.

One truth for the layout — the plan's, not re-derived here:

* **LLM engines are the plan's engine groups** (``plan.engines``, made by the lowering): one pool
  per group, with the group's replica count, serving every LLM node whose prefill or decode the
  group holds (on a CPU tier one engine serves every node of one model, as the planner counts its
  weights once). A node whose prefill and decode sit in one group runs there whole; a node whose
  phases sit in two groups is *split*: prefill on the first pool, its KV cache handed over, decode
  on the second.
* **Host nodes** (embed, vector_search, tool, transform) that the plan puts on one device are fused
  into convex segments, one pool each, so a chain or fan-out of light ops costs one Ray call, not
  one per op. A segment is convex (no path leaves it and comes back), so it runs as one task.
  Non-idempotent tools are never fused: a retried segment must not repeat a side effect.

Where a plan cannot be honoured the layout refuses before anything starts (``LayoutError``): an
LLM node's tokenize on another CPU tier than its prefill engine (a vLLM engine tokenizes in its own
process), a node with no engine group, a plan without engine groups.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from compiler.spec import AgentGraph, LLMNode, ToolNode
from planner.plan import Plan, PlannedOp

ENGINE_PHASES = ("prefill", "decode")
TEXT_OPS = {"tokenize": "prefill", "detokenize": "decode"}


class LayoutError(ValueError):
    """The plan cannot be run as planned by this runtime; says which op and why."""


@dataclass
class Pool:
    """Replicas of one process on one device: an engine group (``llm``) or a fused host segment."""

    id: str
    device: str
    device_class: str
    llm: bool
    replicas: int
    nodes: list[str]
    ops: list[str]
    execution: dict[str, Any]
    actors: list[Any] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)

    def pick(self) -> int:
        """The least-loaded replica."""
        return min(range(len(self.actors)), key=lambda i: self.in_flight[i])


@dataclass
class Unit:
    """What one run dispatches as one step: a host segment (one pool), or one LLM node on one engine
    pool, or one split LLM node (``pools`` = [prefill pool, decode pool])."""

    id: str
    nodes: list[str]
    pools: list[str]
    llm: bool

    @property
    def split(self) -> bool:
        return len(self.pools) == 2


@dataclass
class Layout:
    pools: dict[str, Pool]
    units: dict[str, Unit]  # in a topological order of the units
    notes: list[str]

    def unit_device(self, uid: str) -> str:
        """Where a unit's result is produced (a split node: its decode pool)."""
        return self.pools[self.units[uid].pools[-1]].device


def build_layout(graph: AgentGraph, plan: Plan) -> Layout:
    """Pools and units for ``graph`` under ``plan``; raises LayoutError when the plan cannot be honoured."""
    ops_of: dict[str, list[PlannedOp]] = {
        n.name: [o for o in plan.ops if o.source_node == n.name] for n in graph.spec.nodes
    }
    for name, ops in ops_of.items():
        if not ops:
            raise LayoutError(f"plan has no ops for node {name!r}: was it made for another graph?")
        sliced_on = sorted({s.device for o in ops for s in o.slices})
        if len(sliced_on) > 1:  # serving every size on one type would not be the plan
            raise LayoutError(
                f"{name}: the plan slices its requests by size across {', '.join(sliced_on)}; this runtime "
                "does not route requests by size, so it refuses the plan (plan the node without `traffic` "
                "buckets, or on one device type, to run it)"
            )
    nodes = {n.name: n for n in graph.spec.nodes}
    notes: list[str] = []
    pools: dict[str, Pool] = {}
    engine_of: dict[str, str] = {}  # granular op → engine pool id
    llm_nodes = [n for n in graph.spec.nodes if isinstance(n, LLMNode)]
    if llm_nodes:
        if not plan.engines:
            raise LayoutError("the plan has no engine groups (plan.engines): re-plan it with this hetagent")
        by_name = {o.name: o for o in plan.ops}
        for cfg in plan.engines:
            phase_ops = [o for o in cfg.get("ops", []) if o in by_name and by_name[o].kind in ENGINE_PHASES]
            if not phase_ops:
                continue  # embedding engines: this runtime serves embeddings as host ops
            served = list(dict.fromkeys(by_name[o].source_node for o in phase_ops))
            pools[cfg["name"]] = Pool(
                cfg["name"],
                cfg["device"],
                cfg["device_class"],
                True,
                int(cfg["replicas"]),
                served,
                list(cfg["ops"]),
                cfg,
            )
            for o in phase_ops:
                engine_of[o] = cfg["name"]
    units: dict[str, Unit] = {}
    for node in llm_nodes:
        phases = {o.kind: o for o in ops_of[node.name]}
        missing = [k for k in ENGINE_PHASES if k not in phases or phases[k].name not in engine_of]
        if missing:
            raise LayoutError(f"{node.name}: the plan's engine groups hold no {' or '.join(missing)} op")
        for text_kind, phase_kind in TEXT_OPS.items():
            text, phase = phases.get(text_kind), phases[phase_kind]
            if text is None or text.device == phase.device:
                continue
            if phase.device_class == "cpu":
                raise LayoutError(
                    f"{text.name}: planned on {text.device}, but its engine ({phase.name}) runs on "
                    f"{phase.device}; a vLLM engine tokenizes and detokenizes in its own process, "
                    "so this plan cannot be run as planned "
                    "(plans from this hetagent keep them together)"
                )
            notes.append(
                f"{text.name}: planned on {text.device}; runs in the {phase.device} engine's process "
                "(vLLM tokenizes and detokenizes in the engine)"
            )
        pre, dec = engine_of[phases["prefill"].name], engine_of[phases["decode"].name]
        units[node.name] = Unit(node.name, [node.name], [pre] if pre == dec else [pre, dec], True)
    _add_host_segments(graph, plan, ops_of, nodes, pools, units)
    return Layout(pools, _topological(graph, units), notes)


def node_device(ops: list[PlannedOp]) -> tuple[str, str, dict[str, Any], int]:
    """(device, device class, execution config, replicas) of a host node: its one op's placement."""
    main = next((o for o in ops if o.kind not in ("tokenize", "detokenize")), ops[0])
    return main.device, main.device_class, main.execution, max(1, max(o.replicas for o in ops))


def _add_host_segments(
    graph: AgentGraph,
    plan: Plan,
    ops_of: dict[str, list[PlannedOp]],
    nodes: dict[str, Any],
    pools: dict[str, Pool],
    units: dict[str, Unit],
) -> None:
    """Host nodes greedily fused, in topological order, into convex per-device segments: a node joins
    (and merges) the segments of its upstream nodes on its device when the union stays convex."""
    order = graph.topological_order()
    ups = {n.name: graph.upstream(n) for n in graph.spec.nodes}
    descendants = _descendants(order, ups)
    placement = {n: node_device(ops_of[n]) for n in order if not isinstance(nodes[n], LLMNode)}

    def fusable(name: str) -> bool:
        node = nodes[name]
        return not isinstance(node, LLMNode) and not (isinstance(node, ToolNode) and not node.idempotent)

    segments: dict[int, list[str]] = {}
    seg_of: dict[str, int] = {}
    new_ids = itertools.count()
    for name in order:
        if isinstance(nodes[name], LLMNode):
            continue
        device = placement[name][0]
        candidates: list[int] = []
        if fusable(name):
            for u in ups[name]:
                k = seg_of.get(u)
                if (
                    k is not None
                    and k not in candidates
                    and placement[u][0] == device
                    and all(fusable(m) for m in segments[k])
                ):
                    candidates.append(k)
        choice = None
        for group in ([candidates] if len(candidates) > 1 else []) + [[k] for k in candidates]:
            union = {m for k in group for m in segments[k]} | {name}
            if is_convex(union, descendants):
                choice = group
                break
        if choice is None:
            k = next(new_ids)
            segments[k] = [name]
        else:
            k = choice[0]
            for other in choice[1:]:
                segments[k] += segments.pop(other)
            segments[k].append(name)
        for m in segments[k]:
            seg_of[m] = k
    for members in segments.values():
        members.sort(key=order.index)
        uid = "+".join(members)
        device, device_class, execution, _ = placement[members[0]]
        pools[uid] = Pool(
            uid,
            device,
            device_class,
            False,
            max(placement[m][3] for m in members),
            members,
            [o.name for m in members for o in ops_of[m]],
            execution,
        )
        units[uid] = Unit(uid, members, [uid], False)


def _descendants(order: list[str], ups: dict[str, list[str]]) -> dict[str, set[str]]:
    succs: dict[str, list[str]] = {n: [] for n in order}
    for n, us in ups.items():
        for u in us:
            succs[u].append(n)
    below: dict[str, set[str]] = {}
    for n in reversed(order):
        below[n] = set(succs[n]).union(*(below[c] for c in succs[n]))
    return below


def is_convex(members: set[str], descendants: dict[str, set[str]]) -> bool:
    """No path leaves ``members`` and comes back (else one task could not run them all)."""
    below = set().union(*(descendants[m] for m in members)) - members
    return not any(descendants[x] & members for x in below)


def _topological(graph: AgentGraph, units: dict[str, Unit]) -> dict[str, Unit]:
    order = graph.topological_order()
    unit_of = {n: uid for uid, u in units.items() for n in u.nodes}
    ups = {
        uid: {unit_of[x] for n in u.nodes for x in graph.upstream(graph.node(n))} - {uid} for uid, u in units.items()
    }
    ordered: list[str] = []
    while len(ordered) < len(units):  # Kahn; ties by the first node's position in the graph order
        ready = [uid for uid in units if uid not in ordered and ups[uid] <= set(ordered)]
        ordered.append(min(ready, key=lambda uid: order.index(units[uid].nodes[0])))
    return {uid: units[uid] for uid in ordered}
