"""Plots (PNG, matplotlib's Agg backend, imported lazily) and the markdown report of `hetagent study`.

Infeasible points are NaN in the plotted series, so a curve has a gap there (matplotlib breaks a line at NaN);
tables print them as "—". Fleets on a non-cloud pricing basis are drawn dashed and named with their basis.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from pathlib import Path

from orchestrator.study import UNBOUNDED, FleetInfo, Study, StudyPoint

SLA_KINDS = ("homogeneous", "mixed", "older+cpu")
MARKERS = "osD^vP*Xh<>p"
REPORTED_FIGURE = (
    "The seed design's authors (Asgar, Nguyen, Katti) reported in Oct 2025 that B200 prefill + Gaudi 3 decode "
    "reach ~1.7x better TCO per million tokens than single-vendor prefill/decode disaggregation "
    "(as summarised in the project's shared/reference/anchors.md; reported figure, we hold no primary link)."
)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _series(points: Iterable[StudyPoint], field: str) -> list[float]:
    return [float(getattr(p, field)) if p.feasible and getattr(p, field) is not None else float("nan") for p in points]


def _plot(
    path: Path,
    curves: list[tuple[FleetInfo, list[float], list[float], int]],
    xlabel: str,
    ylabel: str,
    title: str,
    dpi: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    cmap = plt.get_cmap("tab20")
    for fleet, xs, ys, i in curves:
        style = "-" if fleet.basis == "cloud" else "--"
        width = 2.6 if fleet.kind == "mixed" else 1.4
        color = cmap((2 * i) % 20 + (2 * i // 20) % 2)  # the dark shades first: neighbours differ in hue
        ax.plot(xs, ys, style, marker=MARKERS[i % len(MARKERS)], ms=4, lw=width, color=color, label=fleet.name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def write_plots(study: Study, out_dir: Path, dpi: int = 80) -> list[Path]:
    """Two PNGs per graph: TCO vs SLA and $ per 1,000 runs vs rate."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fleets = {f.name: f for f in study.fleets}
    index = {f.name: i for i, f in enumerate(study.fleets)}  # one colour and marker per fleet in every plot
    written = []
    for g in study.graphs:
        curves = []
        for f in study.fleets:
            if f.kind not in SLA_KINDS or f.name in g.skipped:
                continue
            pts = [p for p in study.sla_points if p.graph == g.name and p.fleet == f.name]
            curves.append((f, [p.sla_ms / 1000 for p in pts], _series(pts, "tco_usd_per_hour"), index[f.name]))
        path = out_dir / f"{_slug(g.name)}-tco-vs-sla.png"
        _plot(
            path,
            curves,
            "end-to-end SLA, s",
            "planned TCO, $/h",
            f"{g.name}: TCO vs SLA at {study.rate_per_s:g} runs/s (dashed: not all cloud-priced)",
            dpi,
        )
        written.append(path)
        rate_curves = []
        for name in dict.fromkeys(p.fleet for p in study.rate_points if p.graph == g.name):
            pts = [p for p in study.rate_points if p.graph == g.name and p.fleet == name]
            rate_curves.append(
                (fleets[name], [p.rate_per_s for p in pts], _series(pts, "usd_per_1k_runs"), index[name])
            )
        path = out_dir / f"{_slug(g.name)}-tco-vs-rate.png"
        _plot(
            path,
            rate_curves,
            "rate, runs/s",
            "planned $ per 1,000 runs",
            f"{g.name}: TCO vs rate at the spec's SLA ({g.spec_sla_ms:g} ms), all-cloud fleets",
            dpi,
        )
        written.append(path)
    return written


# ----------------------------------------------------------------------------- markdown


def _usd(x: float | None) -> str:
    return "—" if x is None else f"{x:,.2f}"


def _fleet_rows(fleets: Iterable[FleetInfo]) -> list[str]:
    rows = [
        "| fleet | pricing basis | devices (count × type: pricing, $/device-h, efficiency compute / memory) |",
        "|---|---|---|",
    ]
    for f in fleets:
        pools = "; ".join(
            f"{'unbounded' if p.count >= UNBOUNDED else p.count} × {p.type}: {p.pricing}, ${p.usd_per_h_per_device:g}, "
            f"{p.efficiency_compute:g} / {p.efficiency_memory:g}"
            for p in f.pools
        )
        rows.append(f"| {f.name} | {f.basis} | {pools} |")
    return rows


def _ratio(p: StudyPoint, ref: StudyPoint | None) -> str:
    if not p.feasible or p.tco_usd_per_hour is None:
        return "—"
    if ref is None or not ref.feasible or not ref.tco_usd_per_hour:
        return _usd(p.tco_usd_per_hour)
    return f"{_usd(p.tco_usd_per_hour)} ({p.tco_usd_per_hour / ref.tco_usd_per_hour:.2f}×)"


def headline_rows(study: Study) -> list[tuple[str, float, float | None, str | None, float | None, float | None]]:
    """(graph, SLA, headline $/h, best all-cloud homogeneous fleet, its ratio, older+cpu ratio) per point."""
    cloud_homog = [f.name for f in study.fleets if f.kind == "homogeneous" and f.basis == "cloud"]
    older = [f.name for f in study.fleets if f.kind == "older+cpu"]
    at = {(p.graph, p.fleet, p.sla_ms): p for p in study.sla_points}
    out = []
    for g in study.graphs:
        for s in study.slas_ms:
            head = at[g.name, study.headline, s]
            homs = [at[g.name, n, s] for n in cloud_homog if at[g.name, n, s].feasible]
            best = min(homs, key=lambda p: p.tco_usd_per_hour or 0.0) if homs else None
            h = head.tco_usd_per_hour if head.feasible else None
            ratio = best.tco_usd_per_hour / h if best and best.tco_usd_per_hour and h else None
            o = at[g.name, older[0], s] if older else None
            oratio = o.tco_usd_per_hour / h if o and o.feasible and o.tco_usd_per_hour and h else None
            out.append((g.name, s, h, best.fleet if best else None, ratio, oratio))
    return out


def write_markdown(study: Study, path: Path, plots_dir: Path, command: str) -> None:
    rel = Path(os.path.relpath(plots_dir.resolve(), path.resolve().parent))
    at = {(p.graph, p.fleet, p.sla_ms): p for p in study.sla_points}
    L = [
        "# TCO study: heterogeneous vs homogeneous fleets across SLAs and rates",
        "",
        f"Generated by `{command}` on a {study.machine} in {study.seconds:g} s ({study.plans_solved} plans solved, "
        f"MIP time limit {study.time_limit_s:g} s per plan). Every number below is **planned** (the planner's cost "
        "model and ILP, `planner.plan_spec`, as `hetagent plan` computes it), not measured on the hardware named: "
        "this machine has no GPU. Method and notation: `orchestrator/study.py`'s docstring.",
        "",
        f"- TCO-vs-SLA sweep: {len(study.slas_ms)} log-spaced SLAs "
        f"({', '.join(f'{s:g}' for s in study.slas_ms)} ms) at {study.rate_per_s:g} runs/s (the example specs carry "
        "no rate; 10 runs/s is a small production service). Each graph's spec TTFT target is held fixed.",
        f"- TCO-vs-rate sweep: {', '.join(f'{r:g}' for r in study.rates_per_s)} runs/s at each graph's spec SLA, "
        "all-cloud fleets only.",
        f"- Ratios divide by the headline mixed fleet, `{study.headline}` (> 1: the mixed fleet is cheaper); an "
        "infeasible point is '—' in tables and a gap in plots, never 0.",
        "- **Pricing basis.** 'cloud' fleets pay a rented $/device-hour; 'owned' ones amortise capex over the "
        "cluster's years and add TDP × PUE × $/kWh, which is far below any rental price. A fleet marked 'owned' or "
        "'mixed (owned: …)' is therefore not comparable like for like with a 'cloud' one; plots draw them dashed. "
        "The headline comparison uses only all-cloud fleets.",
        "- **Gaudi 3 has no public rental price in the reference material** (shared/reference/hardware.md lists capex "
        "only). Its cloud price, $3.83/h, is an assumption: the catalog's H100 cloud price × Intel's quoted capex "
        "ratio (7.5164 × 15,625 / 30,700), written in configs/clusters/mixed_fleet_cloud.yaml. Conclusions about "
        "Gaudi 3 move with it.",
        "- Homogeneous fleets are the best fleet of one type: as many devices as the plan wants (like the "
        "planner's own homogeneous baselines), hosts included. The mixed clusters and their older+cpu and vendor "
        "sub-fleets have the counts their files give (16 of each accelerator in mixed_fleet_cloud), so a "
        "homogeneous fleet can beat a mixed cluster where the cluster runs out of a type.",
        "- Cloud CPU sockets are priced from AWS whole-instance prices ($5.56–6.45 per socket-hour), so every "
        "all-cloud fleet pays at least one host socket for the graph's host-only ops (tools, search, transforms).",
        "",
        "## Headline: the all-cloud mixed fleet vs the best all-cloud homogeneous fleet",
        "",
        f"| graph | SLA ms | {study.headline} $/h | best all-cloud homogeneous fleet | its TCO ÷ mixed | "
        "older GPUs + CPUs ÷ mixed |",
        "|---|---|---|---|---|---|",
    ]
    rows = headline_rows(study)
    for gname, s, h, best, ratio, oratio in rows:
        L.append(
            f"| {gname} | {s:g} | {_usd(h)} | {best or '—'} | {'—' if ratio is None else f'{ratio:.2f}×'} | "
            f"{'—' if oratio is None else f'{oratio:.2f}×'} |"
        )
    ratios = [r[4] for r in rows if r[4] is not None]
    if ratios:
        L += [
            "",
            f"Across the {len(ratios)} points where both are feasible: median {statistics.median(ratios):.2f}×, "
            f"range {min(ratios):.2f}–{max(ratios):.2f}× (best homogeneous TCO ÷ mixed TCO). Below 1, an unbounded "
            "homogeneous fleet beats the mixed cluster because the cluster runs out of its cheapest type.",
        ]
    L += ["", "## Fleets and their price and efficiency assumptions", ""]
    L += _fleet_rows(study.fleets)
    L += [
        "",
        "Where each device's price comes from:",
        "",
        "| device | pricing | $/device-h | source |",
        "|---|---|---|---|",
    ]
    seen = set()
    for f in study.fleets:
        for p in f.pools:
            key = (p.type, p.pricing, p.usd_per_h_per_device)
            if key not in seen:
                seen.add(key)
                L.append(f"| {p.type} | {p.pricing} | {p.usd_per_h_per_device:g} | {p.price_source} |")
    for g in study.graphs:
        slug = _slug(g.name)
        shown = [f for f in study.fleets if f.kind in SLA_KINDS and f.name not in g.skipped]
        L += [
            "",
            f"## {g.name} (`{g.file}`; spec SLA {g.spec_sla_ms:g} ms"
            + (f", TTFT {g.spec_ttft_ms:g} ms" if g.spec_ttft_ms else "")
            + ")",
            "",
            f"![{g.name}: TCO vs SLA]({rel / f'{slug}-tco-vs-sla.png'})",
            "",
            f"Planned TCO, $/h, at {study.rate_per_s:g} runs/s (ratio to `{study.headline}`):",
            "",
            "| fleet | basis | " + " | ".join(f"{s:g} ms" for s in study.slas_ms) + " |",
            "|---|---|" + "---|" * len(study.slas_ms),
        ]
        for f in shown:
            cells = [_ratio(at[g.name, f.name, s], at.get((g.name, study.headline, s))) for s in study.slas_ms]
            L.append(f"| {f.name} | {f.basis} | " + " | ".join(cells) + " |")
        L += ["", "Assumptions of the fleets in this figure:", ""] + _fleet_rows(shown)
        if g.skipped:
            L += ["", "No curve (skipped):", ""]
            L += [f"- {n}: {why}" for n, why in g.skipped.items()]
        rpts = [p for p in study.rate_points if p.graph == g.name]
        if rpts:
            names = list(dict.fromkeys(p.fleet for p in rpts))
            L += [
                "",
                f"![{g.name}: TCO vs rate]({rel / f'{slug}-tco-vs-rate.png'})",
                "",
                f"Planned $ per 1,000 runs at the spec SLA ({g.spec_sla_ms:g} ms):",
                "",
                "| fleet | " + " | ".join(f"{r:g}/s" for r in study.rates_per_s) + " |",
                "|---|" + "---|" * len(study.rates_per_s),
            ]
            for n in names:
                by_rate = {p.rate_per_s: p for p in rpts if p.fleet == n}
                cells = [
                    f"{by_rate[r].usd_per_1k_runs:.3f}" if by_rate[r].feasible and by_rate[r].usd_per_1k_runs else "—"
                    for r in study.rates_per_s
                ]
                L.append(f"| {n} | " + " | ".join(cells) + " |")
            L += ["", "(The prices and efficiencies of these fleets are in the table above this one's figure.)"]
    L += _vendor_section(study)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")


def _vendor_section(study: Study) -> list[str]:
    L = [
        "",
        "## Splitting prefill and decode across vendors",
        "",
        "For each all-cloud cluster with accelerators of several vendors, the cross-vendor plan is compared with the "
        "cheapest single-vendor sub-fleet of the same cluster (same devices, counts and prices; host CPUs kept), at "
        f"{study.rate_per_s:g} runs/s. Ratio = best single-vendor TCO ÷ cross-vendor TCO (≥ 1 by construction, up "
        "to the MIP gap). 'split' lists the LLM nodes whose prefill and decode the cross-vendor plan puts on "
        "different vendors: where it is empty, any gain comes from placing whole nodes, not from splitting.",
        "",
        "| graph | cluster | SLA ms | cross-vendor $/h | best single vendor | its $/h | ratio | split |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in study.vendor_splits:
        if v.cross_vendor_tco_usd_per_hour is None and v.best_single_vendor is None:
            continue  # infeasible on every fleet of the cluster: the per-graph tables show the gap
        single = v.best_single_vendor or ("none feasible" if v.cross_vendor_tco_usd_per_hour else "—")
        L.append(
            f"| {v.graph} | {v.cluster} | {v.sla_ms:g} | {_usd(v.cross_vendor_tco_usd_per_hour)} | {single} | "
            f"{_usd(v.single_vendor_tco_usd_per_hour)} | {'—' if v.ratio is None else f'{v.ratio:.2f}×'} | "
            f"{'; '.join(v.split_nodes) or '—'} |"
        )
    L.append("")
    for c in dict.fromkeys(v.cluster for v in study.vendor_splits):
        pairs: dict[str, int] = {}
        for v in study.vendor_splits:
            if v.cluster == c:
                for node in v.split_nodes:
                    pair = node.split(": ", 1)[1]
                    pairs[pair] = pairs.get(pair, 0) + 1
        rs = [v.ratio for v in study.vendor_splits if v.cluster == c and v.split_nodes and v.ratio is not None]
        where = (
            ", ".join(
                f"{p} ({n} LLM node{'s' if n > 1 else ''})" for p, n in sorted(pairs.items(), key=lambda t: -t[1])
            )
            or "none"
        )
        med = f"median gain {statistics.median(rs):.2f}× (range {min(rs):.2f}–{max(rs):.2f}×)" if rs else "no gain"
        L.append(f"- `{c}`: prefill → decode splits chosen: {where}; where it splits, {med}.")
    split = [v.ratio for v in study.vendor_splits if v.split_nodes and v.ratio is not None]
    nosplit = [v.ratio for v in study.vendor_splits if not v.split_nodes and v.ratio is not None]
    L += ["", REPORTED_FIGURE, ""]
    if split:
        L.append(
            f"Here, at the {len(split)} points where a cross-vendor plan splits prefill and decode across vendors, "
            f"it is {statistics.median(split):.2f}× cheaper than the best single-vendor sub-fleet (median; range "
            f"{min(split):.2f}–{max(split):.2f}×); at the {len(nosplit)} other feasible points the cross-vendor plan "
            f"does not split and its gain is {statistics.median(nosplit) if nosplit else float('nan'):.2f}× (median)."
        )
    else:
        L.append(
            "No cross-vendor plan in this study splits an LLM's prefill and decode across vendors: with these prices "
            "and cost models a single vendor serves both phases of each LLM at least as cheaply."
        )
    L.append(
        "The comparison differs from the reported one: here the unit is planned $/h of a whole agent graph at an "
        "end-to-end SLA (host CPUs included), on the examples' models, and Gaudi 3's cloud price is assumed (above). "
        "A ratio against a sub-fleet of a bounded cluster also counts the pooling of inventories: where one "
        "vendor's devices in the cluster cannot carry the load alone, the cross-vendor plan wins by more than the "
        "split itself is worth."
    )
    return L
