"""Placement ILP: a tier, a configuration and a replica count for every granular op, at minimum TCO.

Notation (after SkyPilot's optimizer and Mélange's GPU-mix ILP)::

    O            granular ops;  E ⊆ O×O  data edges (u, v) carrying b_uv bytes per run
    D            device types of the cluster; D_cpu ⊆ D time-shared CPU sockets
    C_o          configurations of op o: (device d(c), batch, tensor-parallel degree tp_c), each
                 with latency l_c (ms), per-replica throughput μ_c (calls/s), memory m_c (bytes per
                 replica) and CPU core-seconds per call k_c — all from the roofline cost model
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
         t_uv ≥ (b_uv / β_d)(y_ud − y_vd),  t_uv ≥ (b_uv / β_d)(y_vd − y_ud)   ∀(u,v), d
                   (⇒ t_uv = b_uv / min(β_du, β_dv) when the ends differ, 0 when they share a type)
         f_o ≤ S                                                   ∀o sink (SLA)
         f_p + t_pq + Σ_c (l_c / N_out) x_qc ≤ TTFT                 (prefill p, decode q of the final LLM)
         Σ_{o, c: d(c)=d} tp_c R_oc x_oc ≤ a_d                     ∀d ∉ D_cpu   (dedicated devices)
         Σ_{o, c: d(c)=d} λ k_c x_oc ≤ ρ · cores_d · a_d            ∀d ∈ D_cpu   (time-shared cores)
         Σ_m W_m z_md + Σ_{o, c: d(c)=d} (m_c − W_o) R_oc x_oc ≤ 0.9 · mem_d · a_d   ∀d ∈ D_cpu
                   (host memory; z_md ≥ x_oc for model ops of model m: one engine per model and
                    CPU tier holds its weights W_m once, each replica adds its KV and process)
         a_d ≤ N_d                                                 ∀d     (inventory)
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

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from costmodels.catalog import Catalog, ClusterInventory, DeviceClass, DevicePool, DeviceType, device_usd_per_h
from costmodels.granular import GranularGraph, GranularOp
from costmodels.profiles import ProfileStore, estimated_configs
from costmodels.roofline import HOST_PROCESS_BYTES, OpConfig, nic_transfer_ms, replicas_needed, transfer_ms
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
            considered.append(tier.device.name)
            candidates += estimated_configs(op, tier.device, catalog, per_node=tier.per_node, store=profiles)
        if not candidates:
            why = (
                "it needs a CPU tier"
                if op.host_only
                else f"its model does not fit in memory on any of {considered}"
                if considered
                else "its placement hints exclude every device type of the cluster"
            )
            raise PlanningError(f"op {op.name!r} cannot run on this cluster: {why}")
        configs[op.name] = candidates
    ttft = ttft_ms if ttft_ms is not None else graph.ttft_ms
    ttft_ops = _ttft_ops(graph)
    if ttft is not None and ttft_ops is None:
        raise PlanningError(f"a TTFT target of {ttft:g} ms needs an LLM (prefill → decode) in graph {graph.name!r}")
    configs = _prune_dominated(graph, configs, tiers, rate_per_s, max_utilisation, keep=set(ttft_ops or ()))
    return PlacementProblem(
        graph, tiers, configs, rate_per_s, sla, ttft, max_utilisation, ttft_ops, sliced=sliced, profiles=profiles
    )


def _prune_dominated(
    graph: GranularGraph,
    configs: dict[str, list[OpConfig]],
    tiers: dict[str, Tier],
    rate: float,
    cap: float,
    keep: set[str],
) -> dict[str, list[OpConfig]]:
    """Drop accelerator configurations that another device type beats on every count.

    c (on d) is dropped when some c' (on an accelerator d' whose inventory cannot bind) has
    latency(c') + worst-case transfers on o's edges ≤ latency(c) and cost(c') ≤ cost(c), where
    cost = $/h · tp · R. Both are exact here: accelerator cost is separable per op, and c' stays at
    least as fast whatever its neighbours choose. CPU configurations are never dropped (socket
    rounding couples ops), nor are those of the ``keep`` ops (the TTFT path weighs a decode's
    latency by 1/N_out, which this rule does not cover). The brute-force tests check the optimum.
    """

    def reps(c: OpConfig) -> int:
        return replicas_needed(rate, c, cap)

    configs = {name: _prune_within_device(cs, rate, cap) for name, cs in configs.items()}
    loose = set()
    for d, tier in tiers.items():
        if tier.is_cpu:
            continue
        worst = sum(
            max((c.tensor_parallel * reps(c) for c in cs if c.device == d), default=0) for cs in configs.values()
        )
        if tier.inventory is None or worst <= tier.inventory:
            loose.add(d)
    if not loose:
        return configs
    devices_of = {name: {c.device for c in cs} for name, cs in configs.items()}
    adjacent: dict[str, list[tuple[float, set[str]]]] = {o.name: [] for o in graph.ops}
    for e in graph.edges:
        adjacent[e.src].append((e.bytes, devices_of[e.dst]))
        adjacent[e.dst].append((e.bytes, devices_of[e.src]))

    def worst_transfers_ms(op_name: str, d: str) -> float:
        """Transfers on o's edges if o sits on d and every neighbour on its worst other device."""
        return sum(
            max((transfer_ms(b, tiers[d].device, tiers[n].device) for n in nbrs), default=0.0)
            for b, nbrs in adjacent[op_name]
        )

    out = {}
    for name, cs in configs.items():
        if name in keep:
            out[name] = cs
            continue
        penalty_ms = {d: worst_transfers_ms(name, d) for d in devices_of[name] if d in loose}
        cost = [tiers[c.device].usd_per_h * c.tensor_parallel * reps(c) for c in cs]
        kept = []
        for i, c in enumerate(cs):
            if tiers[c.device].is_cpu:
                kept.append(c)
                continue
            beaten = any(
                j != i
                and o.device in loose
                and o.device != c.device
                and o.latency_ms + penalty_ms[o.device] <= c.latency_ms
                and cost[j] <= cost[i]
                for j, o in enumerate(cs)
            )
            if not beaten:
                kept.append(c)
        out[name] = kept
    return out


def _prune_within_device(cs: list[OpConfig], rate: float, cap: float) -> list[OpConfig]:
    """Drop a configuration when another on the same device type is no slower and uses no more.

    "Uses" is, at this rate: devices (tp·R) on accelerators; core-seconds per call and memory of its
    replicas (m·R) on CPUs. Same device type means same transfers and inventory, so this is exact.
    """

    def key(c: OpConfig) -> tuple[float, ...]:
        r = replicas_needed(rate, c, cap)
        if c.cores_per_replica:
            return (c.latency_ms, c.core_s_per_call, c.memory_bytes * r)
        return (c.latency_ms, float(c.tensor_parallel * r))

    keys = [key(c) for c in cs]
    keep = []
    for i, c in enumerate(cs):
        beaten = any(
            j != i
            and cs[j].device == c.device
            and all(a <= b for a, b in zip(keys[j], keys[i], strict=False))
            and (keys[j] != keys[i] or j < i)  # of identical twins keep the first
            for j in range(len(cs))
        )
        if not beaten:
            keep.append(c)
    return keep


def available_solvers() -> list[str]:
    import pulp

    names = pulp.listSolvers(onlyAvailable=True)
    return [s for s, key in (("cbc", "PULP_CBC_CMD"), ("highs", "HiGHS")) if key in names]


def resolve_solver(name: str) -> str:
    """'auto' → the CBC bundled with PuLP: the faster of the two on 1,000-op graphs (docs/benchmarks.md)."""
    return "cbc" if name == "auto" else name


def _make_solver(name: str, time_limit_s: float, gap: float) -> pulp.LpSolver:
    import pulp

    name = resolve_solver(name)
    if name == "cbc":
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap)
    if name == "highs":
        if "HiGHS" not in pulp.listSolvers(onlyAvailable=True):
            raise PlanningError("solver 'highs' needs the highspy package: pip install 'hetagent[highs]'")
        return pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap)
    raise PlanningError(f"unknown solver {name!r}; choose auto, cbc or highs")


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
    """Solve the ILP. ``objective`` is "cost" (min TCO) or "latency" (min makespan, for the tightest SLA)."""
    import pulp

    lam = p.rate_per_s * rate_scale
    ops = p.graph.ops
    prob = pulp.LpProblem("place_graph", pulp.LpMinimize)
    # Replicas: the fewest that carry λ under the cap, R_oc = ⌈λ / (ρ μ_c)⌉, so n_oc = R_oc · x_oc is an
    # integer decision tied to the configuration (more replicas never lower cost or latency here).
    reps = {
        (op.name, ci): replicas_needed(lam, c, p.max_utilisation)
        for op in ops
        for ci, c in enumerate(p.configs[op.name])
    }
    x: dict[tuple[str, int], pulp.LpVariable] = {
        (op.name, ci): pulp.LpVariable(f"x_{oi}_{ci}", cat="Binary")
        for oi, op in enumerate(ops)
        for ci in range(len(p.configs[op.name]))
    }
    # Accelerator counts are integral whenever x is (Σ tp·R·x), so only CPU sockets need integer a_d —
    # and device types that fractional request slices share (planner/slicing.py).
    slice_devs = sliced_devices(p)
    alloc = {
        d: pulp.LpVariable(
            f"a_{di}",
            lowBound=0,
            upBound=t.inventory if t.inventory is not None else UNBOUNDED_DEVICES,
            cat="Integer" if t.is_cpu or d in slice_devs else "Continuous",
        )
        for di, (d, t) in enumerate(p.tiers.items())
    }
    finish = {op.name: pulp.LpVariable(f"f_{oi}", lowBound=0) for oi, op in enumerate(ops)}
    lat = {op.name: pulp.LpVariable(f"l_{oi}", lowBound=0) for oi, op in enumerate(ops)}
    exact = objective == "latency" or (enforce_sla and latency_can_bind(p))
    sliced = add_slicing(prob, p, lam, lat, finish, exact_latency=exact)

    def on(op_name: str, d: str) -> pulp.LpAffineExpression:
        if op_name in sliced.node_of:
            return sliced.on(op_name, d)
        return pulp.lpSum(x[op_name, ci] for ci, c in enumerate(p.configs[op_name]) if c.device == d)

    for op in ops:
        if op.name in sliced.node_of:
            continue  # add_slicing bounds its latency
        cs = p.configs[op.name]
        prob += pulp.lpSum(x[op.name, ci] for ci in range(len(cs))) == 1
        prob += lat[op.name] == pulp.lpSum(c.latency_ms * x[op.name, ci] for ci, c in enumerate(cs))
        prob += finish[op.name] >= lat[op.name]

    for text_op, phase_op in engine_text_pairs(p.graph):
        for d, tier in p.tiers.items():
            if tier.is_cpu:
                prob += on(text_op, d) >= on(phase_op, d)

    transfer = {}
    for ei, e in enumerate(p.graph.edges):
        t_e = 0
        devs_u = {c.device for c in p.configs[e.src]} | sliced.devices_of(e.src)
        devs_v = {c.device for c in p.configs[e.dst]} | sliced.devices_of(e.dst)
        if e.bytes > 0 and (len(devs_u | devs_v) > 1):
            t_e = pulp.LpVariable(f"t_{ei}", lowBound=0)
            for d in devs_u | devs_v:
                ms = nic_transfer_ms(e.bytes, p.tiers[d].device)
                prob += t_e >= ms * (on(e.src, d) - on(e.dst, d))
                prob += t_e >= ms * (on(e.dst, d) - on(e.src, d))
        transfer[e.src, e.dst] = t_e
        prob += finish[e.dst] >= finish[e.src] + t_e + lat[e.dst]

    sinks = [op.name for op in ops if not any(e.src == op.name for e in p.graph.edges)]
    makespan = pulp.LpVariable("makespan", lowBound=0)
    for s in sinks:
        prob += makespan >= finish[s]
        if enforce_sla:
            prob += finish[s] <= p.sla_ms * (1 + SLA_REL_TOL)
    ttft_expr = None
    if p.ttft_ops:
        pre, dec = p.ttft_ops
        out_tokens = max(p.graph.op(dec).output_tokens, 1)
        ttft_expr = (
            finish[pre]
            + transfer.get((pre, dec), 0)
            + pulp.lpSum(c.latency_ms / out_tokens * x[dec, ci] for ci, c in enumerate(p.configs[dec]))
            + sliced.first_token(dec)
        )
        if enforce_sla and p.ttft_ms is not None:
            prob += ttft_expr <= p.ttft_ms * (1 + SLA_REL_TOL)

    weights: dict[tuple[str, str], pulp.LpVariable] = {}
    for d, tier in p.tiers.items():
        members = [(op.name, ci, c) for op in ops for ci, c in enumerate(p.configs[op.name]) if c.device == d]
        if not members and d not in sliced.devices:
            prob += alloc[d] == 0
            continue
        if tier.is_cpu:
            cores = tier.device.cores or 1
            prob += pulp.lpSum(lam * c.core_s_per_call * x[o, ci] for o, ci, c in members) <= (
                p.max_utilisation * cores * alloc[d]
            )
            # one engine per model on a CPU tier: its weights count once, KV and process overhead per replica
            shared = {}
            for o, ci, _c in members:
                w = shared_weight_bytes(p.graph.op(o))
                if w and (o_model := p.graph.op(o).model):
                    key = (o_model, d)
                    if key not in shared:
                        shared[key] = (pulp.LpVariable(f"w_{len(weights)}", cat="Binary"), w)
                        weights[key] = shared[key][0]
                    prob += shared[key][0] >= x[o, ci]
            prob += (
                pulp.lpSum(w * z for z, w in shared.values())
                + pulp.lpSum(
                    (c.memory_bytes - shared_weight_bytes(p.graph.op(o))) * reps[o, ci] * x[o, ci]
                    for o, ci, c in members
                )
                <= 0.9 * tier.device.memory_bytes * alloc[d]
            )
        else:
            prob += (
                pulp.lpSum(c.tensor_parallel * reps[o, ci] * x[o, ci] for o, ci, c in members) + sliced.load(d)
                <= alloc[d]
            )

    cost = pulp.lpSum(t.usd_per_h * alloc[d] for d, t in p.tiers.items())
    if objective == "cost":
        prob += cost
    elif objective == "latency":
        prob += makespan + 1e-6 * cost
    else:
        raise PlanningError(f"unknown objective {objective!r}")

    backend = _make_solver(solver, time_limit_s, gap)
    solver = "highs" if isinstance(backend, pulp.HiGHS) else "cbc"
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
        values = [x[op.name, ci].varValue for ci in range(len(p.configs[op.name]))]
        picked = [ci for ci, v in enumerate(values) if v is not None and v > 0.5]
        if len(picked) != 1 or any(v is not None and 1e-4 < v < 1 - 1e-4 for v in values):
            return None  # a time limit left no integral incumbent
        chosen[op.name] = p.configs[op.name][picked[0]]
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
        solver,
        elapsed,
        "Optimal" if proven else "TimeLimit",
        gap if proven else None,
        slices=slices,
    )
