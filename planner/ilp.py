"""Placement ILP: a tier, a configuration and a replica count for every granular op, at minimum TCO.

Notation (after SkyPilot's optimizer and Mélange's GPU-mix ILP)::

    O            granular ops;  E ⊆ O×O  data edges (u, v) carrying b_uv bytes per run
    D            device types of the cluster; D_cpu ⊆ D time-shared CPU sockets
    C_o          configurations of op o: (device d(c), batch, tensor-parallel degree tp_c), each
                 with latency l_c (ms), per-replica throughput μ_c (calls/s), memory m_c (bytes per
                 replica) and CPU core-seconds per call k_c — all from the roofline cost model; the ILP
                 offers those some optimal plan may need (planner/configs.py)
    D_o          the device types of C_o
    λ            arrival rate (runs/s);  ρ  utilisation cap;  S  end-to-end SLA (ms)
    N_d, P_d     inventory of device type d, and its TCO $/device-hour
    β_d          effective scale-out bandwidth of d (bytes/ms)

    Variables
    x_oc ∈ {0,1}     op o runs with configuration c
    R_oc = ⌈λ / (ρ μ_c)⌉   replicas o needs in configuration c; the replica decision is
                     n_o = Σ_c R_oc x_oc ∈ ℤ≥0 (more replicas never lower cost or latency in this model)
    a_d  ≥ 0         devices of type d the plan allocates (a_d ≤ N_d); integer for CPU sockets, and
                     integral by construction on accelerators (a sum of tp_c R_oc over chosen x)
    f_o  ≥ 0         finish time of op o, ms;   t_uv ≥ 0  transfer time on edge (u, v), ms
    y_od = Σ_{c ∈ C_o, d(c)=d} x_oc        (op o sits on device type d)

    min  Σ_d P_d · a_d
    s.t. Σ_c x_oc = 1                                              ∀o     (one configuration)
         L_o = Σ_c l_c x_oc ;  f_o ≥ L_o                            ∀o     (latency of o)
         f_v ≥ f_u + t_uv + L_v                                    ∀(u,v) ∈ E   (finish times)
         t_uv ≥ (b_uv / β_d)(y_ud − y_vd),  t_uv ≥ (b_uv / β_d)(y_vd − y_ud)   ∀(u,v), d ∈ D_u ∩ D_v
         t_uv ≥ Σ_{d ∈ D_u∖D_v} (b_uv / β_d) y_ud,  t_uv ≥ Σ_{d ∈ D_v∖D_u} (b_uv / β_d) y_vd   (one end
                   alone can use d: one row, as an op sits on one type)
                   (⇒ t_uv = b_uv / min(β_du, β_dv) when the ends differ, 0 when they share a type)
         f_o ≤ S                                                   ∀o     (SLA: every op finishes by its sink)
         f_p + t_pq + Σ_c (l_c / N_out) x_qc ≤ TTFT                 (prefill p, decode q of the final LLM)
         Σ_{o, c: d(c)=d} tp_c R_oc x_oc ≤ a_d                     ∀d ∉ D_cpu   (dedicated devices)
         Σ_{o, c: d(c)=d} λ k_c x_oc ≤ ρ · cores_d · a_d            ∀d ∈ D_cpu   (time-shared cores)
         Σ_m W_m z_md + Σ_{o, c: d(c)=d} (m_c − W_o) R_oc x_oc ≤ 0.9 · mem_d · a_d   ∀d ∈ D_cpu
                   (host memory; z_md ≥ y_od for model ops o of model m: one engine per model and
                    CPU tier holds its weights W_m once, each replica adds its KV and process)
         a_d ≥ Σ_{c ∈ C_o, d(c)=d} ⌈q_c⌉ x_oc                     ∀o, d ∈ D_cpu   (o alone needs ⌈q_c⌉
                   sockets, q_c = max(λ k_c / (ρ cores_d), (W_o + (m_c − W_o) R_oc) / (0.9 mem_d)): implied
                   by the two rows above once a_d is integral, it keeps the LP bound from pricing o at a
                   sliver of a socket — with it the bound is within the default gap on generated graphs)
         a_d ≤ N_d                                                 ∀d     (inventory; dropped for the types
                   solve() assumes loose, and checked on its plan)
         y_td ≥ y_pd,  y_kd ≥ y_qd                                  ∀ LLM node, d ∈ D_cpu   (engine-side text)
                   (tokenize t with its prefill p, detokenize k with its decode q when that phase is on a
                    CPU tier: a vLLM engine tokenizes and detokenizes in its own process, so the runtime
                    can only honour plans that keep them together)

Request-size slicing (planner/slicing.py has the full notation): the prefill p_n and decode q_n of an LLM node n
whose spec gives a traffic distribution have no x; instead

    s_k ∈ [0, 1]     fraction of size bucket b (share π_b) served by option k: an engine on device type d_k that
                     sustains μ_k requests/s per device;  Σ_{k ∈ K_b} s_k = 1;  u_k ∈ {0,1} ≥ s_k (in use)
    v_nd ∈ {0,1}     n uses type d (v_nd ≥ u_k); it replaces y_od for o ∈ {p_n, q_n} in the transfer constraints
    e_ndt ∈ ℤ≥0      engines of n on type d of t devices each:  Σ_{k: d_k=d, tp_k=t} λ π_b s_k / (ρ μ_k) ≤ t e_ndt
    Σ_{o, c: d(c)=d} tp_c R_oc x_oc + Σ_{n, t} t e_ndt ≤ a_d      (a node's buckets share its engines)
    L_{p_n} ≥ Lp_k u_k,  L_{q_n} ≥ Lq_k u_k;  the TTFT's decode term is F_n ≥ (Lq_k / out_b) u_k

Memory fit on accelerators is enforced when C_o is built (a configuration exists only if weights
and the KV cache of its batch fit in tp_c devices). There is no latency tie-break in the objective:
it made CBC 3–6× slower on 200–1,000-op graphs; a plan meets its SLA but need not be the fastest
plan of its cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from costmodels.catalog import Catalog, ClusterInventory, DeviceClass, DevicePool, DeviceType, device_usd_per_h
from costmodels.granular import GranularGraph, GranularOp
from costmodels.profiles import ProfileStore, estimated_configs
from costmodels.roofline import HOST_PROCESS_BYTES, OpConfig, nic_transfer_ms, replicas_needed
from planner.configs import (
    Pruned,
    drop_too_slow,
    likely_tight,
    no_config_reason,
    prune_dominated,
    prune_within_device,
)
from planner.slicing import (
    SliceChoice,
    SlicedNode,
    add_slicing,
    latency_can_bind,
    read_slices,
    slice_devices_allocated,
    sliced_devices,
    sliced_nodes,
    whole,
)
from planner.solvers import make_solver, resolve_solver as resolve_solver  # place.py reads it here

if TYPE_CHECKING:
    import pulp  # imported where used at run time, so that `import planner` stays light

UNBOUNDED_DEVICES = 100_000
SLA_REL_TOL = 1e-7  # solver feasibility tolerance: a plan may meet its SLA to within 0.1 ppm


class PlanningError(ValueError):
    """The problem cannot be posed: an op has no device that can run it, or a bad argument."""


@dataclass(frozen=True)
class Tier:
    device: DeviceType
    inventory: int | None  # None: unbounded (hypothetical fleets of the baselines)
    per_node: int
    usd_per_h: float

    @property
    def is_cpu(self) -> bool:
        return self.device.device_class is DeviceClass.cpu


@dataclass
class PlacementProblem:
    graph: GranularGraph
    tiers: dict[str, Tier]
    configs: dict[str, list[OpConfig]]
    rate_per_s: float
    sla_ms: float
    ttft_ms: float | None
    max_utilisation: float
    ttft_ops: tuple[str, str] | None  # (prefill, decode) of the final LLM
    sliced: dict[str, SlicedNode] = field(default_factory=dict)  # request-size slicing (planner/slicing.py)
    profiles: ProfileStore | None = None  # measured profiles that override the roofline


@dataclass
class Assignment:
    """A solved (or hand-built) placement: one configuration and replica count per op."""

    config: dict[str, OpConfig]
    replicas: dict[str, int]
    allocated: dict[str, int]
    solver: str = ""
    solve_seconds: float = 0.0
    status: str = "Optimal"
    gap: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    slices: dict[str, list[SliceChoice]] = field(default_factory=dict)  # sliced node → its solved slices


def shared_weight_bytes(op: GranularOp) -> float:
    """What a CPU engine shares among every op of its model on one tier: weights and the process itself."""
    return op.weight_bytes + HOST_PROCESS_BYTES if op.kind in ("prefill", "decode", "embed") and op.model else 0.0


def engine_text_pairs(graph: GranularGraph) -> list[tuple[str, str]]:
    """(tokenize, prefill) and (detokenize, decode) op pairs of every LLM node: an engine on a CPU tier
    runs its node's text ops itself, so each must sit where its phase sits."""
    by_kind = {(o.source_node, o.kind): o.name for o in graph.ops}
    pairs = []
    for (node, kind), name in by_kind.items():
        phase = {"tokenize": "prefill", "detokenize": "decode"}.get(kind)
        if phase and (node, phase) in by_kind:
            pairs.append((name, by_kind[node, phase]))
    return pairs


def cluster_tiers(cluster: ClusterInventory, catalog: Catalog) -> dict[str, Tier]:
    tiers = {}
    for pool in cluster.devices:
        dev = catalog.device(pool.type)
        tiers[dev.name] = Tier(dev, pool.count, pool.per_node, device_usd_per_h(dev, pool, cluster))
    return tiers


def fleet_tier(device: DeviceType, cluster: ClusterInventory) -> Tier:
    """An unbounded fleet of ``device`` priced with the cluster's economics (for baselines)."""
    try:
        pool = cluster.pool(device.name)
    except ValueError:
        pool = DevicePool(type=device.name, count=0, per_node=device.max_devices_per_node)
    return Tier(device, None, pool.per_node, device_usd_per_h(device, pool, cluster))


def _ttft_ops(graph: GranularGraph) -> tuple[str, str] | None:
    """The final LLM's prefill and decode: a streaming LLM if any, else the last decode in topological order."""
    decodes = [o for o in graph.topological() if o.kind == "decode"]
    if not decodes:
        return None
    streaming = [o for o in decodes if o.params.get("stream")]
    dec = (streaming or decodes)[-1]
    pre = [e.src for e in graph.predecessors(dec.name) if graph.op(e.src).kind == "prefill"]
    return (pre[0], dec.name) if pre else None


def build_problem(
    graph: GranularGraph,
    catalog: Catalog,
    tiers: dict[str, Tier],
    *,
    rate_per_s: float,
    sla_ms: float | None = None,
    ttft_ms: float | None = None,
    max_utilisation: float = 0.8,
    allow: Callable[[GranularOp, Tier], bool] | None = None,
    profiles: ProfileStore | None = None,
) -> PlacementProblem:
    if rate_per_s <= 0:
        raise PlanningError(f"rate must be positive, got {rate_per_s}")
    if not 0 < max_utilisation <= 1:
        raise PlanningError(f"max utilisation must be in (0, 1], got {max_utilisation}")
    sla = sla_ms if sla_ms is not None else graph.sla_e2e_ms
    if sla <= 0:
        raise PlanningError(f"SLA must be positive, got {sla} ms")
    configs: dict[str, list[OpConfig]] = {}
    sliced = sliced_nodes(graph, catalog, tiers, store=profiles, allow=allow)
    sliced_ops = {o for sn in sliced.values() for o in (sn.prefill, sn.decode)}
    for op in graph.ops:
        if op.name in sliced_ops:
            configs[op.name] = []  # served by slices (planner/slicing.py), not by one configuration
            continue
        candidates = []
        considered = []
        for tier in tiers.values():
            if op.pin and tier.device.name != op.pin:
                continue
            if op.allowed_devices and not op.host_only and tier.device.name not in op.allowed_devices:
                continue
            if allow and not allow(op, tier):
                continue
            considered.append(tier.device)
            candidates += estimated_configs(op, tier.device, catalog, per_node=tier.per_node, store=profiles)
        if not candidates:
            why = (
                "it needs a CPU tier"
                if op.host_only
                else no_config_reason(op, considered, catalog)
                if considered
                else "its placement hints exclude every device type of the cluster"
            )
            raise PlanningError(f"op {op.name!r} cannot run on this cluster: {why}")
        configs[op.name] = candidates
    ttft = ttft_ms if ttft_ms is not None else graph.ttft_ms
    ttft_ops = _ttft_ops(graph)
    if ttft is not None and ttft_ops is None:
        raise PlanningError(f"a TTFT target of {ttft:g} ms needs an LLM (prefill → decode) in graph {graph.name!r}")
    configs = {name: prune_within_device(cs, rate_per_s, max_utilisation) for name, cs in configs.items()}
    return PlacementProblem(
        graph, tiers, configs, rate_per_s, sla, ttft, max_utilisation, ttft_ops, sliced=sliced, profiles=profiles
    )


def solve(
    p: PlacementProblem,
    *,
    objective: str = "cost",
    enforce_sla: bool = True,
    rate_scale: float = 1.0,
    solver: str = "auto",
    time_limit_s: float = 60.0,
    gap: float = 5e-3,
) -> Assignment | None:
    """Solve the ILP. ``objective`` is "cost" (min TCO) or "latency" (min makespan, for the tightest SLA).

    The ILP offers p.configs less what planner/configs.py proves no optimal plan needs: configurations
    that miss an enforced target on their own, and those another accelerator type dominates. Types that
    dominance assumes loose have their inventory relaxed; a plan that overfills one is solved again with
    that type held to its inventory (and no longer a dominator), so the answer is exact for the real ILP.
    """
    if objective not in ("cost", "latency"):
        raise PlanningError(f"unknown objective {objective!r}")
    make_solver(solver, time_limit_s, gap)  # a bad name fails here, before any model is built
    lam = p.rate_per_s * rate_scale
    configs = p.configs
    # request-size slices stand outside ``configs``: their ops may sit on several types at once
    fixed = {
        o: {k.device for opts in sn.options for k in opts} for sn in p.sliced.values() for o in (sn.prefill, sn.decode)
    }
    ttft_on = enforce_sla and p.ttft_ms is not None and p.ttft_ops is not None
    if enforce_sla:
        ttft = (*p.ttft_ops, p.ttft_ms) if p.ttft_ops is not None and p.ttft_ms is not None else None
        configs = drop_too_slow(p.graph, configs, p.sla_ms, ttft=ttft)
        if any(not cs and name not in fixed for name, cs in configs.items()):
            return None  # some op misses the targets whatever it runs on

    def prune(assume: set[str]) -> Pruned:
        return prune_dominated(
            p.graph,
            configs,
            p.tiers,
            lam,
            p.max_utilisation,
            assume_loose=assume,
            ttft_ops=p.ttft_ops if ttft_on else None,
            fixed_devices=fixed,
        )

    assume = {d for d, t in p.tiers.items() if not t.is_cpu}
    assume -= likely_tight(configs, p.tiers, lam, p.max_utilisation)
    seconds, solves = 0.0, 0
    while True:
        pruned = prune(assume)
        backend = make_solver(solver, time_limit_s, gap, binaries=sum(map(len, pruned.configs.values())))
        a = _solve_once(p, pruned.configs, lam, objective, enforce_sla, backend, gap, relaxed=pruned.assumed)
        if a is None:
            return None  # infeasible with relaxed inventories is infeasible, or the time limit left no plan
        seconds += a.solve_seconds
        solves += 1
        over = {d for d in pruned.assumed if a.allocated.get(d, 0) > (p.tiers[d].inventory or 0)}
        if not over:
            a.solve_seconds = seconds
            a.extra |= {"binaries": float(sum(map(len, pruned.configs.values()))), "solves": float(solves)}
            return a
        assume -= over


def _solve_once(
    p: PlacementProblem,
    configs: dict[str, list[OpConfig]],
    lam: float,
    objective: str,
    enforce_sla: bool,
    backend: pulp.LpSolver,
    gap: float,
    *,
    relaxed: set[str],
) -> Assignment | None:
    """Build the ILP over ``configs`` (the module docstring) and solve it with ``backend``; the types in
    ``relaxed`` have no inventory bound."""
    import pulp

    Expr, Con = pulp.LpAffineExpression, pulp.LpConstraint
    GE, LE, EQ = pulp.LpConstraintGE, pulp.LpConstraintLE, pulp.LpConstraintEQ
    ops = p.graph.ops
    by_name = {op.name: op for op in ops}
    prob = pulp.LpProblem("place_graph", pulp.LpMinimize)

    def add(terms: dict[pulp.LpVariable, float] | list[tuple[pulp.LpVariable, float]], sense: int, rhs: float) -> None:
        """One row from (variable, coefficient) terms, each variable once: PuLP's operators copy per term."""
        prob.addConstraint(Con(Expr(terms), sense, rhs=rhs))

    # Replicas: the fewest that carry λ under the cap, R_oc = ⌈λ / (ρ μ_c)⌉, so n_oc = R_oc · x_oc is an
    # integer decision tied to the configuration (more replicas never lower cost or latency here).
    reps: dict[tuple[str, int], int] = {}
    x: dict[tuple[str, int], pulp.LpVariable] = {}
    y: dict[tuple[str, str], list[pulp.LpVariable]] = {}  # y_od: the x of o's configurations on d
    members: dict[str, list[tuple[str, int, OpConfig]]] = {d: [] for d in p.tiers}
    for oi, op in enumerate(ops):
        for ci, c in enumerate(configs[op.name]):
            x[op.name, ci] = v = prob.add_variable(f"x_{oi}_{ci}", cat="Binary")
            reps[op.name, ci] = replicas_needed(lam, c, p.max_utilisation)
            y.setdefault((op.name, c.device), []).append(v)
            members[c.device].append((op.name, ci, c))
    # Accelerator counts are integral whenever x is (Σ tp·R·x), so only CPU sockets need integer a_d —
    # and device types that fractional request slices share (planner/slicing.py).
    slice_devs = sliced_devices(p)
    alloc = {
        d: prob.add_variable(
            f"a_{di}",
            lowBound=0,
            upBound=t.inventory if t.inventory is not None and d not in relaxed else UNBOUNDED_DEVICES,
            cat="Integer" if t.is_cpu or d in slice_devs else "Continuous",
        )
        for di, (d, t) in enumerate(p.tiers.items())
    }
    # every op finishes by its sink, so the SLA bounds every finish time
    limit = p.sla_ms * (1 + SLA_REL_TOL) if enforce_sla else None
    finish = {op.name: prob.add_variable(f"f_{oi}", lowBound=0, upBound=limit) for oi, op in enumerate(ops)}
    lat = {op.name: prob.add_variable(f"l_{oi}", lowBound=0) for oi, op in enumerate(ops)}
    exact = objective == "latency" or (enforce_sla and bool(p.sliced) and latency_can_bind(p))
    sliced = add_slicing(prob, p, lam, lat, finish, exact_latency=exact)

    def on(op_name: str, d: str) -> list[pulp.LpVariable]:
        if op_name in sliced.node_of:
            v = sliced.on(op_name, d)
            return [] if isinstance(v, int) else [v]  # v_nd, a variable
        return y.get((op_name, d), [])

    order = {d: i for i, d in enumerate(p.tiers)}

    def devices_of(op_name: str) -> set[str]:
        return {c.device for c in configs[op_name]} | sliced.devices_of(op_name)

    def in_order(devices: set[str]) -> list[str]:
        return sorted(devices, key=order.__getitem__)  # a set's order changes from run to run, the model must not

    for op in ops:
        if op.name in sliced.node_of:
            continue  # add_slicing bounds its latency
        cs = configs[op.name]
        add([(x[op.name, ci], 1.0) for ci in range(len(cs))], EQ, 1.0)
        add([(lat[op.name], 1.0)] + [(x[op.name, ci], -c.latency_ms) for ci, c in enumerate(cs)], EQ, 0.0)
        add([(finish[op.name], 1.0), (lat[op.name], -1.0)], GE, 0.0)

    for text_op, phase_op in engine_text_pairs(p.graph):
        for d, tier in p.tiers.items():
            if tier.is_cpu and on(phase_op, d):
                add([(v, 1.0) for v in on(text_op, d)] + [(v, -1.0) for v in on(phase_op, d)], GE, 0.0)

    transfer: dict[tuple[str, str], pulp.LpVariable] = {}
    for ei, e in enumerate(p.graph.edges):
        inside = e.src in sliced.node_of and sliced.node_of[e.src] == sliced.node_of.get(e.dst)
        devs_u, devs_v = devices_of(e.src), devices_of(e.dst)
        t_terms: list[tuple[pulp.LpVariable, float]] = []
        if e.bytes > 0 and len(devs_u | devs_v) > 1 and not inside:
            t_e = transfer[e.src, e.dst] = prob.add_variable(f"t_{ei}", lowBound=0)
            t_terms = [(t_e, -1.0)]
            ms = {d: nic_transfer_ms(e.bytes, p.tiers[d].device) for d in in_order(devs_u | devs_v)}
            for d in in_order(devs_u & devs_v):  # t ≥ ms_d (y_ud − y_vd) and t ≥ ms_d (y_vd − y_ud)
                u_on, v_on = on(e.src, d), on(e.dst, d)
                add([(t_e, 1.0)] + [(v, -ms[d]) for v in u_on] + [(v, ms[d]) for v in v_on], GE, 0.0)
                add([(t_e, 1.0)] + [(v, -ms[d]) for v in v_on] + [(v, ms[d]) for v in u_on], GE, 0.0)
            for end, only in ((e.src, devs_u - devs_v), (e.dst, devs_v - devs_u)):
                # a type only one end can use: the other end is elsewhere. One op sits on one type, so
                # one row sums them; a sliced node may use several at once, so it keeps a row per type.
                if end in sliced.node_of:
                    for d in in_order(only):
                        add([(t_e, 1.0)] + [(v, -ms[d]) for v in on(end, d)], GE, 0.0)
                elif only:
                    add([(t_e, 1.0)] + [(v, -ms[d]) for d in in_order(only) for v in on(end, d)], GE, 0.0)
        add([(finish[e.dst], 1.0), (finish[e.src], -1.0), (lat[e.dst], -1.0)] + t_terms, GE, 0.0)

    makespan = None
    if objective == "latency":
        makespan = prob.add_variable("makespan", lowBound=0)
        has_succ = {e.src for e in p.graph.edges}
        for op in ops:
            if op.name not in has_succ:
                add([(makespan, 1.0), (finish[op.name], -1.0)], GE, 0.0)
    if enforce_sla and p.ttft_ms is not None and p.ttft_ops:
        pre, dec = p.ttft_ops
        out_tokens = max(by_name[dec].output_tokens, 1)
        ttft_terms = [(finish[pre], 1.0)] + [
            (x[dec, ci], c.latency_ms / out_tokens) for ci, c in enumerate(configs[dec])
        ]
        if (pre, dec) in transfer:
            ttft_terms.append((transfer[pre, dec], 1.0))
        ttft_expr = Expr(ttft_terms) + sliced.first_token(dec)
        prob.addConstraint(Con(ttft_expr, LE, rhs=p.ttft_ms * (1 + SLA_REL_TOL)))

    for di, (d, tier) in enumerate(p.tiers.items()):
        mine = members[d]
        if not mine and d not in sliced.devices:
            alloc[d].upBound = 0
            continue
        if tier.is_cpu:
            cores = tier.device.cores or 1
            add(
                [(x[o, ci], lam * c.core_s_per_call) for o, ci, c in mine if c.core_s_per_call]
                + [(alloc[d], -p.max_utilisation * cores)],
                LE,
                0.0,
            )
            # a_d ≥ ⌈what o needs alone⌉ · y_od: implied by the rows here once a_d is integral, but the LP
            # relaxation otherwise pays a sliver of a socket for o (a bound far below any plan's cost)
            alone: dict[str, list[tuple[pulp.LpVariable, float]]] = {}
            for o, ci, c in mine:
                w = shared_weight_bytes(by_name[o])
                need = max(
                    lam * c.core_s_per_call / (p.max_utilisation * cores),
                    (w + (c.memory_bytes - w) * reps[o, ci]) / (0.9 * tier.device.memory_bytes),
                )
                alone.setdefault(o, []).append((x[o, ci], -float(max(1, math.ceil(need - 1e-9)))))
            for terms in alone.values():
                add([(alloc[d], 1.0)] + terms, GE, 0.0)
            # one engine per model on a CPU tier: its weights count once (z_md ≥ y_od for each of its ops), KV
            # and process overhead per replica
            gib = 2.0**-30  # memory rows in GiB: bytes would put 1e6-wide ranges of coefficients in one row
            memory: list[tuple[pulp.LpVariable, float]] = []
            z: dict[str, pulp.LpVariable] = {}
            for o, ci, c in mine:
                w = shared_weight_bytes(by_name[o])
                memory.append((x[o, ci], (c.memory_bytes - w) * reps[o, ci] * gib))
                model = by_name[o].model
                if w and model and model not in z:
                    z[model] = prob.add_variable(f"w_{di}_{len(z)}", cat="Binary")
                    memory.append((z[model], w * gib))
            for o in dict.fromkeys(o for o, _ci, _c in mine):
                model = by_name[o].model
                if model and shared_weight_bytes(by_name[o]):
                    add([(z[model], 1.0)] + [(v, -1.0) for v in y[o, d]], GE, 0.0)
            add(memory + [(alloc[d], -0.9 * tier.device.memory_bytes * gib)], LE, 0.0)
        else:
            used = Expr([(x[o, ci], float(c.tensor_parallel * reps[o, ci])) for o, ci, c in mine] + [(alloc[d], -1.0)])
            if d in sliced.devices:
                used += sliced.load(d)
            prob.addConstraint(Con(used, LE, rhs=0.0))

    cost = Expr([(alloc[d], t.usd_per_h) for d, t in p.tiers.items() if t.usd_per_h])
    prob.setObjective(cost if makespan is None else makespan + 1e-6 * cost)

    solver_name = "highs" if isinstance(backend, pulp.HiGHS) else "cbc"
    t0 = time.perf_counter()
    status = prob.solve(backend)
    elapsed = time.perf_counter() - t0
    status_name = pulp.LpStatus[status]
    if status_name in ("Infeasible", "Undefined", "Unbounded"):
        return None
    proven = prob.sol_status == pulp.LpSolutionOptimal
    chosen: dict[str, OpConfig] = {}
    replicas: dict[str, int] = {}
    for op in ops:
        if op.name in sliced.node_of:
            continue  # read below, from the slices
        values = [x[op.name, ci].varValue for ci in range(len(configs[op.name]))]
        picked = [ci for ci, v in enumerate(values) if v is not None and v > 0.5]
        if len(picked) != 1 or any(v is not None and 1e-4 < v < 1 - 1e-4 for v in values):
            return None  # a time limit left no integral incumbent
        chosen[op.name] = configs[op.name][picked[0]]
        replicas[op.name] = reps[op.name, picked[0]]
    slices = read_slices(sliced)
    slice_load = slice_devices_allocated(slices, lam, p.max_utilisation)
    allocated = {d: int(round(v.varValue or 0)) for d, v in alloc.items()}
    # the exact requirement: rounding of continuous accelerator counts must not undercount
    for d, tier in p.tiers.items():
        if not tier.is_cpu:
            allocated[d] = whole(
                sum(c.tensor_parallel * replicas[o] for o, c in chosen.items() if c.device == d)
                + slice_load.get(d, 0.0)
            )
    if slices:
        from planner.slicing import with_representatives

        rep_config, rep_replicas = with_representatives(p, slices, lam)
        chosen |= rep_config
        replicas |= rep_replicas
    return Assignment(
        chosen,
        replicas,
        allocated,
        solver_name,
        elapsed,
        "Optimal" if proven else "TimeLimit",
        gap if proven else None,
        slices=slices,
    )
