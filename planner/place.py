"""place_graph: solve the placement ILP and turn the answer into a Plan, with baselines.

Infeasible SLAs are answered, not just refused: a second ILP minimises the makespan under the
same capacity, memory and inventory constraints (the tightest SLA reachable); if even that has no
solution, bisection on the rate finds the highest rate the inventory sustains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from costmodels.catalog import Catalog, CatalogError, ClusterInventory, DeviceClass, DeviceType
from costmodels.granular import GranularGraph, GranularOp
from costmodels.profiles import ProfileStore, load_profiles
from costmodels.roofline import binding_link, transfer_ms
from planner.ilp import (
    Assignment,
    PlacementProblem,
    PlanningError,
    Tier,
    build_problem,
    cluster_tiers,
    fleet_tier,
    resolve_solver,
    solve,
)
from planner.plan import Baseline, DeviceUsage, Plan, PlannedEdge, PlannedOp, PlannedSlice
from planner.slicing import (
    SliceChoice,
    engines,
    fastest_slices,
    first_token_ms,
    slice_devices_allocated,
    slice_devices_needed,
    with_representatives,
)

BINDING_SLACK = 0.02  # a latency target within 2% of the prediction counts as binding


@dataclass(frozen=True)
class PlanOptions:
    rate_per_s: float
    sla_ms: float | None = None
    ttft_ms: float | None = None
    max_utilisation: float = 0.8
    solver: str = "auto"
    time_limit_s: float = 60.0
    gap: float = 5e-3
    baselines: bool = True
    profiles_dir: Path | None = None  # measured profiles (hetagent costmodel import) that override the roofline


# ----------------------------------------------------------------------------- metrics of an assignment


def finish_times(
    graph: GranularGraph, a: Assignment, tiers: dict[str, Tier]
) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Earliest finish time of every op (ms) and transfer time of every edge, in topological order.

    A sliced op sits on every device type of its slices: an edge costs its slowest pair (none inside one node)."""

    def devices(op: str) -> set[str]:
        return {c.option.device for c in a.slices.get(graph.op(op).source_node, [])} or {a.config[op].device}

    xfer = {
        (e.src, e.dst): 0.0
        if graph.op(e.src).source_node == graph.op(e.dst).source_node and graph.op(e.src).source_node in a.slices
        else max(transfer_ms(e.bytes, tiers[s].device, tiers[d].device) for s in devices(e.src) for d in devices(e.dst))
        for e in graph.edges
    }
    finish: dict[str, float] = {}
    for op in graph.topological():
        start = max((finish[e.src] + xfer[e.src, e.dst] for e in graph.predecessors(op.name)), default=0.0)
        finish[op.name] = start + a.config[op.name].latency_ms
    return finish, xfer


def critical_path(
    graph: GranularGraph, finish: dict[str, float], xfer: dict[tuple[str, str], float], a: Assignment
) -> list[str]:
    end = max(finish, key=lambda o: finish[o])
    path = [end]
    while True:
        preds = graph.predecessors(path[-1])
        if not preds:
            break
        start = finish[path[-1]] - a.config[path[-1]].latency_ms
        best = min(preds, key=lambda e: abs(finish[e.src] + xfer[e.src, e.dst] - start))
        path.append(best.src)
    return path[::-1]


def ttft_of(
    p: PlacementProblem, a: Assignment, finish: dict[str, float], xfer: dict[tuple[str, str], float]
) -> float | None:
    if not p.ttft_ops:
        return None
    pre, dec = p.ttft_ops
    node = p.graph.op(dec).source_node
    first = (
        first_token_ms(a.slices[node])
        if node in a.slices
        else a.config[dec].latency_ms / max(p.graph.op(dec).output_tokens, 1)
    )
    return finish[pre] + xfer.get((pre, dec), 0.0) + first


def tco_usd_per_h(a: Assignment, tiers: dict[str, Tier]) -> float:
    return sum(tiers[d].usd_per_h * n for d, n in a.allocated.items())


def usd_per_1k_runs(tco: float, rate_per_s: float) -> float:
    return tco / (rate_per_s * 3600.0) * 1000.0


# ----------------------------------------------------------------------------- plan assembly


def _device_usage(p: PlacementProblem, a: Assignment) -> list[DeviceUsage]:
    out = []
    for d, tier in p.tiers.items():
        n = a.allocated.get(d, 0)
        if n == 0:
            continue
        members = [(o, c) for o, c in a.config.items() if c.device == d and p.graph.op(o).source_node not in a.slices]
        if tier.is_cpu:
            busy = sum(p.rate_per_s * c.core_s_per_call for _, c in members) / ((tier.device.cores or 1) * n)
        else:
            busy = sum(p.rate_per_s / c.throughput_per_replica * c.tensor_parallel for _, c in members) / n
            busy += slice_devices_needed(a.slices, p.rate_per_s, 1.0).get(d, 0.0) / n
        out.append(
            DeviceUsage(
                device=d,
                device_class=tier.device.device_class.value,
                allocated=n,
                inventory=tier.inventory,
                busy_fraction=round(busy, 4),
                usd_per_hour_per_device=round(tier.usd_per_h, 4),
                usd_per_hour=round(tier.usd_per_h * n, 4),
                cores=tier.device.cores if tier.is_cpu else None,
            )
        )
    return out


def _planned_ops(p: PlacementProblem, a: Assignment) -> list[PlannedOp]:
    out = []
    for op in p.graph.ops:
        c = a.config[op.name]
        r = a.replicas[op.name]
        tier = p.tiers[c.device]
        chosen = a.slices.get(op.source_node, []) if op.kind in ("prefill", "decode") else []
        slices = [_planned_slice(ch, op.kind, p.rate_per_s, p.max_utilisation) for ch in chosen]
        devices = r * c.devices_per_replica
        utilisation = p.rate_per_s / (r * c.throughput_per_replica)
        if chosen:  # the node's engines serve whole requests: they count once, on the decode op
            held = sum(n * t for (_, t), n in engines(chosen, p.rate_per_s, p.max_utilisation).items())
            devices = held if op.kind == "decode" else 0
            utilisation = sum(s.devices for s in slices) * p.max_utilisation / held
        out.append(
            PlannedOp(
                name=op.name,
                kind=op.kind,
                source_node=op.source_node,
                model=op.model,
                device=c.device,
                device_class=tier.device.device_class.value,
                replicas=r,
                batch=c.batch,
                tensor_parallel=c.tensor_parallel,
                cores_per_replica=c.cores_per_replica,
                devices_allocated=devices,
                predicted_latency_ms=round(c.latency_ms, 4),
                throughput_per_replica=c.throughput_per_replica,
                utilisation=round(utilisation, 4),
                memory_bytes_per_replica=c.memory_bytes,
                bound=c.bound,
                estimate_source=c.estimate_source,
                slices=slices,
            )
        )
    return out


def _planned_slice(ch: SliceChoice, kind: str, rate: float, cap: float) -> PlannedSlice:
    k = ch.option
    return PlannedSlice(
        input_tokens=ch.bucket.input_tokens,
        output_tokens=ch.bucket.output_tokens,
        bucket_share=ch.bucket.share,
        fraction=min(ch.fraction, 1.0),
        device=k.device,
        tensor_parallel=k.tensor_parallel,
        batch=k.batch,
        requests_per_s=ch.requests_per_s(rate),
        rate_per_device=k.rate_per_device,
        devices=ch.devices(rate, cap),
        latency_ms=round(k.prefill_ms if kind == "prefill" else k.decode_ms, 4),
        tpot_slo_ms=k.tpot_slo_ms,
        estimate_source=k.prefill_source if kind == "prefill" else k.decode_source,
    )


def _binding(p: PlacementProblem, a: Assignment, e2e: float, ttft: float | None, opts: PlanOptions) -> list[str]:
    out = []
    relaxed = solve(p, enforce_sla=False, solver=opts.solver, time_limit_s=opts.time_limit_s, gap=opts.gap)
    cost = tco_usd_per_h(a, p.tiers)
    if relaxed is not None and tco_usd_per_h(relaxed, p.tiers) < cost * (1 - 1e-6) - 1e-9:
        out.append(
            f"sla: without the latency targets the plan would cost "
            f"${tco_usd_per_h(relaxed, p.tiers):.2f}/h instead of ${cost:.2f}/h"
        )
    if e2e >= p.sla_ms * (1 - BINDING_SLACK):
        out.append(f"sla_e2e_ms: predicted {e2e:.1f} ms of {p.sla_ms:.0f} ms")
    if ttft is not None and p.ttft_ms is not None and ttft >= p.ttft_ms * (1 - BINDING_SLACK):
        out.append(f"ttft_ms: predicted {ttft:.1f} ms of {p.ttft_ms:.0f} ms")
    for d, n in a.allocated.items():
        inv = p.tiers[d].inventory
        if inv is not None and n >= inv and n > 0:
            out.append(f"inventory:{d}: all {inv} devices allocated")
    pinned = sorted({op.source_node for op in p.graph.ops if op.pin or op.allowed_devices})
    if pinned:
        out.append("placement hints: " + ", ".join(pinned))
    return out


def plan_from_assignment(
    p: PlacementProblem, a: Assignment, *, cluster_name: str, binding: list[str] | None = None
) -> Plan:
    finish, xfer = finish_times(p.graph, a, p.tiers)
    e2e = max(finish.values())
    tco = tco_usd_per_h(a, p.tiers)
    edges = [
        PlannedEdge(
            src=e.src,
            dst=e.dst,
            bytes=e.bytes,
            transfer_ms=round(xfer[e.src, e.dst], 4),
            src_device=a.config[e.src].device,
            dst_device=a.config[e.dst].device,
            **_link_fields(e.bytes, p.tiers[a.config[e.src].device].device, p.tiers[a.config[e.dst].device].device),
        )
        for e in p.graph.edges
    ]
    return Plan(
        graph=p.graph.name,
        cluster=cluster_name,
        feasible=True,
        sla_ms=p.sla_ms,
        ttft_ms=p.ttft_ms,
        rate_per_s=p.rate_per_s,
        max_utilisation=p.max_utilisation,
        predicted_e2e_ms=round(e2e, 4),
        predicted_ttft_ms=None if (t := ttft_of(p, a, finish, xfer)) is None else round(t, 4),
        critical_path=critical_path(p.graph, finish, xfer, a),
        tco_usd_per_hour=round(tco, 4),
        usd_per_1k_runs=round(usd_per_1k_runs(tco, p.rate_per_s), 6),
        solver=a.solver,
        solve_seconds=round(a.solve_seconds, 4),
        optimality_gap=a.gap,
        binding_constraints=binding or [],
        ops=_planned_ops(p, a),
        edges=edges,
        devices=_device_usage(p, a),
    )


# ----------------------------------------------------------------------------- infeasibility


def _max_rate(p: PlacementProblem, opts: PlanOptions) -> tuple[float, Assignment | None]:
    """Highest rate (runs/s) with any placement, latency targets ignored: geometric bisection on a scale."""

    def attempt(scale: float) -> Assignment | None:
        return solve(
            p, enforce_sla=False, rate_scale=scale, solver=opts.solver, time_limit_s=opts.time_limit_s, gap=0.05
        )

    lo, hi = 1e-4, 1.0
    best = attempt(lo)
    if best is None:
        return 0.0, None
    for _ in range(12):
        mid = (lo * hi) ** 0.5
        a = attempt(mid)
        if a is None:
            hi = mid
        else:
            lo, best = mid, a
    return lo * p.rate_per_s, best


def _infeasible_plan(p: PlacementProblem, cluster_name: str, opts: PlanOptions, t0: float) -> Plan:
    fastest = solve(
        p,
        objective="latency",
        enforce_sla=False,
        solver=opts.solver,
        time_limit_s=opts.time_limit_s,
        gap=min(opts.gap, 1e-4),
    )
    base = dict(
        graph=p.graph.name,
        cluster=cluster_name,
        feasible=False,
        sla_ms=p.sla_ms,
        ttft_ms=p.ttft_ms,
        rate_per_s=p.rate_per_s,
        max_utilisation=p.max_utilisation,
        solver=resolve_solver(opts.solver),
    )
    if fastest is not None:
        finish, xfer = finish_times(p.graph, fastest, p.tiers)
        tightest = max(finish.values())
        ttft = ttft_of(p, fastest, finish, xfer)
        path = critical_path(p.graph, finish, xfer, fastest)
        where = ", ".join(f"{o}@{fastest.config[o].device} {fastest.config[o].latency_ms:.1f} ms" for o in path)
        ttft_misses = p.ttft_ms is not None and ttft is not None and ttft > p.ttft_ms * (1 + 1e-6)
        if ttft_misses and tightest <= p.sla_ms * (1 + 1e-6):
            reason = (
                f"the TTFT target of {p.ttft_ms:.0f} ms cannot be met together with the e2e SLA; the fastest "
                f"placement reaches TTFT {ttft:.1f} ms"
            )
            binding = [f"ttft_ms: fastest placement gives {ttft:.1f} ms"]
        else:
            reason = (
                f"the e2e SLA of {p.sla_ms:g} ms is below the tightest latency this cluster reaches at "
                f"{p.rate_per_s:g} runs/s: {tightest:.1f} ms along {where}"
            )
            binding = [f"sla_e2e_ms: tightest achievable {tightest:.1f} ms"]
        binding += [
            f"inventory:{d}: all {inv} devices allocated in the fastest placement"
            for d, n in fastest.allocated.items()
            if (inv := p.tiers[d].inventory) is not None and n >= inv > 0
        ]
        return Plan(
            **base,
            tightest_sla_ms=round(tightest, 6),
            reason=reason,
            binding_constraints=binding,
            critical_path=path,
            solve_seconds=round(time.perf_counter() - t0, 4),
        )
    max_rate, at_max = _max_rate(p, opts)
    full = sorted(
        d
        for d, n in (at_max.allocated.items() if at_max else [])
        if (inv := p.tiers[d].inventory) is not None and n >= inv > 0
    )
    reason = (
        f"the cluster's inventory cannot sustain {p.rate_per_s:g} runs/s at a utilisation cap of "
        f"{p.max_utilisation:g}; the highest sustainable rate is about {max_rate:.3g} runs/s"
    )
    binding = [f"inventory:{d}" for d in full] or ["inventory"]
    return Plan(
        **base,
        max_rate_per_s=round(max_rate, 6),
        reason=reason,
        binding_constraints=binding,
        solve_seconds=round(time.perf_counter() - t0, 4),
    )


# ----------------------------------------------------------------------------- baselines


def _homogeneous_allow(device_name: str, cpu_tiers: set[str]) -> Callable[[GranularOp, Tier], bool]:
    def allow(op: GranularOp, tier: Tier) -> bool:
        if tier.device.name == device_name:
            return True
        return op.host_only and tier.device.name in cpu_tiers

    return allow


def homogeneous_baseline(
    graph: GranularGraph,
    catalog: Catalog,
    cluster: ClusterInventory,
    device_name: str,
    opts: PlanOptions,
    reference_tco: float | None,
    store: ProfileStore | None = None,
) -> Baseline:
    """Best plan on an unbounded fleet of one device type (host ops on the cluster's CPU tiers)."""
    dev = catalog.device(device_name)
    tiers = {dev.name: fleet_tier(dev, cluster)}
    cpu_names = set()
    if dev.device_class is not DeviceClass.cpu:
        for pool in cluster.devices:
            cdev = catalog.device(pool.type)
            if cdev.device_class is DeviceClass.cpu:
                tiers[cdev.name] = fleet_tier(cdev, cluster)
                cpu_names.add(cdev.name)
    name = f"homogeneous:{device_name}"
    try:
        p = build_problem(
            graph,
            catalog,
            tiers,
            rate_per_s=opts.rate_per_s,
            sla_ms=opts.sla_ms,
            ttft_ms=opts.ttft_ms,
            max_utilisation=opts.max_utilisation,
            allow=_homogeneous_allow(device_name, cpu_names),
            profiles=store,
        )
    except (PlanningError, CatalogError) as exc:
        return Baseline(name=name, feasible=False, reason=str(exc))
    a = solve(p, solver=opts.solver, time_limit_s=opts.time_limit_s, gap=opts.gap)
    if a is None:
        return Baseline(name=name, feasible=False, reason="no placement meets the latency targets on this device type")
    return _baseline(name, p, a, reference_tco)


def _baseline(
    name: str,
    p: PlacementProblem,
    a: Assignment,
    reference_tco: float | None,
    reason: str | None = None,
    feasible: bool = True,
) -> Baseline:
    finish, _ = finish_times(p.graph, a, p.tiers)
    tco = tco_usd_per_h(a, p.tiers)
    return Baseline(
        name=name,
        feasible=feasible,
        tco_usd_per_hour=round(tco, 4),
        usd_per_1k_runs=round(usd_per_1k_runs(tco, p.rate_per_s), 6),
        predicted_e2e_ms=round(max(finish.values()), 3),
        tco_ratio=round(tco / reference_tco, 4) if reference_tco else None,
        devices={d: n for d, n in a.allocated.items() if n},
        reason=reason,
    )


def greedy_fastest_baseline(p: PlacementProblem, reference_tco: float | None) -> Baseline:
    """Every op on its lowest-latency configuration in the cluster; replicas to carry the rate."""
    from costmodels.roofline import replicas_needed

    config = {o: min(cs, key=lambda c: (c.latency_ms, c.tensor_parallel)) for o, cs in p.configs.items() if cs}
    replicas = {o: replicas_needed(p.rate_per_s, c, p.max_utilisation) for o, c in config.items()}
    slices = fastest_slices(p)
    slice_need = slice_devices_allocated(slices, p.rate_per_s, p.max_utilisation)
    allocated: dict[str, int] = dict(slice_need)
    for d, tier in p.tiers.items():
        members = [(o, c) for o, c in config.items() if c.device == d]
        if not members:
            continue
        if tier.is_cpu:
            core_need = sum(p.rate_per_s * c.core_s_per_call for _, c in members) / p.max_utilisation
            mem_need = sum(c.memory_bytes * replicas[o] for o, c in members)
            allocated[d] = max(
                1,
                math.ceil(core_need / (tier.device.cores or 1)),
                math.ceil(mem_need / (0.9 * tier.device.memory_bytes)),
            )
        else:
            allocated[d] = sum(c.tensor_parallel * replicas[o] for o, c in members) + slice_need.get(d, 0)
    if slices:
        rep_config, rep_replicas = with_representatives(p, slices, p.rate_per_s)
        config |= rep_config
        replicas |= rep_replicas
    a = Assignment(config, replicas, allocated, solver="greedy", slices=slices)
    finish, _ = finish_times(p.graph, a, p.tiers)
    problems = []
    if max(finish.values()) > p.sla_ms:
        problems.append(f"misses the SLA ({max(finish.values()):.1f} ms > {p.sla_ms:.0f} ms)")
    over = [
        f"{d} needs {n} of {inv}" for d, n in allocated.items() if (inv := p.tiers[d].inventory) is not None and n > inv
    ]
    if over:
        problems.append("exceeds inventory: " + ", ".join(over))
    return _baseline("greedy-fastest", p, a, reference_tco, reason="; ".join(problems) or None, feasible=not problems)


# ----------------------------------------------------------------------------- entry point


def place_graph(graph: GranularGraph, catalog: Catalog, cluster: ClusterInventory, opts: PlanOptions) -> Plan:
    """Plan ``graph`` on ``cluster``: the minimum-TCO placement meeting the SLA, or why none exists."""
    t0 = time.perf_counter()
    tiers = cluster_tiers(cluster, catalog)
    store = load_profiles(opts.profiles_dir, catalog) if opts.profiles_dir is not None else None
    p = build_problem(
        graph,
        catalog,
        tiers,
        rate_per_s=opts.rate_per_s,
        sla_ms=opts.sla_ms,
        ttft_ms=opts.ttft_ms,
        max_utilisation=opts.max_utilisation,
        profiles=store,
    )
    a = solve(p, solver=opts.solver, time_limit_s=opts.time_limit_s, gap=opts.gap)
    if a is None:
        plan = _infeasible_plan(p, cluster.name, opts, t0)
        reference = None
    else:
        finish, xfer = finish_times(p.graph, a, p.tiers)
        binding = _binding(p, a, max(finish.values()), ttft_of(p, a, finish, xfer), opts)
        plan = plan_from_assignment(p, a, cluster_name=cluster.name, binding=binding)
        plan.solve_seconds = round(a.solve_seconds, 4)
        reference = plan.tco_usd_per_hour
    if opts.baselines:
        plan.baselines = [greedy_fastest_baseline(p, reference)] + [
            homogeneous_baseline(graph, catalog, cluster, d, opts, reference, store)
            for d in sorted(catalog.hardware)
            if _is_fleet_candidate(catalog, cluster, d)
        ]
    return plan


def _is_fleet_candidate(catalog: Catalog, cluster: ClusterInventory, device_name: str) -> bool:
    """Baselines: every accelerator type of the catalog, and the cluster's own CPU types."""
    dev = catalog.device(device_name)
    if dev.device_class is DeviceClass.cpu:
        return any(p.type == device_name for p in cluster.devices)
    return True


def _link_fields(nbytes: float, src: DeviceType, dst: DeviceType) -> dict[str, float | None]:
    if src.name == dst.name or nbytes <= 0:
        return {"link_gb_s": None, "link_fixed_ms": 0.0}
    gb_s, fixed_ms = binding_link(nbytes, src, dst)
    return {"link_gb_s": gb_s, "link_fixed_ms": fixed_ms}
