"""Planner solve time vs graph size: generated agent graphs of 10–1,000 granular ops × 14 device types.

    python bench/planner_scale.py [--sizes 10 50 200 1000] [--repeats 5] [--solvers cbc highs]

Each graph is a generated spec (LLM, embed, vector search, tool and transform nodes in a random
layered DAG) compiled by the real compiler; the timed part is one min-TCO ILP solve (no baselines,
no binding analysis) on a cluster holding every accelerator and server-CPU type of the catalog (not
the local-* types measured on the development machine). Prints a Markdown table of median seconds:
the whole solve() (configuration pruning, model building, solver) and, within it, the solver runs
(PuLP writing the model file and CBC or HiGHS); binaries are those of the last ILP solved.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compiler import compile_graph, parse_graph  # noqa: E402
from costmodels import ClusterInventory, DevicePool, load_catalog  # noqa: E402
from planner import build_problem, cluster_tiers, solve  # noqa: E402

LLMS = ("llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "mistral-7b-instruct-v0.3", "llama-3.1-70b-instruct")


def generate_spec(target_ops: int, seed: int) -> dict:
    """A layered random DAG whose compiled form has about ``target_ops`` granular ops."""
    rng = random.Random(seed)
    nodes: list[dict] = []
    ops = 0
    while ops < target_ops:
        i = len(nodes)
        ups = rng.sample([n["name"] for n in nodes[-6:]], k=min(len(nodes[-6:]), rng.randint(1, 2))) if nodes else []
        kind = rng.choices(["llm", "tool", "transform", "embed", "vector_search"], weights=[4, 3, 2, 1, 1])[0]
        if kind == "llm" and target_ops - ops < 4:
            kind = "tool"
        node: dict = {"name": f"n{i}", "kind": kind, "dependencies": ups}
        if kind == "llm":
            node |= {
                "model": rng.choice(LLMS),
                "expected": {"input_tokens": rng.choice([512, 2048, 4096]), "output_tokens": rng.choice([64, 256])},
            }
            ops += 4
        elif kind == "tool":
            node |= {"url": "http://127.0.0.1:9/x", "expected": {"latency_ms": rng.choice([50, 200, 500])}}
            ops += 1
        elif kind == "transform":
            node |= {"function": "workers.transforms:redact_pii", "expected": {"latency_ms": 2}}
            ops += 1
        elif kind == "embed":
            node |= {"model": "bge-small-en-v1.5"}
            ops += 1
        else:
            node |= {"index": "docs", "index_size": 1_000_000, "dimension": 384}
            ops += 1
        nodes.append(node)
    depth = max(1, len(nodes) // 3)
    return {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "AgentGraph",
        "metadata": {"name": f"gen-{target_ops}"},
        "spec": {"sla": {"e2e_ms": 1500.0 * depth}, "nodes": nodes},
    }


def full_cluster(catalog) -> ClusterInventory:
    pools = [
        DevicePool(type=d.name, count=256, per_node=min(8, d.max_devices_per_node))
        for d in catalog.hardware.values()
        if not d.name.startswith("local-")
    ]
    return ClusterInventory(name="all-types", devices=pools)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200, 1000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--solvers", nargs="+", default=["cbc", "highs"])
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--time-limit", type=float, default=120.0)
    args = ap.parse_args()
    catalog = load_catalog()
    cluster = full_cluster(catalog)
    tiers = cluster_tiers(cluster, catalog)
    print(
        f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}; "
        f"{len(tiers)} device types; rate {args.rate} runs/s; median of {args.repeats}"
    )
    print("| granular ops | spec nodes | binaries | solver | median solve s | min | max | of which solver s | status |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        spec = generate_spec(size, seed=size)
        graph = parse_graph(spec, catalog)
        _, granular = compile_graph(graph, catalog)
        p = build_problem(granular, catalog, tiers, rate_per_s=args.rate)
        for solver in args.solvers:
            times, solver_s, status, binaries = [], [], set(), 0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                a = solve(p, solver=solver, time_limit_s=args.time_limit)
                times.append(time.perf_counter() - t0)
                status.add("infeasible" if a is None else a.status)
                if a is not None:
                    solver_s.append(a.solve_seconds)
                    binaries = int(a.extra.get("binaries", 0))
            print(
                f"| {len(granular.ops)} | {len(spec['spec']['nodes'])} | {binaries} | {solver} | "
                f"{statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | "
                f"{statistics.median(solver_s) if solver_s else float('nan'):.2f} | {'/'.join(sorted(status))} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
