"""Re-check a plan against the cost model, independently of the ILP that produced it.

Reads only the Plan document (what the runtime would receive), recomputes every op's
configuration from the cost model (roofline, or the measured profiles it was planned with), walks
every source-to-sink path (not the ILP's finish-time variables), and re-derives memory, capacity,
inventory and TCO. A sliced LLM op (request-size slices) is re-derived slice by slice: each bucket
wholly served, each slice's rate and times from the cost model, its engines whole per device type.
Returns the violations found.
"""

from __future__ import annotations

import math

from costmodels.catalog import Catalog, ClusterInventory, DeviceClass, device_usd_per_h
from costmodels.granular import GranularGraph
from costmodels.profiles import ProfileStore, estimated_configs
from costmodels.request_options import RequestOption, request_options
from costmodels.roofline import MEMORY_HEADROOM, transfer_ms
from planner.ilp import engine_text_pairs, shared_weight_bytes
from planner.plan import Plan, PlannedOp, PlannedSlice

REL_TOL = 1e-6


def _close(a: float, b: float, tol: float = 1e-3) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def all_paths(graph: GranularGraph) -> list[list[str]]:
    """Every source-to-sink path (exponential in the worst case: meant for checking, not planning)."""
    succ: dict[str, list[str]] = {o.name: [] for o in graph.ops}
    has_pred = set()
    for e in graph.edges:
        succ[e.src].append(e.dst)
        has_pred.add(e.dst)
    paths: list[list[str]] = []

    def walk(path: list[str]) -> None:
        nxt = succ[path[-1]]
        if not nxt:
            paths.append(path)
        for n in nxt:
            walk(path + [n])

    for o in graph.ops:
        if o.name not in has_pred:
            walk([o.name])
    return paths


def _same_option(k: RequestOption, s: PlannedSlice, kind: str) -> bool:
    """The slice's numbers are this option's."""
    phase_ms = k.prefill_ms if kind == "prefill" else k.decode_ms
    return (
        (k.tensor_parallel, k.batch, k.tpot_slo_ms) == (s.tensor_parallel, s.batch, s.tpot_slo_ms)
        and _close(k.rate_per_device, s.rate_per_device, 1e-6)
        and _close(phase_ms, s.latency_ms)
    )


def _check_slices(
    plan: Plan,
    graph: GranularGraph,
    po: PlannedOp,
    catalog: Catalog,
    per_node: dict[str, int],
    profiles: ProfileStore | None,
) -> tuple[float, list[str]]:
    """A sliced op's latency (its slowest slice) and its violations: buckets, rates, times, placement hints."""
    op = graph.op(po.name)
    bad: list[str] = []
    pair = {o.kind: o for o in graph.ops if o.source_node == op.source_node}
    raw = op.params.get("traffic") or []
    tpot = op.params.get("tpot_ms")
    served: dict[tuple[int, int], float] = {}
    for s in po.slices:
        where = f"{po.name}: slice ({s.input_tokens}, {s.output_tokens}) on {s.device}"
        served[s.input_tokens, s.output_tokens] = served.get((s.input_tokens, s.output_tokens), 0.0) + s.fraction
        if (op.pin and s.device != op.pin) or (op.allowed_devices and s.device not in op.allowed_devices):
            bad.append(f"{where}: outside the node's placement hints")
        options = request_options(
            pair["prefill"],
            pair["decode"],
            catalog.device(s.device),
            catalog,
            input_tokens=s.input_tokens,
            output_tokens=s.output_tokens,
            tpot_ms=float(tpot) if tpot is not None else None,
            per_node=per_node.get(s.device),
            store=profiles,
        )

        if not any(_same_option(k, s, op.kind) for k in options):
            bad.append(
                f"{where}: {s.rate_per_device:.6g} requests/s per device and {s.latency_ms} ms "
                f"(tp={s.tensor_parallel}, batch={s.batch}) are none of the cost model's options"
            )
        if not _close(s.requests_per_s, plan.rate_per_s * s.bucket_share * s.fraction, 1e-6):
            bad.append(f"{where}: {s.requests_per_s} requests/s is not rate × share × fraction")
        if not _close(s.devices, s.requests_per_s / (plan.max_utilisation * s.rate_per_device), 1e-6):
            bad.append(f"{where}: {s.devices} devices do not carry its requests at the utilisation cap")
    for i, o, share in raw:
        if share > 0 and abs(served.get((int(i), int(o)), 0.0) - 1.0) > 1e-4:
            bad.append(f"{po.name}: bucket ({i}, {o}) served {served.get((int(i), int(o)), 0.0):.6f} of its requests")
    latency = max((s.latency_ms for s in po.slices), default=0.0)
    if not _close(latency, po.predicted_latency_ms):
        bad.append(f"{po.name}: latency {po.predicted_latency_ms} ms, its slowest slice takes {latency}")
    return latency, bad


def check_plan(
    plan: Plan,
    graph: GranularGraph,
    catalog: Catalog,
    cluster: ClusterInventory | None,
    profiles: ProfileStore | None = None,
) -> list[str]:
    """Violations of ``plan``: latency, SLA, memory, capacity, inventory and TCO. Empty when it holds.

    ``profiles``: the measured profiles the plan was made with (``hetagent plan --profiles``)."""
    bad: list[str] = []
    planned = {o.name: o for o in plan.ops}
    if set(planned) != {o.name for o in graph.ops}:
        return [f"plan ops {sorted(planned)} differ from graph ops {sorted(o.name for o in graph.ops)}"]
    pools = {p.type: p for p in cluster.devices} if cluster else {}
    latency: dict[str, float] = {}
    for op in graph.ops:
        po = planned[op.name]
        if po.slices:
            per_node_of = {d: p.per_node for d, p in pools.items()}
            latency[op.name], problems = _check_slices(plan, graph, po, catalog, per_node_of, profiles)
            bad += problems
            continue
        if op.params.get("traffic") and op.kind in ("prefill", "decode"):
            bad.append(f"{op.name}: the node has a traffic distribution but the plan gives no slices")
        dev = catalog.device(po.device)
        if op.pin and po.device != op.pin:
            bad.append(f"{op.name}: pinned to {op.pin}, placed on {po.device}")
        if op.allowed_devices and not op.host_only and po.device not in op.allowed_devices:
            bad.append(f"{op.name}: {po.device} not in allowed devices {op.allowed_devices}")
        if op.host_only and dev.device_class is not DeviceClass.cpu:
            bad.append(f"{op.name}: host-only op on {po.device}")
        per_node = pools[po.device].per_node if po.device in pools else None
        match = [
            c
            for c in estimated_configs(op, dev, catalog, per_node=per_node, store=profiles)
            if c.batch == po.batch and c.tensor_parallel == po.tensor_parallel
        ]
        if not match:
            bad.append(f"{op.name}: no configuration batch={po.batch} tp={po.tensor_parallel} on {po.device}")
            latency[op.name] = po.predicted_latency_ms
            continue
        c = match[0]
        latency[op.name] = c.latency_ms
        if not _close(c.latency_ms, po.predicted_latency_ms):
            bad.append(f"{op.name}: latency {po.predicted_latency_ms} ms, cost model says {c.latency_ms:.4f}")
        if c.estimate_source != po.estimate_source:
            bad.append(f"{op.name}: estimate from {po.estimate_source}, the cost model's is from {c.estimate_source}")
        if dev.device_class is not DeviceClass.cpu and c.memory_bytes > dev.memory_bytes * MEMORY_HEADROOM * (
            1 + REL_TOL
        ):
            bad.append(f"{op.name}: {c.memory_bytes:.3g} B per device exceed {po.device} memory")
        if po.replicas * c.throughput_per_replica * plan.max_utilisation < plan.rate_per_s * (1 - REL_TOL):
            bad.append(
                f"{op.name}: {po.replicas} replicas × {c.throughput_per_replica:.3g}/s × "
                f"{plan.max_utilisation} < {plan.rate_per_s} runs/s"
            )

    for text_op, phase_op in engine_text_pairs(graph):
        phase = planned[phase_op]
        if phase.device_class == "cpu" and planned[text_op].device != phase.device:
            bad.append(f"{text_op}: on {planned[text_op].device}, but its engine ({phase_op}) runs on {phase.device}")

    # every path, with transfers recomputed from the catalog; a sliced op sits on every device type of its
    # slices (the slowest pair counts), and a request never leaves its engine between prefill and decode
    def on(o: str) -> set[str]:
        return {s.device for s in planned[o].slices} or {planned[o].device}

    xfer = {}
    for e in graph.edges:
        inside = planned[e.src].slices and graph.op(e.src).source_node == graph.op(e.dst).source_node
        xfer[e.src, e.dst] = (
            0.0
            if inside
            else max(transfer_ms(e.bytes, catalog.device(a), catalog.device(b)) for a in on(e.src) for b in on(e.dst))
        )
    for pe in plan.edges:
        if not _close(xfer.get((pe.src, pe.dst), -1.0), pe.transfer_ms):
            bad.append(
                f"edge {pe.src}->{pe.dst}: transfer {pe.transfer_ms} ms, cost model says {xfer.get((pe.src, pe.dst))}"
            )
    longest = 0.0
    for path in all_paths(graph):
        total = sum(latency[o] for o in path) + sum(xfer[a, b] for a, b in zip(path, path[1:], strict=False))
        longest = max(longest, total)
        if total > plan.sla_ms * (1 + REL_TOL):
            bad.append(f"path {' -> '.join(path)} takes {total:.2f} ms > SLA {plan.sla_ms} ms")
    if plan.predicted_e2e_ms is None or not _close(longest, plan.predicted_e2e_ms):
        bad.append(f"predicted_e2e_ms {plan.predicted_e2e_ms} but the longest path is {longest:.4f} ms")

    # allocation, inventory, TCO; sliced engines: per node, device type and engine size t, ⌈load / t⌉ engines
    slice_devices: dict[str, int] = {}
    for o in plan.ops:
        if o.kind != "decode" or not o.slices:
            continue
        load: dict[tuple[str, int], float] = {}
        for s in o.slices:
            load[s.device, s.tensor_parallel] = load.get((s.device, s.tensor_parallel), 0.0) + s.devices
        for (d, t), v in load.items():
            slice_devices[d] = slice_devices.get(d, 0) + t * math.ceil(v / t - REL_TOL)
    tco = 0.0
    used = {d.device: d.allocated for d in plan.devices}
    for dev_name in {o.device for o in plan.ops} | set(used) | set(slice_devices):
        dev = catalog.device(dev_name)
        members = [o for o in plan.ops if o.device == dev_name and not o.slices]
        alloc = used.get(dev_name, 0)
        if dev.device_class is DeviceClass.cpu:
            core_s = 0.0
            for o in members:
                match = [
                    c for c in estimated_configs(graph.op(o.name), dev, catalog, store=profiles) if c.batch == o.batch
                ]
                core_s += plan.rate_per_s * (match[0].core_s_per_call if match else 0.0)
            # one engine per model on a CPU tier: weights once, the rest per replica
            shared = {o.name: shared_weight_bytes(graph.op(o.name)) for o in members}
            weights = {graph.op(o.name).model: shared[o.name] for o in members if shared[o.name]}
            mem = sum(weights.values()) + sum(
                (o.memory_bytes_per_replica - shared[o.name]) * o.replicas for o in members
            )
            need = max(
                math.ceil(core_s / (plan.max_utilisation * (dev.cores or 1)) - REL_TOL),
                math.ceil(mem / (0.9 * dev.memory_bytes) - REL_TOL),
            )
        else:
            need = sum(o.replicas * o.tensor_parallel for o in members) + slice_devices.get(dev_name, 0)
        if alloc < need:
            bad.append(f"{dev_name}: {alloc} allocated but the ops need {need}")
        if dev_name in pools and alloc > pools[dev_name].count:
            bad.append(f"{dev_name}: {alloc} allocated of an inventory of {pools[dev_name].count}")
        if cluster is not None and dev_name in pools:
            tco += alloc * device_usd_per_h(dev, pools[dev_name], cluster)
    if cluster is not None and plan.tco_usd_per_hour is not None and not _close(tco, plan.tco_usd_per_hour, 1e-3):
        bad.append(f"tco_usd_per_hour {plan.tco_usd_per_hour} but allocated devices cost {tco:.4f}")
    return bad
