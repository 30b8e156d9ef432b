"""The roofline cost model against measured A100 kernel timings (Vidur profiles, Llama-3-8B / Llama-2-7B).

    python bench/costmodel_vs_measured.py

Prints predicted ÷ measured for every prefill (P = 128…4096) and decode (B = 1…128, context
1024/4096) step of configs/profiles/a100_vidur_derived.csv (see costmodels/measured.py).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from costmodels import compare_a100_vidur  # noqa: E402


def main() -> None:
    rows = compare_a100_vidur()
    print("| model | phase | size | measured ms | predicted ms | predicted ÷ measured | bound |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['phase']} | {r['size']} | {r['measured_ms']:.2f} | {r['predicted_ms']:.2f} | "
            f"{r['ratio']:.2f} | {r['bound']} |"
        )
    for phase in ("prefill", "decode"):
        ratios = [r["ratio"] for r in rows if r["phase"] == phase]
        print(
            f"\n{phase}: median ratio {statistics.median(ratios):.2f}, range {min(ratios):.2f}–{max(ratios):.2f} "
            f"over {len(ratios)} rows"
        )


if __name__ == "__main__":
    main()
