"""Request-size slicing: an LLM node's traffic split across device types by size bucket, as Mélange does.

Notation (extends planner/ilp.py's; one sliced LLM node n with prefill p_n and decode q_n)::

    B_n          size buckets of n's traffic (spec ``traffic.buckets``): b = (in_b, out_b, π_b), Σ_b π_b = 1
                 (buckets with π_b = 0 carry nothing and are left out)
    K_b          options for bucket b (costmodels/request_options.py): an engine on device type d_k serving
                 whole requests of size b — prefill and decode on the same devices — with
                 μ_k   requests/s one device sustains (a request-rate profile under its TPOT SLO, else the
                       step model: 1 / (tp · (1/μ_prefill + 1/μ_decode)) for a pair of batches that fit),
                 Lp_k, Lq_k   time of one request's prefill and decode (ms)

    Variables
    s_k ∈ [0, 1]     fraction of bucket b's requests served by option k;  Σ_{k ∈ K_b} s_k = 1   ∀b
    u_k ∈ {0,1}      option k is in use:  s_k ≤ u_k
    v_nd ∈ {0,1}     node n uses device type d:  v_nd ≥ u_k  ∀k with d_k = d
                     (v_nd stands in for y_od = Σ_c x_oc of ilp.py for o ∈ {p_n, q_n} in the transfer
                      constraints: several device types may be 1 at once, so t_uv bounds the slowest)

    e_ndt ∈ ℤ≥0      engines of n on device type d with t devices each (t = tp_k of the options in the group):
                     the buckets of one node share its engines, so load is fractional and engines whole
         Σ_{k: d_k=d, tp_k=t} λ π_b s_k / (ρ μ_k) ≤ t · e_ndt                     ∀(n, d, t)
    Device counts (replaces Σ tp_c R_oc x_oc for p_n and q_n)
         Σ_{o, c: d(c)=d} tp_c R_oc x_oc + Σ_{n, t} t · e_ndt ≤ a_d               ∀d
    Latency (the critical path sees the slowest size in use)
         L_{p_n} ≥ Lp_k u_k,  L_{q_n} ≥ Lq_k u_k   ∀k;   f_o ≥ L_o  for o ∈ {p_n, q_n}
         TTFT (n the final LLM):  f_{p_n} + t_{p_n q_n} + F_n ≤ TTFT,   F_n ≥ (Lq_k / out_b) u_k   ∀k

Mélange's ``slice_factor`` cuts each bucket into equal slices that each go whole to one GPU type, and its
integer count per GPU type is e_nd1 here (one model, one-GPU engines); the continuous s_k relax the slices
(any split), so with Mélange's μ, ρ = 1 and no binding latency target this plan costs no more than Mélange's.
Latency bounds are sound upper bounds: max over (b, k) in use of each phase separately, which is ≥ the max of
their sums. When no latency target can bind — the slowest choice of every op and slice still meets the SLA and
TTFT (``latency_can_bind``) — u and v are left out (the latencies are bounded by the slowest options, v_nd = 1):
the model is then Mélange's, continuous in s, and solves in a fraction of a second. Only accelerators are
offered (CPU tiers time-share cores and hold one engine per model, which slicing does not model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from costmodels.catalog import Catalog
from costmodels.granular import GranularGraph, GranularOp
from costmodels.profiles import ProfileStore
from costmodels.request_options import RequestOption, request_options
from costmodels.roofline import OpConfig, transfer_ms

if TYPE_CHECKING:
    import pulp

    from planner.ilp import PlacementProblem, Tier

LOAD_TOL = 1e-6  # a device-count requirement within this of an integer is that integer (solver tolerance)
MIN_FRACTION = 1e-7  # a slice below this fraction of its bucket is solver noise


@dataclass(frozen=True)
class Bucket:
    input_tokens: int
    output_tokens: int
    share: float


@dataclass
class SlicedNode:
    """A sliced LLM node: its buckets (share > 0) and each bucket's options."""

    node: str
    prefill: str
    decode: str
    buckets: list[Bucket]
    options: list[list[RequestOption]]
    tpot_ms: float | None


@dataclass(frozen=True)
class SliceChoice:
    """A solved slice: a fraction of one bucket served by one option."""

    bucket: Bucket
    option: RequestOption
    fraction: float

    def requests_per_s(self, rate: float) -> float:
        return rate * self.bucket.share * self.fraction

    def devices(self, rate: float, cap: float) -> float:
        """Devices this slice occupies under the utilisation cap (fractional)."""
        return self.requests_per_s(rate) / (cap * self.option.rate_per_device)


def traffic_buckets(op: GranularOp) -> list[Bucket] | None:
    """The buckets an LLM op carries from its spec node's ``traffic`` (None: not sliced)."""
    raw = op.params.get("traffic")
    if not raw:
        return None
    return [Bucket(int(i), int(o), float(s)) for i, o, s in raw]


def sliced_nodes(
    graph: GranularGraph,
    catalog: Catalog,
    tiers: dict[str, Tier],
    *,
    store: ProfileStore | None,
    allow: Callable[[GranularOp, Tier], bool] | None = None,
) -> dict[str, SlicedNode]:
    """Every LLM node with a traffic distribution, with the options of each bucket on the allowed tiers."""
    from planner.ilp import PlanningError

    by_kind = {(o.source_node, o.kind): o for o in graph.ops}
    out: dict[str, SlicedNode] = {}
    for (node, kind), pre in by_kind.items():
        buckets = traffic_buckets(pre) if kind == "prefill" else None
        dec = by_kind.get((node, "decode"))
        if buckets is None or dec is None:
            continue
        tpot = pre.params.get("tpot_ms")
        tpot_ms = float(tpot) if tpot is not None else None
        tiers_ok = [
            t
            for t in tiers.values()
            if not t.is_cpu
            and (not pre.pin or t.device.name == pre.pin)
            and (not pre.allowed_devices or t.device.name in pre.allowed_devices)
            and (allow is None or allow(pre, t))
        ]
        live = [b for b in buckets if b.share > 0]
        options = []
        for b in live:
            opts = [
                o
                for t in tiers_ok
                for o in request_options(
                    pre,
                    dec,
                    t.device,
                    catalog,
                    input_tokens=b.input_tokens,
                    output_tokens=b.output_tokens,
                    tpot_ms=tpot_ms,
                    per_node=t.per_node,
                    store=store,
                )
            ]
            if not opts:
                target = f" within a TPOT of {tpot_ms:g} ms" if tpot_ms is not None else ""
                raise PlanningError(
                    f"node {node!r}: no accelerator of {sorted(t.device.name for t in tiers_ok)} serves requests of "
                    f"{b.input_tokens} input and {b.output_tokens} output tokens{target} (request-size slicing "
                    f"uses accelerators only)"
                )
            options.append(opts)
        out[node] = SlicedNode(node, pre.name, dec.name, live, options, tpot_ms)
    return out


def sliced_devices(p: PlacementProblem) -> set[str]:
    """Device types some slice may use: their counts become integer variables."""
    return {o.device for sn in p.sliced.values() for opts in sn.options for o in opts}


@dataclass
class SliceVars:
    """The slicing part of one ILP: its variables and the terms the rest of the model reads."""

    nodes: dict[str, SlicedNode]
    s: dict[tuple[str, int, int], pulp.LpVariable] = field(default_factory=dict)
    v: dict[tuple[str, str], pulp.LpVariable] = field(default_factory=dict)
    first: dict[str, pulp.LpVariable] = field(default_factory=dict)  # decode op → first-token bound F_n
    node_of: dict[str, str] = field(default_factory=dict)  # prefill/decode op → its node
    devices: set[str] = field(default_factory=set)
    engines: dict[tuple[str, str, int], pulp.LpVariable] = field(default_factory=dict)  # (n, d, t) → e_ndt

    @property
    def ops(self) -> set[str]:
        return set(self.node_of)

    def on(self, op: str, d: str) -> pulp.LpAffineExpression | pulp.LpVariable | int:
        """v_nd: op's node uses device type d (0 where it has no option on d)."""
        return self.v.get((self.node_of[op], d), 0)

    def devices_of(self, op: str) -> set[str]:
        n = self.node_of.get(op)
        return {d for (m, d) in self.v if m == n} if n else set()

    def load(self, d: str) -> pulp.LpAffineExpression:
        """Σ_{n,t} t · e_ndt: the devices the slices' engines hold on d."""
        import pulp

        return pulp.lpSum(t * e for (_, dev, t), e in self.engines.items() if dev == d)

    def first_token(self, dec: str) -> pulp.LpVariable | int:
        return self.first.get(dec, 0)


def latency_can_bind(p: PlacementProblem) -> bool:
    """Whether some placement could miss a latency target: False when the slowest choice of every op, the
    slowest transfer on every edge and the slowest slice of every sliced node still meet the SLA and TTFT."""
    sliced_of = {o: n for n, sn in p.sliced.items() for o in (sn.prefill, sn.decode)}

    def worst_ms(o: str) -> float:
        if o in sliced_of:
            sn = p.sliced[sliced_of[o]]
            return max(k.prefill_ms if o == sn.prefill else k.decode_ms for opts in sn.options for k in opts)
        return max(c.latency_ms for c in p.configs[o])

    def devices(o: str) -> set[str]:
        if o in sliced_of:
            return {k.device for opts in p.sliced[sliced_of[o]].options for k in opts}
        return {c.device for c in p.configs[o]}

    finish: dict[str, float] = {}
    xfer: dict[tuple[str, str], float] = {}
    for op in p.graph.topological():
        start = 0.0
        for e in p.graph.predecessors(op.name):
            same_node = e.src in sliced_of and sliced_of[e.src] == sliced_of.get(e.dst)
            xfer[e.src, e.dst] = (
                0.0
                if same_node
                else max(
                    (
                        transfer_ms(e.bytes, p.tiers[a].device, p.tiers[b].device)
                        for a in devices(e.src)
                        for b in devices(e.dst)
                    ),
                    default=0.0,
                )
            )
            start = max(start, finish[e.src] + xfer[e.src, e.dst])
        finish[op.name] = start + worst_ms(op.name)
    if max(finish.values(), default=0.0) > p.sla_ms:
        return True
    if p.ttft_ms is not None and p.ttft_ops:
        pre, dec = p.ttft_ops
        if dec in sliced_of:
            sn = p.sliced[sliced_of[dec]]
            first = max(
                k.decode_ms / b.output_tokens for b, opts in zip(sn.buckets, sn.options, strict=True) for k in opts
            )
        else:
            first = max(c.latency_ms for c in p.configs[dec]) / max(p.graph.op(dec).output_tokens, 1)
        if finish[pre] + xfer.get((pre, dec), 0.0) + first > p.ttft_ms:
            return True
    return False


def add_slicing(
    prob: pulp.LpProblem,
    p: PlacementProblem,
    lam: float,
    lat: dict[str, pulp.LpVariable],
    finish: dict[str, pulp.LpVariable],
    *,
    exact_latency: bool = True,
) -> SliceVars:
    """Add every sliced node's variables and constraints (see the module docstring) to ``prob``.

    ``exact_latency=False`` (no latency target can bind: ``latency_can_bind``) leaves out u and v: the
    latencies are then bounded by the slowest option of each node, which the targets allow anyway."""
    import pulp

    sv = SliceVars(p.sliced)
    groups: dict[tuple[str, str, int], list[pulp.LpAffineExpression]] = {}
    for ni, (n, sn) in enumerate(p.sliced.items()):
        sv.node_of[sn.prefill] = n
        sv.node_of[sn.decode] = n
        first = pulp.LpVariable(f"sf_{ni}", lowBound=0)
        sv.first[sn.decode] = first
        for o in (sn.prefill, sn.decode):
            prob += finish[o] >= lat[o]
        for bi, (b, opts) in enumerate(zip(sn.buckets, sn.options, strict=True)):
            fractions = []
            for ki, k in enumerate(opts):
                s = pulp.LpVariable(f"ss_{ni}_{bi}_{ki}", lowBound=0, upBound=1)
                sv.s[n, bi, ki] = s
                fractions.append(s)
                u: pulp.LpVariable | int = 1
                if exact_latency:
                    u = pulp.LpVariable(f"su_{ni}_{bi}_{ki}", cat="Binary")
                    prob += s <= u
                prob += lat[sn.prefill] >= k.prefill_ms * u
                prob += lat[sn.decode] >= k.decode_ms * u
                prob += first >= k.decode_ms / b.output_tokens * u
                key = (n, k.device)
                if key not in sv.v:
                    sv.v[key] = pulp.LpVariable(f"sv_{ni}_{len(sv.v)}", cat="Binary")
                    if not exact_latency:
                        prob += sv.v[key] == 1  # transfers as if every device type were in use
                if exact_latency:
                    prob += sv.v[key] >= u
                load = lam * b.share / (p.max_utilisation * k.rate_per_device) * s
                groups.setdefault((n, k.device, k.tensor_parallel), []).append(load)
                sv.devices.add(k.device)
            prob += pulp.lpSum(fractions) == 1
    for gi, ((n, d, t), loads) in enumerate(groups.items()):
        e = pulp.LpVariable(f"se_{gi}", lowBound=0, cat="Integer")
        sv.engines[n, d, t] = e
        prob += pulp.lpSum(loads) <= t * e
    return sv


def read_slices(sv: SliceVars) -> dict[str, list[SliceChoice]]:
    """The solved slices of every node (fractions renormalised per bucket against solver noise)."""
    out: dict[str, list[SliceChoice]] = {}
    for n, sn in sv.nodes.items():
        chosen = []
        for bi, (b, opts) in enumerate(zip(sn.buckets, sn.options, strict=True)):
            values = [max(sv.s[n, bi, ki].varValue or 0.0, 0.0) for ki in range(len(opts))]
            total = sum(values) or 1.0
            chosen += [
                SliceChoice(b, k, f / total) for k, f in zip(opts, values, strict=True) if f / total > MIN_FRACTION
            ]
        out[n] = chosen
    return out


def slice_devices_needed(slices: dict[str, list[SliceChoice]], rate: float, cap: float) -> dict[str, float]:
    """Fractional devices per type that the slices occupy (busy devices when ``cap`` is 1)."""
    need: dict[str, float] = {}
    for chosen in slices.values():
        for c in chosen:
            need[c.option.device] = need.get(c.option.device, 0.0) + c.devices(rate, cap)
    return need


def slice_devices_allocated(slices: dict[str, list[SliceChoice]], rate: float, cap: float) -> dict[str, int]:
    """Whole devices per type the slices' engines hold: Σ over nodes and engine sizes t of t · ⌈load / t⌉."""
    out: dict[str, int] = {}
    for chosen in slices.values():
        for (d, t), n in engines(chosen, rate, cap).items():
            out[d] = out.get(d, 0) + n * t
    return out


def whole(devices: float) -> int:
    """Devices to allocate for a fractional requirement (solver noise below LOAD_TOL is not a device)."""
    return max(0, math.ceil(devices - LOAD_TOL))


def engines(chosen: list[SliceChoice], rate: float, cap: float) -> dict[tuple[str, int], int]:
    """Engines a node's slices need per (device type, devices per engine): ⌈load in devices / t⌉."""
    load: dict[tuple[str, int], float] = {}
    for c in chosen:
        key = (c.option.device, c.option.tensor_parallel)
        load[key] = load.get(key, 0.0) + c.devices(rate, cap)
    return {key: max(1, whole(v / key[1])) for key, v in load.items()}


def representative_config(sn: SlicedNode, op: str, chosen: list[SliceChoice], rate: float, cap: float) -> OpConfig:
    """The OpConfig a sliced op shows where one configuration is expected: on its busiest device type, with the
    latency of its slowest slice in use (what the latency constraints bound)."""
    is_pre = op == sn.prefill
    load: dict[str, float] = {}
    for c in chosen:
        load[c.option.device] = load.get(c.option.device, 0.0) + c.devices(rate, cap)
    main = max(load, key=lambda d: (load[d], d))
    on_main = [c for c in chosen if c.option.device == main]
    k = max(on_main, key=lambda c: c.devices(rate, cap)).option
    latency = max(c.option.prefill_ms if is_pre else c.option.decode_ms for c in chosen)
    sources = {c.option.prefill_source if is_pre else c.option.decode_source for c in chosen}
    return OpConfig(
        device=main,
        batch=k.batch or 1,
        tensor_parallel=k.tensor_parallel,
        cores_per_replica=0,
        latency_ms=latency,
        throughput_per_replica=k.rate_per_device * k.tensor_parallel,
        memory_bytes=k.memory_bytes,
        core_s_per_call=0.0,
        bound="sliced",
        estimate_source=sources.pop() if len(sources) == 1 else "mixed",
    )


def with_representatives(
    p: PlacementProblem, slices: dict[str, list[SliceChoice]], rate: float
) -> tuple[dict[str, OpConfig], dict[str, int]]:
    """Representative configurations and engine counts of every sliced op (prefill and decode of each node)."""
    config: dict[str, OpConfig] = {}
    replicas: dict[str, int] = {}
    for n, sn in p.sliced.items():
        chosen = slices[n]
        count = sum(engines(chosen, rate, p.max_utilisation).values())
        for op in (sn.prefill, sn.decode):
            config[op] = representative_config(sn, op, chosen, rate, p.max_utilisation)
            replicas[op] = count
    return config, replicas


def fastest_slices(p: PlacementProblem) -> dict[str, list[SliceChoice]]:
    """Every bucket whole on its lowest-latency option (the greedy-fastest baseline)."""
    return {
        n: [
            SliceChoice(b, min(opts, key=lambda k: (k.prefill_ms + k.decode_ms, -k.rate_per_device)), 1.0)
            for b, opts in zip(sn.buckets, sn.options, strict=True)
        ]
        for n, sn in p.sliced.items()
    }


def first_token_ms(chosen: list[SliceChoice]) -> float:
    """The slowest first decode step among the slices in use (the TTFT's decode term)."""
    return max(c.option.decode_ms / c.bucket.output_tokens for c in chosen)
