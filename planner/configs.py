"""Which configurations the placement ILP offers each op: those some optimal plan may need.

Every rule is exact (planner/ilp.py's notation): a plan that uses a dropped configuration either
misses a target, or becomes no worse when that configuration is replaced by a kept one.

* ``drop_too_slow``: c misses the SLA (or the TTFT target) even with every other op on its fastest
  configuration and free transfers.
* ``prune_within_device``: c' on the same type with l_c' ≤ l_c that uses no more — devices tp·R on
  accelerators; core-seconds per call and replica memory m·R on CPUs.
* ``prune_dominated``, across accelerator types: c on d is dropped for c' on an accelerator d' when

      cost(c') ≤ cost(c)     cost = P_d · tp_c · R_c (accelerator cost is separable per op), and
      l_c' + Δin_o(d→d') + Δout_o(d→d') ≤ l_c,
      Δ_e(d→d') = max_{n ∈ D_nbr} (t_e(d', n) − t_e(d, n))     (the most the move adds to edge e),

  Δin/Δout the largest Δ over o's in-/out-edges (a path crosses at most one of each), and for the decode q
  of the TTFT pair under a TTFT target also l_c'/N_out + Δ_pq ≤ l_c/N_out; so no path and no TTFT term
  gets longer. The move adds tp_c'·R_c' devices of d', so d' must be *loose*: proven so when the ops
  cannot exceed N_d' whatever they choose among the kept configurations (Σ_o max tp·R ≤ N_d', a fixpoint
  over the types), or *assumed* so — the ILP then drops a_d' ≤ N_d' (a relaxation, over which the
  dominance is exact), and a plan that still fits every assumed inventory is optimal for the real one too.
  ``likely_tight`` picks which types not to assume; planner/ilp.py's ``solve`` re-solves when a plan
  overfills an assumed type. CPU configurations are never dropped across types (socket rounding couples
  ops) nor used to drop others.

Replacements strictly decrease (cost, latency, position) lexicographically, so chains of them end at a
kept configuration. The brute-force tests (tests/test_planner.py) check the optimum.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from costmodels.catalog import Catalog, CatalogError, DeviceType
from costmodels.granular import GranularGraph, GranularOp
from costmodels.roofline import OpConfig, nic_transfer_ms, replicas_needed

if TYPE_CHECKING:
    from planner.ilp import Tier

TARGET_TOL = 1e-6  # drop_too_slow keeps what misses a target by less than this (the ILP's own tolerance is less)


def prune_within_device(cs: list[OpConfig], rate: float, cap: float) -> list[OpConfig]:
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
    by_device: dict[str, list[int]] = {}
    for i, c in enumerate(cs):
        by_device.setdefault(c.device, []).append(i)
    beaten = set()
    for idx in by_device.values():
        for i in idx:
            ki = keys[i]
            for j in idx:
                kj = keys[j]
                if j != i and all(a <= b for a, b in zip(kj, ki, strict=True)) and (kj != ki or j < i):
                    beaten.add(i)  # of identical twins the first stays
                    break
    return [c for i, c in enumerate(cs) if i not in beaten]


def no_config_reason(op: GranularOp, devices: list[DeviceType], catalog: Catalog) -> str:
    """Why ``op`` has no configuration on any of ``devices``: per device type, a missing peak FLOP/s for its
    model's dtype (the catalog lacks the figure) or memory (weights and KV do not fit in a node)."""
    dtype = catalog.model(op.model).dtype if op.model and op.kind in ("prefill", "decode", "embed") else None
    no_peak, no_room = [], []
    for dev in devices:
        try:
            if dtype is not None:
                dev.peak_flops(dtype)
        except CatalogError:
            no_peak.append(dev.name)
        else:
            no_room.append(dev.name)
    parts = []
    if no_peak:
        parts.append(
            f"the catalog gives no {dtype} peak FLOP/s (peak_tflops.{dtype}, or a wider type) for {no_peak}, "
            f"the dtype of its model {op.model!r}"
        )
    if no_room:
        parts.append(f"its model does not fit in memory on any of {no_room}")
    return "; ".join(parts)


def drop_too_slow(
    graph: GranularGraph,
    configs: dict[str, list[OpConfig]],
    sla_ms: float,
    *,
    ttft: tuple[str, str, float] | None = None,
) -> dict[str, list[OpConfig]]:
    """Drop configurations that miss the SLA (or the TTFT target) even if every other op takes its fastest
    configuration and no transfer costs anything: no feasible plan uses them.

    ``ttft``: (prefill, decode, target ms) of the final LLM. An op without configurations (request-size
    slices) counts 0 ms, a lower bound. Only valid where the targets are enforced."""
    fastest = {name: min((c.latency_ms for c in cs), default=0.0) for name, cs in configs.items()}
    order = [o.name for o in graph.topological()]
    preds: dict[str, list[str]] = {name: [] for name in order}
    succs: dict[str, list[str]] = {name: [] for name in order}
    for e in graph.edges:
        preds[e.dst].append(e.src)
        succs[e.src].append(e.dst)
    head: dict[str, float] = {}  # earliest start of o
    for name in order:
        head[name] = max((head[u] + fastest[u] for u in preds[name]), default=0.0)
    tail: dict[str, float] = {}  # least time from o's finish to the end of its longest path
    for name in reversed(order):
        tail[name] = max((fastest[v] + tail[v] for v in succs[name]), default=0.0)
    budget = {name: sla_ms * (1 + TARGET_TOL) - head[name] - tail[name] for name in order}
    if ttft is not None:
        pre, dec, target = ttft
        n_out = max(graph.op(dec).output_tokens, 1)
        limit = target * (1 + TARGET_TOL) - fastest[dec] / n_out
        to_pre: dict[str, float] = {pre: 0.0}  # least time from o's finish to the prefill's finish
        for name in reversed(order):
            ds = [fastest[v] + to_pre[v] for v in succs[name] if v in to_pre]
            if ds and name != pre:
                to_pre[name] = max(ds)
        for name, rest in to_pre.items():
            budget[name] = min(budget[name], limit - head[name] - rest)
        budget[dec] = min(budget[dec], (target * (1 + TARGET_TOL) - head[pre] - fastest[pre]) * n_out)
    return {name: [c for c in cs if c.latency_ms <= budget[name]] for name, cs in configs.items()}


@dataclass
class Pruned:
    """What ``prune_dominated`` kept, and the types it took as loose without proof."""

    configs: dict[str, list[OpConfig]]
    assumed: set[str] = field(default_factory=set)


def prune_dominated(
    graph: GranularGraph,
    configs: dict[str, list[OpConfig]],
    tiers: dict[str, Tier],
    rate: float,
    cap: float,
    *,
    assume_loose: set[str],
    ttft_ops: tuple[str, str] | None = None,
    fixed_devices: Mapping[str, set[str]] | None = None,
) -> Pruned:
    """The configurations worth a binary variable (module docstring), from ``configs`` already pruned within
    device types (``prune_within_device``).

    ``assume_loose``: accelerator types taken as loose without proof; ``Pruned.assumed`` names those the
    proof would not have admitted: the ILP must relax their inventories and check its plan against them.
    ``ttft_ops``: (prefill, decode) of the final LLM when a TTFT target applies. ``fixed_devices``: the
    device types of ops placed outside ``configs`` (request-size slices, several types at once): an edge
    to one may cost its slowest transfer whatever the other end's type; those types are never loose
    unless unbounded (the slices' own device counts are not bounded here)."""
    within = configs
    edges = _EdgeDeltas(graph, within, tiers, fixed_devices or {})
    usage = {name: [c.tensor_parallel * replicas_needed(rate, c, cap) for c in cs] for name, cs in within.items()}
    cost = {
        name: [tiers[c.device].usd_per_h * u for c, u in zip(cs, usage[name], strict=True)]
        for name, cs in within.items()
    }
    n_out = max(graph.op(ttft_ops[1]).output_tokens, 1) if ttft_ops is not None else 1
    shared = {d for devs in (fixed_devices or {}).values() for d in devs}
    unbounded = {d for d, t in tiers.items() if not t.is_cpu and t.inventory is None}
    loose = {d for d, t in tiers.items() if not t.is_cpu and d not in shared} | unbounded
    assumed = (loose & assume_loose) - unbounded
    while True:
        kept = {
            name: _undominated(name, cs, cost[name], tiers, loose, edges, ttft_ops, n_out)
            for name, cs in within.items()
        }
        worst = dict.fromkeys(loose, 0)
        for name, idx in kept.items():
            most: dict[str, int] = {}
            for i in idx:
                d = within[name][i].device
                if d in worst:
                    most[d] = max(most.get(d, 0), usage[name][i])
            for d, n in most.items():
                worst[d] += n
        over = {d for d in loose - unbounded if worst[d] > (tiers[d].inventory or 0)}
        if not over - assumed:
            return Pruned({name: [within[name][i] for i in idx] for name, idx in kept.items()}, over & assumed)
        loose -= over - assumed


def likely_tight(configs: dict[str, list[OpConfig]], tiers: dict[str, Tier], rate: float, cap: float) -> set[str]:
    """Accelerator types a plan with every op on its cheapest configuration would overfill — CPU configurations
    priced at their share of a socket. Not a proof of anything: ``solve`` uses it to choose which
    inventories to assume loose, and checks its plan either way."""
    used: dict[str, int] = {}
    for cs in configs.values():
        best: tuple[float, OpConfig] | None = None
        for c in cs:
            t = tiers[c.device]
            if t.is_cpu:
                share = rate * c.core_s_per_call / (cap * (t.device.cores or 1))
                price = t.usd_per_h * share
            else:
                price = t.usd_per_h * c.tensor_parallel * replicas_needed(rate, c, cap)
            if best is None or price < best[0]:
                best = (price, c)
        if best is not None and not tiers[best[1].device].is_cpu:
            c = best[1]
            used[c.device] = used.get(c.device, 0) + c.tensor_parallel * replicas_needed(rate, c, cap)
    return {d for d, n in used.items() if (inv := tiers[d].inventory) is not None and n > inv}


class _EdgeDeltas:
    """Δ_e(d→d'): the most moving one end of edge e from type d to d' adds to its transfer time (memoised)."""

    def __init__(
        self,
        graph: GranularGraph,
        configs: dict[str, list[OpConfig]],
        tiers: dict[str, Tier],
        fixed: Mapping[str, set[str]],
    ) -> None:
        self.tiers = tiers
        self.devices_of = {name: tuple(sorted({c.device for c in cs})) for name, cs in configs.items()}
        self.fixed = {name: tuple(sorted(devs)) for name, devs in fixed.items()}
        self.ins: dict[str, list[tuple[float, str]]] = {o.name: [] for o in graph.ops}
        self.outs: dict[str, list[tuple[float, str]]] = {o.name: [] for o in graph.ops}
        for e in graph.edges:
            self.outs[e.src].append((e.bytes, e.dst))
            self.ins[e.dst].append((e.bytes, e.src))
        self._nic: dict[float, dict[str, float]] = {}
        self._delta: dict[tuple[float, tuple[str, ...], bool, str, str], float] = {}
        self._penalty: dict[tuple[str, str, str], float] = {}

    def _ms(self, nbytes: float) -> dict[str, float]:
        if nbytes not in self._nic:
            self._nic[nbytes] = {d: nic_transfer_ms(nbytes, t.device) for d, t in self.tiers.items()}
        return self._nic[nbytes]

    def delta(self, nbytes: float, nbr: str, d: str, d2: str) -> float:
        several = nbr in self.fixed
        nbr_devices = self.fixed[nbr] if several else self.devices_of[nbr]
        key = (nbytes, nbr_devices, several, d, d2)
        value = self._delta.get(key)
        if value is None:
            if nbytes <= 0:
                value = 0.0
            else:
                ms = self._ms(nbytes)
                if several:  # any of its transfers may apply, and nothing is saved
                    value = max((max(ms[d2], ms[n]) for n in nbr_devices if n != d2), default=0.0)
                else:  # t(a, n) = 0 on one type, else the slower end
                    value = max(
                        (0.0 if n == d2 else max(ms[d2], ms[n])) - (0.0 if n == d else max(ms[d], ms[n]))
                        for n in nbr_devices
                    )
            self._delta[key] = value
        return value

    def penalty_ms(self, op: str, d: str, d2: str) -> float:
        """Δin + Δout: the most a path through ``op`` grows when op moves from d to d2."""
        key = (op, d, d2)
        value = self._penalty.get(key)
        if value is None:
            ins = [self.delta(b, n, d, d2) for b, n in self.ins[op]]
            outs = [self.delta(b, n, d, d2) for b, n in self.outs[op]]
            value = self._penalty[key] = max(ins, default=0.0) + max(outs, default=0.0)
        return value


def _undominated(
    name: str,
    cs: list[OpConfig],
    cost: list[float],
    tiers: dict[str, Tier],
    loose: set[str],
    edges: _EdgeDeltas,
    ttft_ops: tuple[str, str] | None,
    n_out: int,
) -> list[int]:
    """Indices of ``cs`` that no configuration on another loose accelerator type dominates (``n_out``: the
    output tokens of the TTFT decode)."""
    by_device: dict[str, list[int]] = {}
    for i, c in enumerate(cs):
        by_device.setdefault(c.device, []).append(i)
    accel = [d for d in by_device if not tiers[d].is_cpu]
    dominators = [d for d in accel if d in loose]
    if len(accel) < 2 or not dominators:
        return list(range(len(cs)))
    # per loose type: its configurations by latency, with the running lexicographic minimum of (cost, l, i)
    sweep: dict[str, tuple[list[float], list[tuple[float, float, int]]]] = {}
    for d in dominators:
        order = sorted(by_device[d], key=lambda i: cs[i].latency_ms)
        best: list[tuple[float, float, int]] = []
        for i in order:
            t = (cost[i], cs[i].latency_ms, i)
            best.append(min(best[-1], t) if best else t)
        sweep[d] = ([cs[i].latency_ms for i in order], best)
    ttft_pre = ttft_ops[0] if ttft_ops is not None and name == ttft_ops[1] else None
    beaten = set()
    for d in accel:
        rivals = []
        for d2, (lats, best) in sweep.items():
            if d2 == d:
                continue
            slack = edges.penalty_ms(name, d, d2)
            if ttft_pre is not None:
                kv = max((edges.delta(b, n, d, d2) for b, n in edges.ins[name] if n == ttft_pre), default=0.0)
                slack = max(slack, n_out * kv)
            rivals.append((slack, lats, best))
        for i in by_device[d]:
            mine = (cost[i], cs[i].latency_ms, i)
            for slack, lats, best in rivals:
                k = bisect.bisect_right(lats, cs[i].latency_ms - slack)
                if k and best[k - 1] < mine:
                    beaten.add(i)
                    break
    return [i for i in range(len(cs)) if i not in beaten]
