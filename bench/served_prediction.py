"""The cost model's LLM predictions for the model a run actually serves, against what the run measured.

Runs ``hetagent run GRAPH --cluster local --format json`` several times (each a fresh engine, as a user's
run is), with the device profile in ``$HETAGENT_DATA_DIR/profiles`` (write one first with
``hetagent calibrate --engine vllm``), and compares every LLM record's ``served_prediction`` (the cost
model's time for the loaded stand-in, at the request's token counts) with its measurements:

- prefill: ``served_prediction.prefill_ms`` vs the engine's time to first token (``detail.ttft_ms``);
- decode: ``served_prediction.decode_ms`` vs the rest of the generation (``detail.e2e_ms − ttft_ms``);
- op: ``served_prediction.predicted_ms`` vs the worker's service time of the call (``service_ms``).

Prints one row per run and LLM op, then the median |predicted − measured| / measured per phase, and the CPU
share other processes used while the runs ran (the engine's steps slow down many-fold when they compete).

    .venv/bin/python bench/served_prediction.py [--graph examples/graphs/draft_writer.yaml] [--runs 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BRIEFS = (
    "Plan a week of meals for a family of four on a small budget.",
    "Describe how to water tomato plants during a hot summer.",
    "Summarise the steps to replace a bicycle inner tube.",
    "Write a short guide to keeping a reading journal.",
    "Explain how to prepare a garden bed for spring planting.",
)


def _run(graph: Path, cluster: str, inputs: list[str], model_dir: str | None) -> dict:
    cmd = [str(ROOT / ".venv/bin/hetagent"), "run", str(graph), "--cluster", cluster, "--format", "json"]
    for pair in inputs:
        cmd += ["-i", pair]
    if model_dir:
        cmd += ["--model-dir", model_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"hetagent run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def _error(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured


def main() -> int:
    from costmodels.calibrate import OtherLoad

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph", type=Path, default=ROOT / "examples/graphs/draft_writer.yaml")
    p.add_argument("--cluster", default="local")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--input-name", default="brief", help="The graph's text input (one brief per run).")
    p.add_argument("--model-dir", default=None, help="Stand-in weights (default: the run's own tiny model).")
    p.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    a = p.parse_args()
    rows = []
    with OtherLoad(tree=True) as load:  # the runs (and the Ray clusters they start) are this process's children
        for i in range(a.runs):
            t0 = time.perf_counter()
            result = _run(a.graph, a.cluster, [f"{a.input_name}={BRIEFS[i % len(BRIEFS)]}"], a.model_dir)
            wall = time.perf_counter() - t0
            for r in result["records"]:
                sp = r.get("served_prediction")
                if not sp:
                    continue
                d = r["detail"]
                row = {
                    "run": i,
                    "node": r["node"],
                    "phase": r.get("phase") or "",
                    "model": r["predicted_for_model"],
                    "prompt_tokens": sp["prompt_tokens"],
                    "output_tokens": sp["output_tokens"],
                    "planned_ms": r["predicted_ms"],
                    "op_measured_ms": r["service_ms"],
                    "op_predicted_ms": sp["predicted_ms"],
                    "wall_s": round(wall, 1),
                }
                if not r.get("phase") and d.get("ttft_ms") is not None and d.get("e2e_ms") is not None:
                    row |= {
                        "prefill_measured_ms": d["ttft_ms"],
                        "prefill_predicted_ms": sp["prefill_ms"],
                        "decode_measured_ms": d["e2e_ms"] - d["ttft_ms"],
                        "decode_predicted_ms": sp["decode_ms"],
                    }
                rows.append(row)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if not rows:
        raise SystemExit("no LLM record carried a served_prediction (did the run serve a stand-in?)")
    print(f"\nother processes' CPU share while the runs ran: {load.fraction}")
    print("| phase | n | median measured ms | median predicted ms | median abs error | max abs error |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for phase in ("prefill", "decode", "op"):
        pairs = [(r[f"{phase}_predicted_ms"], r[f"{phase}_measured_ms"]) for r in rows if f"{phase}_measured_ms" in r]
        if not pairs:
            continue
        errors = [_error(pr, m) for pr, m in pairs]
        summary[phase] = {"n": len(pairs), "median_abs_error": statistics.median(errors), "max_abs_error": max(errors)}
        print(
            f"| {phase} | {len(pairs)} | {statistics.median(m for _, m in pairs):.1f} | "
            f"{statistics.median(pr for pr, _ in pairs):.1f} | {statistics.median(errors):.1%} | {max(errors):.1%} |"
        )
    if a.json:
        a.json.write_text(
            json.dumps({"rows": rows, "summary": summary, "data_dir": os.environ.get("HETAGENT_DATA_DIR")})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
