"""Time of `simulator.simulate` for 10,000 Poisson runs of examples/graphs/deep_research.yaml (median of 3).

Prints wall and process CPU seconds (the CPU time is what a shared, loaded machine does not inflate).

    .venv/bin/python bench/simulator_speed.py [--runs 10000] [--rate 20] [--cluster homogeneous_b200]
"""

from __future__ import annotations

import argparse
import statistics
import time

from compiler.ir import compile_graph
from compiler.spec import load_graph
from costmodels.catalog import load_catalog, load_cluster
from planner.pipeline import apply_model_overrides, plan_spec
from planner.place import PlanOptions
from simulator.arrivals import arrival_times
from simulator.core import SimOptions, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--cluster", default="homogeneous_b200")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    catalog = load_catalog()
    spec = load_graph("examples/graphs/deep_research.yaml", catalog)
    cluster = load_cluster(args.cluster, catalog)
    plan = plan_spec(spec, cluster, PlanOptions(rate_per_s=args.rate, baselines=False), catalog)
    _, graph = compile_graph(apply_model_overrides(spec, cluster, catalog), catalog)
    walls, cpus = [], []
    for seed in range(args.repeats):
        # Poisson at the planned rate, cut at exactly --runs runs
        arrivals = arrival_times("poisson", args.rate, 1.2 * args.runs / args.rate, seed)[: args.runs]
        t0, c0 = time.perf_counter(), time.process_time()
        r = simulate(plan, graph, catalog, arrivals, SimOptions(seed=seed))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        print(
            f"seed {seed}: {r.completed} runs, p50 {r.p50_ms:.0f} ms, p99 {r.p99_ms:.0f} ms, "
            f"wall {walls[-1]:.2f} s, cpu {cpus[-1]:.2f} s"
        )
    print(
        f"median of {args.repeats}: wall {statistics.median(walls):.2f} s, cpu {statistics.median(cpus):.2f} s "
        f"for {args.runs} runs of deep_research"
    )


if __name__ == "__main__":
    main()
