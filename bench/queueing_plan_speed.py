"""Time of queueing-aware planning (Poisson, the spec's percentile) against the service-time plan, per example.

Prints, per graph, the median wall seconds of `plan_spec` and of `plan_with_queueing` and the iterations it took.

    .venv/bin/python bench/queueing_plan_speed.py [--cluster homogeneous_b200] [--rate 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from compiler.spec import load_graph
from costmodels.catalog import load_catalog, load_cluster
from orchestrator.queueing_plan import plan_with_queueing
from planner.pipeline import plan_spec
from planner.place import PlanOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default="homogeneous_b200")
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--arrivals", default="poisson")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    catalog = load_catalog()
    cluster = load_cluster(args.cluster, catalog)
    opts = PlanOptions(rate_per_s=args.rate, baselines=False)
    for path in sorted(Path("examples/graphs").glob("*.yaml")):
        spec = load_graph(path, catalog)
        plain, queueing = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            plan_spec(spec, cluster, opts, catalog)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            p = plan_with_queueing(spec, cluster, opts, catalog, arrivals=args.arrivals)
            queueing.append(time.perf_counter() - t0)
        s = p.simulation
        found = (
            f"iteration {s.iteration}/{len(s.iterations)}, p{s.percentile:g} met: {s.sla_met}, "
            f"attainment {s.simulated_attainment:.3f}"
            if s
            else f"not simulated ({p.reason})"
        )
        print(
            f"{path.stem}: plan {statistics.median(plain):.2f} s, queueing-aware "
            f"{statistics.median(queueing):.2f} s ({found})"
        )


if __name__ == "__main__":
    main()
