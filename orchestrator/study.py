"""`hetagent study`: the TCO of many plans across SLAs, rates and fleets (written to docs/tco-study.md).

Every number is one call of the planner's public entry point, ``planner.plan_spec`` (the call `hetagent plan`
makes); this module only chooses the inventories, SLAs and rates and collects the answers.

Notation. G an agent graph, F a fleet (a cluster inventory: device pools, counts, prices), s an end-to-end SLA
(ms), λ a rate (runs/s). TCO(G, F, s, λ) is the $/h of the planner's minimum-TCO plan of G on F meeting s at λ
(the spec's TTFT target held fixed), or *infeasible* when no plan exists: a gap in a curve, never 0.

Fleets, built from the cluster files (`--clusters`):

* ``homogeneous:<type> [basis]`` — the best fleet of one device type: as many devices as the plan wants
  (``UNBOUNDED``), priced as in the first cluster (names sorted) that lists the type, plus that cluster's CPU types
  (also unbounded), which host the ops only a CPU can run (tools, search, transforms) and any op the planner finds
  cheaper there; or one CPU type alone. One fleet per (type, pricing basis); a cloud-priced type is kept only with
  all-cloud hosts when such a cluster exists.
* ``mixed:<cluster>`` — every cluster with two or more GPU/accelerator types, as written. The headline one
  (``--headline``, default ``mixed_fleet_cloud``) is all cloud-priced.
* ``older+cpu:<cluster>`` — the headline cluster's pre-Hopper GPUs (``OLDER_GPUS``) and its CPU pools.
* ``vendor:<v>@<cluster>`` — for each all-cloud cluster with accelerators of two or more vendors, the pools of one
  vendor plus the CPU pools: single-vendor prefill/decode disaggregation on the same devices and prices.

Pricing basis: a pool is 'cloud' ($/h rented) or 'owned' (capex / amortisation + TDP × PUE × $/kWh), resolved as
``costmodels.catalog.device_usd_per_h`` does; a fleet's basis is 'cloud', 'owned' or 'mixed (owned: …)'.

Ratios. r(F, s) = TCO(F, s) / TCO(headline, s): > 1 means the headline mixed fleet is cheaper. Two properties hold
by construction, up to the solver's MIP gap: TCO is non-increasing in s (a plan meeting s meets every s' > s), and
if F is a sub-inventory of M (the same pools, counts and prices, fewer of them; the older+cpu and vendor fleets)
then TCO(M, s) ≤ TCO(F, s), since every plan on F is a plan on M. The unbounded homogeneous fleets are no
sub-inventory of a mixed cluster: one can beat it where the cluster's 16 devices of a type run out.
The values reported are the solver's as found; neither property is imposed on them.

Sweeps skip what the planner has already decided: an infeasible plan names the tightest SLA any placement
reaches, so the SLAs below it are marked infeasible unsolved (``skipped``); likewise rates above the highest
sustainable one. A fleet that cannot run a graph at all (a model too large for it, no CPU tier for a host op) or
meets no SLA in the range has no curve, and the report says why.

Vendor split. For a cross-vendor cluster C at s, the gain of mixing vendors is
min_v TCO(vendor:v@C, s) / TCO(C, s) ≥ 1, and the plan on C names the LLM nodes whose prefill and decode run on
devices of different vendors (prefill device → decode device): the gain is due to the split where such nodes exist.
"""

from __future__ import annotations

import math
import platform
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from compiler.spec import AgentGraph
    from costmodels.catalog import Catalog, ClusterInventory, DevicePool
    from planner.plan import Plan

# Pre-Hopper NVIDIA data-centre GPUs in the catalog: Ampere (A100, A10G), Turing (T4), Volta (V100) and the Ada
# inference cards (L4, L40S). "Older GPUs" of the issue: the seed design pairs them with CPUs and newer accelerators.
OLDER_GPUS = frozenset({"a100-80g", "a100-40g", "a10g", "l4", "l40s", "t4", "v100"})
HEADLINE = "mixed_fleet_cloud"
# Devices of a homogeneous fleet: more than any example graph's plan uses, so the fleet is "as large as the plan
# wants" (the planner's own homogeneous baselines are unbounded in the same way).
UNBOUNDED = 4096


class StudyError(ValueError):
    """Bad study input (no graphs, no clusters, an SLA range that is not LO:HI)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoolInfo(_Strict):
    type: str = Field(description="Hardware catalog id.")
    vendor: str
    device_class: str = Field(description="cpu, gpu or accelerator.")
    count: int = Field(description="Devices (GPUs, CPU sockets) in the fleet.")
    pricing: str = Field(description="'cloud' ($/h rented) or 'owned' (capex amortised + power).")
    usd_per_h_per_device: float = Field(description="TCO of one device-hour on this basis.")
    price_source: str = Field(description="Where the price comes from (catalog `sources`, or the cluster's override).")
    efficiency_compute: float = Field(description="Achieved / peak FLOP/s of large GEMMs (catalog).")
    efficiency_memory: float = Field(description="Achieved / peak memory bandwidth (catalog).")


class FleetInfo(_Strict):
    name: str = Field(description="'homogeneous:<type> [basis]', 'mixed:<cluster>', 'older+cpu:…' or 'vendor:…'.")
    kind: str = Field(description="homogeneous, mixed, older+cpu or vendor.")
    source_cluster: str = Field(description="Cluster file the pools come from.")
    basis: str = Field(description="Pricing basis: cloud, owned, or mixed (owned: …).")
    host_cpus: list[str] = Field(description="CPU pools in the fleet (host ops; empty for a CPU-only fleet).")
    pools: list[PoolInfo]
    sub_inventory_of_headline: bool = Field(description="Every pool is in the headline cluster with the same count.")


class StudyPoint(_Strict):
    graph: str
    fleet: str
    sla_ms: float
    rate_per_s: float
    feasible: bool
    tco_usd_per_hour: float | None = Field(None, description="Planned $/h; None when infeasible (a gap, not 0).")
    usd_per_1k_runs: float | None = None
    predicted_e2e_ms: float | None = None
    optimality_gap: float | None = Field(None, description="Relative MIP gap the solver stopped at.")
    devices: dict[str, int] = Field(default_factory=dict, description="Devices allocated per type.")
    cross_vendor_llm: list[str] = Field(
        default_factory=list, description="'node: prefill device → decode device' where the accelerator vendors differ."
    )
    reason: str | None = Field(None, description="Why no plan exists (planner's reason or error).")
    tightest_sla_ms: float | None = Field(None, description="Infeasible: the tightest SLA the fleet reaches here.")
    max_rate_per_s: float | None = Field(None, description="Infeasible: the highest rate the fleet sustains.")
    skipped: bool = Field(
        False, description="Not solved: infeasible by the planner's bound from another point (tightest SLA, max rate)."
    )


class VendorSplit(_Strict):
    graph: str
    cluster: str = Field(description="The cross-vendor cluster.")
    sla_ms: float
    cross_vendor_tco_usd_per_hour: float | None
    best_single_vendor: str | None = Field(description="Cheapest vendor:<v>@<cluster> fleet at this SLA.")
    single_vendor_tco_usd_per_hour: float | None
    ratio: float | None = Field(description="Best single-vendor TCO / cross-vendor TCO (> 1: mixing vendors helps).")
    split_nodes: list[str] = Field(description="LLM nodes whose prefill and decode the cross-vendor plan splits.")


class GraphInfo(_Strict):
    name: str
    file: str
    spec_sla_ms: float
    spec_ttft_ms: float | None
    skipped: dict[str, str] = Field(
        default_factory=dict, description="Fleet → why it has no curve (cannot run the graph, or no SLA in range)."
    )


class Study(_Strict):
    headline: str = Field(description="The mixed fleet every ratio divides by.")
    rate_per_s: float = Field(description="Rate of the TCO-vs-SLA sweep, runs/s.")
    slas_ms: list[float]
    rates_per_s: list[float] = Field(description="Rates of the TCO-vs-rate sweep (at each graph's spec SLA).")
    time_limit_s: float = Field(description="MIP time limit per plan.")
    machine: str
    seconds: float = Field(description="Wall time of the whole study.")
    plans_solved: int
    fleets: list[FleetInfo]
    graphs: list[GraphInfo]
    sla_points: list[StudyPoint]
    rate_points: list[StudyPoint]
    vendor_splits: list[VendorSplit]


@dataclass(frozen=True)
class Fleet:
    info: FleetInfo
    cluster: ClusterInventory


# ----------------------------------------------------------------------------- inputs


def machine_line() -> str:
    """CPU model and core count of this machine (the study runs the planner only; no accelerator is used)."""
    import os

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {platform.machine()} VM ({model}), {platform.system()}, no GPU"


# ----------------------------------------------------------------------------- fleets


def pool_pricing(pool: DevicePool, catalog: Catalog) -> str:
    dev = catalog.device(pool.type)
    return pool.pricing or ("cloud" if (pool.price_usd_per_h or dev.price_usd_per_h) is not None else "owned")


def _basis(pools: Iterable[DevicePool], catalog: Catalog) -> str:
    owned = [p.type for p in pools if pool_pricing(p, catalog) == "owned"]
    total = len(list(pools))
    if not owned:
        return "cloud"
    return "owned" if len(owned) == total else f"mixed (owned: {', '.join(owned)})"


def _pool_info(pool: DevicePool, cluster: ClusterInventory, catalog: Catalog) -> PoolInfo:
    from costmodels.catalog import device_usd_per_h

    dev = catalog.device(pool.type)
    pricing = pool_pricing(pool, catalog)
    if pricing == "cloud":
        source = (
            f"{cluster.name}.yaml override"
            if pool.price_usd_per_h
            else dev.sources.get("price_usd_per_h", "catalog (no source given)")
        )
    else:
        capex = "cluster override" if pool.capex_usd else dev.sources.get("capex_usd", "catalog")
        source = (
            f"capex: {capex}; / {cluster.amortisation_years:g} y + {dev.tdp_w:g} W × PUE {cluster.pue:g} × "
            f"${cluster.electricity_usd_per_kwh:g}/kWh"
        )
    return PoolInfo(
        type=dev.name,
        vendor=dev.vendor.lower(),
        device_class=dev.device_class.value,
        count=pool.count,
        pricing=pricing,
        usd_per_h_per_device=round(device_usd_per_h(dev, pool, cluster), 4),
        price_source=source,
        efficiency_compute=dev.efficiency.compute,
        efficiency_memory=dev.efficiency.memory,
    )


def _sub(cluster: ClusterInventory, types: Iterable[str], name: str) -> ClusterInventory:
    keep = set(types)
    return cluster.model_copy(
        update={
            "name": name,
            "description": f"sub-inventory of {cluster.name}",
            "devices": [p for p in cluster.devices if p.type in keep],
        }
    )


def _is_cpu(pool: DevicePool, catalog: Catalog) -> bool:
    return catalog.device(pool.type).device_class.value == "cpu"


def build_fleets(clusters: list[ClusterInventory], catalog: Catalog, headline: str = HEADLINE) -> list[Fleet]:
    """Homogeneous, mixed, older+cpu and single-vendor fleets (see the module docstring)."""
    by_name = {c.name: c for c in clusters}
    if headline not in by_name:
        raise StudyError(f"headline cluster {headline!r} is not among {sorted(by_name)}")
    head = by_name[headline]
    fleets: list[Fleet] = []

    head_pools = {
        (i.type, i.count, i.pricing, i.usd_per_h_per_device)
        for i in (_pool_info(q, head, catalog) for q in head.devices)
    }

    def add(kind: str, name: str, cluster: ClusterInventory, source: ClusterInventory) -> None:
        pools = [_pool_info(p, source, catalog) for p in cluster.devices]
        has_accel = any(not _is_cpu(p, catalog) for p in cluster.devices)
        info = FleetInfo(
            name=name,
            kind=kind,
            source_cluster=source.name,
            basis=_basis(cluster.devices, catalog),
            host_cpus=[p.type for p in cluster.devices if _is_cpu(p, catalog)] if has_accel else [],
            pools=pools,
            sub_inventory_of_headline=all(
                (i.type, i.count, i.pricing, i.usd_per_h_per_device) in head_pools for i in pools
            ),
        )
        fleets.append(Fleet(info, cluster.model_copy(update={"name": re.sub(r"[^a-z0-9_.-]+", "-", name.lower())})))

    # homogeneous: one per (type, fleet basis), priced as in the first cluster (by name) that has it; unbounded
    best: dict[tuple[str, str], tuple[ClusterInventory, ClusterInventory]] = {}
    for c in clusters:
        cpus = [p.type for p in c.devices if _is_cpu(p, catalog)]
        for p in c.devices:
            sub = _sub(c, [p.type] if _is_cpu(p, catalog) else [p.type, *cpus], c.name)
            sub = sub.model_copy(update={"devices": [q.model_copy(update={"count": UNBOUNDED}) for q in sub.devices]})
            best.setdefault((p.type, _basis(sub.devices, catalog)), (sub, c))
    for (dtype, basis), (sub, src) in sorted(best.items()):
        # a cloud-priced device whose fleet is 'mixed' only through owned hosts: the all-cloud variant suffices
        if basis != "cloud" and (dtype, "cloud") in best and pool_pricing(sub.pool(dtype), catalog) == "cloud":
            continue
        add("homogeneous", f"homogeneous:{dtype} [{basis}]", sub, src)
    for c in clusters:
        if sum(not _is_cpu(p, catalog) for p in c.devices) >= 2:
            add("mixed", f"mixed:{c.name}", c, c)
    older = [p.type for p in head.devices if p.type in OLDER_GPUS]
    if older:
        cpus = [p.type for p in head.devices if _is_cpu(p, catalog)]
        add("older+cpu", f"older+cpu:{head.name}", _sub(head, [*older, *cpus], head.name), head)
    for c in cross_vendor_clusters(clusters, catalog):
        cpus = [p.type for p in c.devices if _is_cpu(p, catalog)]
        for v in sorted(_accel_vendors(c, catalog)):
            types = [
                p.type for p in c.devices if not _is_cpu(p, catalog) and catalog.device(p.type).vendor.lower() == v
            ]
            add("vendor", f"vendor:{v}@{c.name}", _sub(c, [*types, *cpus], c.name), c)
    return fleets


def _accel_vendors(c: ClusterInventory, catalog: Catalog) -> set[str]:
    return {catalog.device(p.type).vendor.lower() for p in c.devices if not _is_cpu(p, catalog)}


def cross_vendor_clusters(clusters: list[ClusterInventory], catalog: Catalog) -> list[ClusterInventory]:
    """All-cloud clusters with accelerators of two or more vendors: like-for-like vendor comparisons."""
    return [c for c in clusters if len(_accel_vendors(c, catalog)) >= 2 and _basis(c.devices, catalog) == "cloud"]


# ----------------------------------------------------------------------------- sweeps


def cross_vendor_llm(plan: Plan, catalog: Catalog) -> list[str]:
    """LLM nodes whose prefill and decode run on GPUs/accelerators of different vendors (slices included).

    A CPU on either side is a tier split, not a vendor split, and is left out of the comparison."""
    devs: dict[str, dict[str, set[str]]] = {}
    for o in plan.ops:
        if o.kind in ("prefill", "decode"):
            names = {o.device} | {s.device for s in o.slices}
            accel = {n for n in names if catalog.device(n).device_class.value != "cpu"}
            devs.setdefault(o.source_node, {}).setdefault(o.kind, set()).update(accel)
    out = []
    for node, d in sorted(devs.items()):
        pre, dec = d.get("prefill", set()), d.get("decode", set())
        vendors = [{catalog.device(x).vendor.lower() for x in side} for side in (pre, dec)]
        if pre and dec and vendors[0] != vendors[1]:
            out.append(f"{node}: {'+'.join(sorted(pre))} → {'+'.join(sorted(dec))}")
    return out


class _Planner:
    """plan_spec with a cache keyed by graph, pools and economics (equal sub-inventories are solved once)."""

    def __init__(self, catalog: Catalog, time_limit_s: float, progress: Callable[[str], None] | None) -> None:
        self.catalog, self.time_limit_s, self.progress = catalog, time_limit_s, progress
        self.cache: dict[tuple[str, str, float, float], StudyPoint] = {}
        self.solved = 0

    def point(self, graph: AgentGraph, fleet: Fleet, sla_ms: float, rate: float) -> StudyPoint:
        from costmodels.catalog import CatalogError
        from planner import PlanningError, PlanOptions, plan_spec

        inv = fleet.cluster.model_dump_json(exclude={"name", "description"})
        key = (graph.metadata.name, inv, sla_ms, rate)
        base = dict(graph=graph.metadata.name, fleet=fleet.info.name, sla_ms=sla_ms, rate_per_s=rate)
        if key in self.cache:
            return self.cache[key].model_copy(update=base)
        opts = PlanOptions(rate_per_s=rate, sla_ms=sla_ms, baselines=False, time_limit_s=self.time_limit_s)
        try:
            plan = plan_spec(graph, fleet.cluster, opts, self.catalog)
        except (PlanningError, CatalogError) as exc:
            pt = StudyPoint(**base, feasible=False, reason=f"cannot run: {exc}")
        else:
            self.solved += 1
            pt = (
                StudyPoint(
                    **base,
                    feasible=True,
                    tco_usd_per_hour=plan.tco_usd_per_hour,
                    usd_per_1k_runs=plan.usd_per_1k_runs,
                    predicted_e2e_ms=plan.predicted_e2e_ms,
                    optimality_gap=plan.optimality_gap,
                    devices={d.device: d.allocated for d in plan.devices if d.allocated},
                    cross_vendor_llm=cross_vendor_llm(plan, self.catalog),
                )
                if plan.feasible
                else StudyPoint(
                    **base,
                    feasible=False,
                    reason=plan.reason,
                    tightest_sla_ms=plan.tightest_sla_ms,
                    max_rate_per_s=plan.max_rate_per_s,
                )
            )
        if self.progress:
            tco = f"${pt.tco_usd_per_hour:.2f}/h" if pt.feasible else "infeasible"
            self.progress(f"{base['graph']} · {fleet.info.name} · {sla_ms:g} ms · {rate:g}/s: {tco}")
        self.cache[key] = pt
        return pt


def sla_sweep(
    planner: _Planner, graph: AgentGraph, fleet: Fleet, slas_ms: list[float], rate: float
) -> list[StudyPoint]:
    """TCO at each SLA (ascending), not solving SLAs the planner has already shown infeasible.

    An infeasible plan names the tightest e2e latency any placement reaches (a latency-minimising ILP, TTFT aside),
    so every SLA below it is infeasible too; no placement at all at this rate makes every SLA infeasible."""
    out: list[StudyPoint] = []
    bound, why = 0.0, ""
    for s in sorted(slas_ms):
        if s < bound:
            base = dict(graph=graph.metadata.name, fleet=fleet.info.name, sla_ms=s, rate_per_s=rate)
            out.append(StudyPoint(**base, feasible=False, skipped=True, reason=why))
            continue
        pt = planner.point(graph, fleet, s, rate)
        out.append(pt)
        if pt.feasible or (pt.reason or "").startswith("cannot run"):
            continue
        if pt.max_rate_per_s is not None:
            bound, why = math.inf, f"no placement sustains {rate:g} runs/s: {pt.reason}"
        elif pt.tightest_sla_ms is not None and not (pt.reason or "").startswith("the TTFT"):
            bound, why = pt.tightest_sla_ms, f"below the tightest SLA this fleet reaches, {pt.tightest_sla_ms:.1f} ms"
    return out


def rate_sweep(
    planner: _Planner, graph: AgentGraph, fleet: Fleet, sla_ms: float, rates: list[float]
) -> list[StudyPoint]:
    """TCO at each rate (ascending), not solving rates above the highest one the planner found the fleet sustains."""
    out: list[StudyPoint] = []
    top = math.inf
    for r in sorted(rates):
        if r > top * (1 + 1e-6):
            base = dict(graph=graph.metadata.name, fleet=fleet.info.name, sla_ms=sla_ms, rate_per_s=r)
            reason = f"above the highest rate this fleet sustains, {top:.3g} runs/s"
            out.append(StudyPoint(**base, feasible=False, skipped=True, reason=reason))
            continue
        pt = planner.point(graph, fleet, sla_ms, r)
        out.append(pt)
        if pt.max_rate_per_s is not None:
            top = pt.max_rate_per_s
    return out


def run_study(
    graph_files: list[Path],
    clusters: list[ClusterInventory],
    catalog: Catalog,
    slas_ms: list[float],
    rates_per_s: list[float],
    rate_per_s: float = 10.0,
    headline: str = HEADLINE,
    time_limit_s: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> Study:
    """Plan every graph on every fleet at every SLA (at ``rate_per_s``) and at every rate (at the spec's SLA)."""
    from compiler.spec import load_graph

    if not graph_files:
        raise StudyError("no graph files given")
    t0 = time.perf_counter()
    slas_ms, rates_per_s = sorted(slas_ms), sorted(rates_per_s)
    fleets = build_fleets(clusters, catalog, headline)
    planner = _Planner(catalog, time_limit_s, progress)
    graphs, sla_points, rate_points, splits = [], [], [], []
    cross = {c.name for c in cross_vendor_clusters(clusters, catalog)}
    for path in graph_files:
        g = load_graph(path, catalog)
        info = GraphInfo(
            name=g.metadata.name, file=str(path), spec_sla_ms=g.spec.sla.e2e_ms, spec_ttft_ms=g.spec.sla.ttft_ms
        )
        by_fleet: dict[str, list[StudyPoint]] = {}
        for f in fleets:
            pts = sla_sweep(planner, g, f, slas_ms, rate_per_s)
            by_fleet[f.info.name] = pts
            sla_points += pts
            if not any(p.feasible for p in pts):
                last = next((p.reason for p in reversed(pts) if not p.skipped and p.reason), "")
                why = f"no plan meets any SLA up to {max(slas_ms):g} ms: "
                info.skipped[f.info.name] = last if last.startswith("cannot run") else why + last.split(" along ")[0]
        for f in fleets:
            if f.info.kind == "vendor" or f.info.name in info.skipped or f.info.basis != "cloud":
                continue
            rate_points += rate_sweep(planner, g, f, info.spec_sla_ms, rates_per_s)
        for c in sorted(cross):
            vendors = [n for n in by_fleet if n.startswith("vendor:") and n.endswith(f"@{c}")]
            for i, s in enumerate(slas_ms):
                mixed = by_fleet[f"mixed:{c}"][i]
                singles = [(by_fleet[n][i].tco_usd_per_hour, n) for n in vendors if by_fleet[n][i].feasible]
                best = min(singles, key=lambda t: t[0] or math.inf) if singles else None
                splits.append(
                    VendorSplit(
                        graph=info.name,
                        cluster=c,
                        sla_ms=s,
                        cross_vendor_tco_usd_per_hour=mixed.tco_usd_per_hour,
                        best_single_vendor=best[1] if best else None,
                        single_vendor_tco_usd_per_hour=best[0] if best else None,
                        ratio=round(best[0] / mixed.tco_usd_per_hour, 4)
                        if best and best[0] and mixed.tco_usd_per_hour
                        else None,
                        split_nodes=mixed.cross_vendor_llm,
                    )
                )
        graphs.append(info)
    return Study(
        headline=f"mixed:{headline}",
        rate_per_s=rate_per_s,
        slas_ms=slas_ms,
        rates_per_s=rates_per_s,
        time_limit_s=time_limit_s,
        machine=machine_line(),
        seconds=round(time.perf_counter() - t0, 1),
        plans_solved=planner.solved,
        fleets=[f.info for f in fleets],
        graphs=graphs,
        sla_points=sla_points,
        rate_points=rate_points,
        vendor_splits=splits,
    )
