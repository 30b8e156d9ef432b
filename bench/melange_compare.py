"""Mélange's GPU-mix ILP vs hetagent's request-size slicing, on Mélange's inputs (../shared/reference/melange/).

For every input — the two toy inputs of ``toy_inputs.json`` and every case × rate of
``melange_inputs_reconstructed.json`` — this script

(a) solves Mélange's own formulation, re-implemented here from the description in that folder's README (no
    Mélange code is used; it has no licence): each bucket's traffic is cut into ``slice_factor`` equal slices,
    each slice goes whole to one GPU type, a slice of rate r of bucket b uses r / tputs[g][b] of a GPU of type
    g, the fractions given to type g sum to at most its integer count n_g, and Σ cost_g · n_g is minimised
    (PuLP + CBC as PuLP calls it by default, one binary per slice and type) — the reference; its problem's
    true optimum, from an equivalent formulation CBC solves exactly, is reported beside it where they differ;
(b) plans the equivalent single-LLM hetagent graph through the real path: the input imported with
    ``costmodels.profile_import.import_melange`` into a profiles directory, a spec with the case's buckets as
    ``traffic`` (TPOT target = the case's SLO), compiled and planned by ``planner.pipeline.plan_spec`` with
    ``profiles_dir`` on a cluster of the input's GPUs at the input's prices (plus a CPU host for tokenize and
    detokenize, whose cost is reported apart: Mélange counts GPUs only).

Settings that make (b) the same problem as (a): utilisation cap 1.0 (a ``tputs`` cell already is the highest rate
meeting the SLO), a MIP gap of 0 (Mélange runs CBC with PuLP's defaults, which aim at the optimum; hetagent's
default stops within 0.5%), an e2e SLA of 10,000 s (Mélange has none), unbounded GPU pools, model ``llama-2-7b``
(Mélange's Llama-2-7B; bucket sizes are not checked against its 4,096-token context, as in Mélange, and the node's
``expected`` size is the buckets' mean kept inside it). The toy inputs state no bucket sizes and no SLO: buckets of
250/1000 tokens and a 120 ms TPOT are assumed (they set latencies only, not the cost); ``toy_v0_main_py``'s shares
sum to 1.25, so hetagent plans 1.25 × its rate with the shares divided by 1.25 (the same requests per bucket).

    .venv/bin/python bench/melange_compare.py [--reference DIR] [--cases arena_40ms,...] [--rates 1,2] [--json PATH]

Prints a markdown table: case, rate, Mélange $/h, hetagent $/h (GPUs), ratio, hetagent's ILP solve time (the
cost ILP, as the plan reports it) and whole planning call (compile, options, ILP, lowering), and both GPU mixes;
``--json`` adds the Mélange solve time and the host CPU's $/h. Most inputs take a second; Mélange's per-slice ILP
takes minutes on a few (pubmed_40ms at 8 req/s: about 4 minutes on two cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEVICES = {"L4": "l4", "A10G": "a10g", "A100-80GB": "a100-80g", "A100": "a100-80g", "H100-80GB": "h100-sxm"}
MODEL = "llama-2-7b"
HOST = "xeon-8592"
TOY_EDGES = ([250, 1000], [250, 1000])  # assumed: the toy inputs do not state bucket sizes
TOY_TPOT_MS = 120.0  # assumed: nor an SLO
SLA_MS = 1e7


def melange_reference(config: dict[str, Any], *, per_slice: bool = True) -> tuple[float, dict[str, int], float]:
    """Mélange's ILP as its README describes it: (min $/h, GPUs per type, solve seconds).

    ``per_slice`` (Mélange's formulation): one binary per slice of every bucket and GPU type. Otherwise the
    number m_bg of bucket b's identical slices given to type g (an integer, Σ_g m_bg = slice_factor) spans the
    same loads without the slices' symmetry, and buckets without traffic are left out: the same problem,
    solved to its optimum in a fraction of a second. The two differ where CBC, on the binaries, stops short of
    the optimum (the 1e-9 rates that mark "cannot serve" put 1e9 coefficients in the capacity rows)."""
    import pulp

    gpus = list(config["gpu_info"])
    dist = config["workload_distribution"]
    rate = float(config["total_request_rate"])
    sf = int(config["slice_factor"])
    prob = pulp.LpProblem("melange", pulp.LpMinimize)
    count = {g: pulp.LpVariable(f"n_{gi}", lowBound=0, cat="Integer") for gi, g in enumerate(gpus)}
    use: dict[str, list[Any]] = {g: [] for g in gpus}
    for i, row in enumerate(dist):
        for j, share in enumerate(row):
            if per_slice:
                for s in range(sf):
                    z = {g: pulp.LpVariable(f"z_{i}_{j}_{s}_{gi}", cat="Binary") for gi, g in enumerate(gpus)}
                    prob += pulp.lpSum(z.values()) == 1
                    for g in gpus:
                        use[g].append(rate * share / sf / float(config["gpu_info"][g]["tputs"][i][j]) * z[g])
            elif share > 0:
                m = {
                    g: pulp.LpVariable(f"m_{i}_{j}_{gi}", lowBound=0, upBound=sf, cat="Integer")
                    for gi, g in enumerate(gpus)
                }
                prob += pulp.lpSum(m.values()) == sf
                for g in gpus:
                    use[g].append(rate * share / sf / float(config["gpu_info"][g]["tputs"][i][j]) * m[g])
    for g in gpus:
        prob += pulp.lpSum(use[g]) <= count[g]
    prob += pulp.lpSum(float(config["gpu_info"][g]["cost"]) * count[g] for g in gpus)
    t0 = time.perf_counter()
    status = prob.solve(pulp.PULP_CBC_CMD(msg=False))
    elapsed = time.perf_counter() - t0
    if pulp.LpStatus[status] != "Optimal":
        raise RuntimeError(f"Mélange reference: {pulp.LpStatus[status]}")
    counts = {g: int(round(count[g].varValue or 0)) for g in gpus}
    return sum(float(config["gpu_info"][g]["cost"]) * n for g, n in counts.items()), counts, elapsed


def hetagent_plan(
    source: Path,
    case: str,
    config: dict[str, Any],
    tpot_ms: float,
    edges: tuple[list[int], list[int]],
    rate: float,
    workdir: Path,
) -> dict[str, Any]:
    """Import the input, write the single-LLM spec and the cluster, plan; GPU $/h, host $/h, mix, solve time."""
    from compiler.spec import parse_graph
    from costmodels.catalog import ClusterInventory, DevicePool, load_catalog
    from costmodels.profile_import import import_melange
    from costmodels.profiles import write_profile_file
    from planner.pipeline import plan_spec
    from planner.place import PlanOptions

    catalog = load_catalog()
    ins, outs = edges
    gpus = {g: DEVICES[g] for g in config["gpu_info"]}
    profiles = workdir / case
    profile = import_melange(
        source,
        catalog,
        model=MODEL,
        devices=gpus,
        input_tokens=ins,
        output_tokens=outs,
        tpot_slo_ms=tpot_ms,
        case=case,
        command=f"bench/melange_compare.py ({case})",
    )
    write_profile_file(profile, profiles / "melange.json")
    dist = config["workload_distribution"]
    total = sum(sum(row) for row in dist)
    buckets = [
        {"input_tokens": ins[i], "output_tokens": outs[j], "share": w / total}
        for i, row in enumerate(dist)
        for j, w in enumerate(row)
        if w > 0
    ]
    # `expected` sizes only the tokenize/detokenize ops of a sliced node: the share-weighted mean, kept inside
    # the model's context (PubMed's mean request, 3,950 + 250 tokens, is longer than Llama-2-7B's 4,096)
    mean_out = max(1, round(sum(b["output_tokens"] * b["share"] for b in buckets)))
    context = catalog.model(MODEL).max_context_tokens
    mean_in = max(1, min(round(sum(b["input_tokens"] * b["share"] for b in buckets)), context - mean_out))
    spec = {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "AgentGraph",
        "metadata": {"name": "melange-" + case.replace("_", "-").lower()},
        "spec": {
            "sla": {"e2e_ms": SLA_MS},
            "nodes": [
                {
                    "name": "chat",
                    "kind": "llm",
                    "model": MODEL,
                    "expected": {"input_tokens": mean_in, "output_tokens": mean_out},
                    "traffic": {"tpot_ms": tpot_ms, "buckets": buckets},
                }
            ],
        },
    }
    graph = parse_graph(spec, catalog)
    cluster = ClusterInventory(
        name="melange-gpus",
        devices=[
            DevicePool(
                type=dev,
                count=100_000,
                per_node=8,
                pricing="cloud",
                price_usd_per_h=float(config["gpu_info"][g]["cost"]),
            )
            for g, dev in gpus.items()
        ]
        + [DevicePool(type=HOST, count=1_000, per_node=2)],
    )
    opts = PlanOptions(rate_per_s=rate * total, max_utilisation=1.0, gap=0.0, baselines=False, profiles_dir=profiles)
    t0 = time.perf_counter()
    plan = plan_spec(graph, cluster, opts, catalog)
    wall = time.perf_counter() - t0
    if not plan.feasible:
        raise RuntimeError(f"hetagent: {case} at {rate}/s infeasible: {plan.reason}")
    gpu = {d.device: d for d in plan.devices if d.device_class != "cpu"}
    return {
        "usd_per_h": sum(d.usd_per_hour for d in gpu.values()),
        "host_usd_per_h": sum(d.usd_per_hour for d in plan.devices if d.device_class == "cpu"),
        "mix": {d: u.allocated for d, u in gpu.items()},
        "solve_s": plan.solve_seconds,
        "wall_s": wall,
    }


def inputs(reference: Path, cases: list[str] | None, rates: list[float] | None) -> list[dict[str, Any]]:
    """(source file, case, config at its rate, SLO, bucket sizes) for every comparison."""
    from costmodels.profile_import import melange_bucket_edges

    out = []
    toy = json.loads((reference / "toy_inputs.json").read_text())
    for case, entry in toy.items():
        if cases and case not in cases:
            continue
        config = entry["config"]
        out.append(dict(source="toy_inputs.json", case=case, config=config, tpot=TOY_TPOT_MS, edges=TOY_EDGES))
    edges = melange_bucket_edges(reference / "buckets.csv")
    recon = json.loads((reference / "melange_inputs_reconstructed.json").read_text())
    for case, entry in recon.items():
        if cases and case not in cases:
            continue
        for rate in entry["rates_rps"]:
            if rates and rate not in rates:
                continue
            config = dict(entry["config"], total_request_rate=float(rate))
            out.append(
                dict(
                    source="melange_inputs_reconstructed.json",
                    case=case,
                    config=config,
                    tpot=float(entry["tpot_slo_ms"]),
                    edges=edges,
                )
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "reference" / "melange")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--rates", default="", help="comma-separated rates of the reconstructed cases (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args()
    if not (a.reference / "toy_inputs.json").exists():
        ap.error(f"no Mélange reference inputs under {a.reference}")
    cases = [c for c in a.cases.split(",") if c] or None
    rates = [float(r) for r in a.rates.split(",") if r] or None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in inputs(a.reference, cases, rates):
            m_cost, m_mix, m_s = melange_reference(item["config"])
            exact_cost, _, _ = melange_reference(item["config"], per_slice=False)
            h = hetagent_plan(
                a.reference / item["source"],
                item["case"],
                item["config"],
                item["tpot"],
                item["edges"],
                float(item["config"]["total_request_rate"]),
                Path(tmp),
            )
            rows.append(
                dict(
                    case=item["case"],
                    rate=item["config"]["total_request_rate"],
                    melange_usd_per_h=round(m_cost, 4),
                    melange_optimum_usd_per_h=round(exact_cost, 4),
                    hetagent_usd_per_h=round(h["usd_per_h"], 4),
                    ratio=round(h["usd_per_h"] / m_cost, 4) if m_cost else None,
                    hetagent_solve_s=round(h["solve_s"], 3),
                    hetagent_plan_wall_s=round(h["wall_s"], 3),
                    melange_solve_s=round(m_s, 3),
                    melange_mix={g: n for g, n in m_mix.items() if n},
                    hetagent_mix={g: n for g, n in h["mix"].items() if n},
                    host_usd_per_h=round(h["host_usd_per_h"], 4),
                )
            )
            r = rows[-1]
            print(
                f"{r['case']:>18} {r['rate']:>5g}/s  Mélange ${r['melange_usd_per_h']:.2f}/h  "
                f"hetagent ${r['hetagent_usd_per_h']:.2f}/h  ×{r['ratio']}  solve {r['hetagent_solve_s']} s",
                file=sys.stderr,
                flush=True,
            )
    print(
        "| case | rate req/s | Mélange $/h | hetagent $/h | ratio | hetagent solve s | hetagent plan s "
        "| Mélange GPUs | hetagent GPUs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mix_m = ", ".join(f"{n}×{g}" for g, n in r["melange_mix"].items())
        mix_h = ", ".join(f"{n}×{g}" for g, n in r["hetagent_mix"].items())
        print(
            f"| {r['case']} | {r['rate']:g} | {r['melange_usd_per_h']:.2f} | {r['hetagent_usd_per_h']:.2f} | "
            f"{r['ratio']:.3f} | {r['hetagent_solve_s']:.2f} | {r['hetagent_plan_wall_s']:.2f} | {mix_m} | {mix_h} |"
        )
    for r in rows:
        if abs(r["melange_optimum_usd_per_h"] - r["melange_usd_per_h"]) > 1e-6:
            print(
                f"\n{r['case']} at {r['rate']:g} req/s: Mélange's ILP as written returns "
                f"${r['melange_usd_per_h']:.2f}/h; its problem's optimum (slices counted per type) is "
                f"${r['melange_optimum_usd_per_h']:.2f}/h"
            )
    worst = max(r["ratio"] for r in rows)
    slowest = max(r["hetagent_solve_s"] for r in rows)
    print(f"\n{len(rows)} inputs; worst ratio {worst:.3f}; slowest hetagent solve {slowest:.2f} s")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
