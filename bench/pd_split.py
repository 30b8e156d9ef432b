"""Prefill/decode split vs unsplit on `local_tiers`: TTFT, inter-token latency, throughput, KV hand-off time.

Starts the multi-node cluster (`hetagent cluster up`: a head and one Ray node per one-core tier) unless
--address is given, plans examples/graphs/draft_writer.yaml twice — at a low rate (one tier holds the
whole graph: unsplit) and at the first rate where the planner itself splits prefill and decode across
the tiers — starts both plans' pools, and drives each with Poisson arrivals at three rates. Per request:
TTFT (submission to first streamed token), inter-token latency (median gap between streamed tokens),
end-to-end time, and for the split its KV hand-off (bytes, measured ms, predicted ms). Prints a markdown
table of medians (and p90 TTFT); numbers are measured on whatever machine runs it.

    .venv/bin/python bench/pd_split.py [--address HOST:PORT] [--rates 0.5,1,2] [--requests 16]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BRIEF = (
    "Explain how a KV cache lets a language model reuse attention keys and values, and why prefill "
    "is compute-bound while decode is memory-bound. "
) * 6


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def drive(runner, rate: float, requests: int, seed: int) -> dict:
    """Poisson arrivals at ``rate``; every request in its own thread; per-request timings."""
    rng = random.Random(seed)
    rows: list[dict] = []
    lock = threading.Lock()

    def one() -> None:
        t0 = time.perf_counter()
        stamps: list[float] = []
        result = runner.run(
            {"brief": BRIEF},
            timeout_s=600,
            on_event=lambda kind, node, data: stamps.append(time.perf_counter()) if kind == "token" else None,
        )
        end = time.perf_counter()
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        decode = next(r for r in reversed(result.records) if r.node == "draft")
        row = {
            "ttft_ms": (stamps[0] - t0) * 1e3 if stamps else None,
            "itl_ms": statistics.median(gaps) * 1e3 if gaps else None,
            "e2e_ms": (end - t0) * 1e3,
            "tokens": decode.detail.get("output_tokens", 0),
            "kv": result.kv_transfers[0] if result.kv_transfers else None,
        }
        with lock:
            rows.append(row)

    threads = []
    start = time.perf_counter()
    for _ in range(requests):
        t = threading.Thread(target=one)
        t.start()
        threads.append(t)
        time.sleep(rng.expovariate(rate))
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = [r["ttft_ms"] for r in rows if r["ttft_ms"] is not None]
    itl = [r["itl_ms"] for r in rows if r["itl_ms"] is not None]
    kv = [r["kv"] for r in rows if r["kv"]]
    return {
        "rate": rate,
        "requests": len(rows),
        "ttft_p50_ms": statistics.median(ttft),
        "ttft_p90_ms": _pct(ttft, 0.9),
        "itl_p50_ms": statistics.median(itl),
        "e2e_p50_ms": statistics.median(r["e2e_ms"] for r in rows),
        "tokens_per_s": sum(r["tokens"] for r in rows) / wall,
        "kv_bytes": statistics.median(x["bytes"] for x in kv) if kv else None,
        "kv_measured_p50_ms": statistics.median(x["measured_ms"] for x in kv) if kv else None,
        "kv_predicted_ms": statistics.median(x["predicted_ms"] for x in kv) if kv else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", help="a running local_tiers cluster (default: start one, stop it after)")
    ap.add_argument("--rates", default="0.5,1,2", help="arrival rates, requests/s")
    ap.add_argument("--requests", type=int, default=16, help="requests per rate and configuration")
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from costmodels.catalog import load_catalog
    from costmodels.tiny_model import build_tiny_model, tiny_model_cache_dir
    from orchestrator.cluster import down, up
    from tests.support.plans import draft_writer_plans, phase_devices
    from workers.executor import GraphRunner, ensure_ray

    catalog = load_catalog()
    graph, low, split = draft_writer_plans(catalog, output_tokens=args.output_tokens)
    model_dir = build_tiny_model(tiny_model_cache_dir())
    data_dir = None
    address = args.address
    if address is None:
        data_dir = Path(tempfile.mkdtemp(prefix="pd-bench-"))
        address = up(ROOT / "configs" / "clusters" / "local_tiers.yaml", data_dir, cwd=ROOT).address
    rows = []
    try:
        ensure_ray(address)
        runners = {
            "unsplit": GraphRunner(graph, low, model_dir=model_dir),
            "split": GraphRunner(graph, split, model_dir=model_dir),
        }
        for runner in runners.values():
            runner.start(start_timeout_s=600)
        for runner in runners.values():  # warm-up
            runner.run({"brief": BRIEF}, timeout_s=600)
        for rate in (float(x) for x in args.rates.split(",")):
            for name, runner in runners.items():
                row = {
                    "config": name,
                    "devices": "→".join(dict.fromkeys(phase_devices(runner.plan, "draft"))),
                    **drive(runner, rate, args.requests, args.seed),
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        for runner in runners.values():
            runner.shutdown()
    finally:
        if data_dir is not None:
            import ray

            ray.shutdown()
            down(data_dir)
    print(
        f"draft_writer on local_tiers, {args.output_tokens} output tokens, {args.requests} requests per row, "
        f"Poisson arrivals (seed {args.seed}); split plan found at {split.rate_per_s:.3g} runs/s"
    )
    print()
    print(
        "| rate (req/s) | config | prefill → decode | TTFT p50 ms | TTFT p90 ms | ITL p50 ms | e2e p50 ms "
        "| tokens/s | KV bytes | KV hand-off p50 ms (measured) | KV hand-off ms (predicted) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kv = (
            f"{r['kv_bytes']:,.0f} | {r['kv_measured_p50_ms']:.1f} | {r['kv_predicted_ms']:.1f}"
            if r["kv_bytes"] is not None
            else "– | – | –"
        )
        print(
            f"| {r['rate']:g} | {r['config']} | {r['devices']} | {r['ttft_p50_ms']:.0f} | {r['ttft_p90_ms']:.0f} "
            f"| {r['itl_p50_ms']:.1f} | {r['e2e_p50_ms']:.0f} | {r['tokens_per_s']:.0f} | {kv} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
