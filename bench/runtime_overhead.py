"""Runtime overhead of the executor on a local Ray (issue 3 targets: <= 1 ms per op, ratio <= 1.10).

1. Dispatch overhead per op: a chain of no-op transforms, run repeatedly (>= 1,000 op executions).
   Per op, overhead = measured time (submit -> result seen by the driver) - service time inside the
   worker; the median is reported, plus the chain's (e2e - sum of service) / ops.
2. Generated layered DAGs of 20 and 100 ops, each op sleeping 10 ms: measured end-to-end time
   divided by the critical-path time (10 ms x the longest path's op count); median of runs.

Usage: python bench/runtime_overhead.py [--runs 5] [--chain 100] [--chain-runs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SLEEP_MS = 10.0


def noop(**_):
    """The no-op op (workers import it as bench.runtime_overhead:noop)."""
    return 0


def sleep_op(**_):
    time.sleep(SLEEP_MS / 1000.0)
    return 0


def _graph(nodes: list[dict], name: str):
    from compiler import parse_graph
    from costmodels import load_catalog

    return parse_graph(
        {
            "apiVersion": "hetagent.dev/v1alpha1",
            "kind": "AgentGraph",
            "metadata": {"name": name},
            "spec": {"sla": {"e2e_ms": 600000}, "nodes": nodes},
        },
        load_catalog(),
    )


def chain(n: int):
    nodes = []
    for i in range(n):
        deps = {"x": f"{{{{ nodes.op{i - 1}.output }}}}"} if i else {}
        nodes.append(
            {
                "name": f"op{i}",
                "kind": "transform",
                "function": "bench.runtime_overhead:noop",
                "inputs": deps,
                "expected": {"latency_ms": 0.05},
            }
        )
    return _graph(nodes, f"chain-{n}")


def layered_dag(n: int, seed: int = 0) -> tuple[object, int]:
    """n ops in layers of width ~sqrt(n); each op depends on 1-3 ops of the previous layer.
    Returns the graph and the op count of its longest path."""
    rng = random.Random(seed)
    width = max(2, round(n**0.5))
    layers: list[list[str]] = []
    nodes: list[dict[str, Any]] = []  # spec nodes, as in a YAML graph
    for i in range(n):
        if i % width == 0:
            layers.append([])
        name = f"op{i}"
        prev = layers[-2] if len(layers) > 1 else []
        deps = rng.sample(prev, min(len(prev), rng.randint(1, 3))) if prev else []
        nodes.append(
            {
                "name": name,
                "kind": "transform",
                "function": "bench.runtime_overhead:sleep_op",
                "inputs": {f"d{j}": f"{{{{ nodes.{d}.output }}}}" for j, d in enumerate(deps)},
                "expected": {"latency_ms": SLEEP_MS},
            }
        )
        layers[-1].append(name)
    depth: dict[str, int] = {}
    for node in nodes:
        ups = [v.split(".")[1] for v in (x.strip("{} ") for x in node["inputs"].values())]
        depth[node["name"]] = 1 + max((depth[u] for u in ups), default=0)
    return _graph(nodes, f"dag-{n}"), max(depth.values())


@functools.cache
def _plain_actor_class():
    import ray

    @ray.remote(num_cpus=0, max_concurrency=64)  # type: ignore[call-overload]  # Ray's overloads omit max_concurrency
    class Plain:
        """The floor: a bare threaded Ray actor doing the same work, no executor around it."""

        def sleep(self, *_):
            time.sleep(SLEEP_MS / 1000.0)
            return 0

        def noop(self, *_):
            return 0

    return Plain


def plain_ray_ratio(graph, path_ops: int, runs: int) -> float:
    """The same DAG on bare Ray actors (one per op), all tasks submitted at once: Ray's own floor."""
    import ray

    ups = {n.name: graph.upstream(n) for n in graph.spec.nodes}
    plain = _plain_actor_class()
    actors = {n.name: plain.remote() for n in graph.spec.nodes}
    ray.get([a.sleep.remote() for a in actors.values()])
    ratios = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        refs: dict = {}
        for name in graph.topological_order():
            refs[name] = actors[name].sleep.remote(*[refs[u] for u in ups[name]])
        ray.get(list(refs.values()))
        ratios.append((time.perf_counter() - t0) * 1000.0 / (path_ops * SLEEP_MS))
    for a in actors.values():
        ray.kill(a)
    return statistics.median(ratios[1:])


def _runner(graph):
    from costmodels import load_catalog, load_cluster
    from planner import PlanOptions, plan_spec
    from workers import GraphRunner

    cat = load_catalog()
    plan = plan_spec(graph, load_cluster("local", cat), PlanOptions(rate_per_s=0.01, baselines=False), cat)
    if not plan.feasible:
        raise SystemExit(f"plan infeasible: {plan.reason}")
    runner = GraphRunner(graph, plan)
    runner.start()
    return runner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per DAG size (median reported)")
    ap.add_argument("--chain", type=int, default=20, help="ops in the no-op chain")
    ap.add_argument("--chain-runs", type=int, default=50, help="runs of the chain (ops x runs >= 1,000)")
    ap.add_argument("--sizes", default="20,100")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import ray

    from workers import ensure_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ensure_ray(None, ["local-cpu"])
    out: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "ray": ray.__version__,
    }

    runner = _runner(chain(args.chain))
    runner.run({})  # warm-up: first calls import the op on each worker
    per_op, per_chain = [], []
    for _ in range(args.chain_runs):
        r = runner.run({})
        per_op += [rec.measured_ms - rec.service_ms for rec in r.records]
        per_chain.append((r.e2e_ms - sum(rec.service_ms for rec in r.records)) / len(r.records))
    runner.shutdown()
    plain = _plain_actor_class()
    actors = [plain.remote() for _ in range(args.chain)]
    ray.get([a.sleep.remote() for a in actors])
    floor = []
    for _ in range(args.chain_runs):
        t0 = time.perf_counter()
        ref: Any = None  # the ObjectRef of the chain's last call
        for a in actors:
            ref = a.noop.remote(*([ref] if ref is not None else []))
        ray.get(ref)
        floor.append((time.perf_counter() - t0) * 1000.0 / args.chain)
    for a in actors:
        ray.kill(a)
    out["dispatch"] = {
        "plain_ray_ms_per_op": statistics.median(floor),
        "ops_measured": len(per_op),
        "median_overhead_ms": statistics.median(per_op),
        "p90_overhead_ms": statistics.quantiles(per_op, n=10)[-1],
        "chain_overhead_ms_per_op": statistics.median(per_chain),
    }
    print(
        f"dispatch overhead: median {out['dispatch']['median_overhead_ms']:.3f} ms/op over {len(per_op)} ops "
        f"(p90 {out['dispatch']['p90_overhead_ms']:.3f}); chain (e2e - service)/ops "
        f"{out['dispatch']['chain_overhead_ms_per_op']:.3f} ms; "
        f"bare Ray actor chain {out['dispatch']['plain_ray_ms_per_op']:.3f} ms/hop"
    )

    out["dags"] = []
    for n in (int(s) for s in args.sizes.split(",")):
        graph, path_ops = layered_dag(n)
        t0 = time.perf_counter()
        runner = _runner(graph)
        start_s = time.perf_counter() - t0
        runner.run({})  # warm-up
        ratios = []
        for _ in range(args.runs):
            r = runner.run({})
            ratios.append(r.e2e_ms / (path_ops * SLEEP_MS))
        runner.shutdown()
        floor_ratio = plain_ray_ratio(graph, path_ops, args.runs)
        row = {
            "ops": n,
            "critical_path_ops": path_ops,
            "critical_path_ms": path_ops * SLEEP_MS,
            "median_e2e_ms": statistics.median(ratios) * path_ops * SLEEP_MS,
            "median_ratio": statistics.median(ratios),
            "max_ratio": max(ratios),
            "start_s": start_s,
            "plain_ray_ratio": floor_ratio,
        }
        out["dags"].append(row)
        print(
            f"DAG {n} ops (critical path {path_ops} x {SLEEP_MS:g} ms = {path_ops * SLEEP_MS:.0f} ms): "
            f"e2e median {row['median_e2e_ms']:.1f} ms, ratio median {row['median_ratio']:.3f} "
            f"(max {row['max_ratio']:.3f}); bare Ray actors {floor_ratio:.3f}; pools started in {start_s:.1f} s"
        )
    ray.shutdown()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
