"""Check the roofline cost model against measured GPU kernel timings (configs/profiles/).

`compare_a100_vidur()` predicts every prefill and decode step of the Vidur A100 profile
(Llama-3-8B, Llama-2-7B at TP 1) on `a100-80g` with the catalog's efficiencies; used by
bench/costmodel_vs_measured.py (the table in docs) and by the tests (error bounds).
"""

from __future__ import annotations

import csv
from typing import TypedDict

from costmodels import work as W
from costmodels.catalog import ModelSpec, load_catalog, repo_configs_dir
from costmodels.roofline import roofline_step_s

PROFILE = repo_configs_dir() / "profiles" / "a100_vidur_derived.csv"


def _models() -> dict[str, ModelSpec]:
    cat = load_catalog()
    llama2 = ModelSpec(
        name="llama-2-7b",
        display_name="Llama-2-7B",
        kind="llm",
        parameters=6.738e9,
        layers=32,
        hidden_size=4096,
        heads=32,
        kv_heads=32,
        head_dim=128,
        intermediate_size=11008,
        vocab_size=32000,
        dtype="fp16",
        max_context_tokens=4096,
    )
    return {"Meta-Llama-3-8B": cat.model("llama-3.1-8b-instruct"), "Llama-2-7b-hf": llama2}


class VidurRow(TypedDict):
    """One measured step beside its prediction (a plain dict at run time)."""

    model: str
    phase: str
    size: str
    measured_ms: float
    predicted_ms: float
    ratio: float
    bound: str


def compare_a100_vidur() -> list[VidurRow]:
    """One row per measured step: phase, size, measured ms, predicted ms, ratio."""
    cat = load_catalog()
    a100 = cat.device("a100-80g")
    by_name = _models()
    rows: list[VidurRow] = []
    with PROFILE.open() as fh:
        for r in csv.DictReader(fh):
            model = by_name.get(r["model"])
            if model is None or r["tp"] != "1":
                continue
            if r["phase"] == "prefill":
                step = W.prefill_work(model, int(r["prompt_len"]), 1)
                size = f"P={r['prompt_len']}"
            else:
                step = W.decode_step_work(model, float(r["ctx_len"]), int(r["batch"]))
                size = f"B={r['batch']} C={r['ctx_len']}"
            predicted_s, bound = roofline_step_s(step, a100, model.dtype)
            measured = float(r["total_ms"])
            rows.append(
                VidurRow(
                    model=r["model"],
                    phase=r["phase"],
                    size=size,
                    measured_ms=measured,
                    predicted_ms=predicted_s * 1000,
                    ratio=predicted_s * 1000 / measured,
                    bound=bound,
                )
            )
    return rows
