"""Importers of measured profiles into the profile store format (costmodels/profiles.py).

* ``import_vidur``: Vidur's per-operator kernel profiles (``<root>/<sku>/<model>/mlp.csv`` plus attention rows,
  either Vidur's own ``<root>/<sku>/<model>/attention.csv`` or an extract ``<root>/<sku>/attention_extract.csv``
  as in shared/reference/gpu-profiles) become per-step latencies, with the method of that folder's
  ``derive_vidur_profiles.py``: step = layers × (Σ median of the nine per-layer operators at the step's tokens
  + median attention kernel). Kernel-only sums: no LM head, launch gaps or sampling.
* ``import_melange``: a Mélange solver input (``gpu_info{name: {cost, tputs}}``, one row of ``tputs`` per input
  bucket and one column per output bucket) becomes request-rate rows. Mélange's files state neither the bucket
  sizes nor the SLO, so the caller gives both (or the file's ``tpot_slo_ms`` where the wrapper has one).

Every name of the source (GPU, SKU, model) maps to a catalog id explicitly; a name without a mapping, or a
mapping naming something the source lacks, is an error.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from costmodels.catalog import Catalog
from costmodels.profiles import ProfileError, ProfileFile, RateRow, StepRow
from costmodels.request_options import MIN_RATE_PER_S

VIDUR_LAYER_OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
# mlp.csv architecture columns → ModelSpec fields (checked, so a profile cannot map onto a different model)
_ARCH = {"n_head": "heads", "n_kv_head": "kv_heads", "n_embd": "hidden_size", "n_expanded_embd": "intermediate_size"}


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror}") from None


def _check_mapping(kind: str, mapping: dict[str, str], present: set[str], skip: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - present)
    if unknown:
        raise ProfileError(f"{where}: no {kind} named {', '.join(unknown)} (it has: {', '.join(sorted(present))})")
    unmapped = sorted(present - set(mapping) - skip)
    if unmapped:
        raise ProfileError(
            f"{where}: {kind} {', '.join(unmapped)} not mapped to a catalog id; "
            f"give NAME=ID for each (or skip it explicitly)"
        )


# ----------------------------------------------------------------------------- Vidur


def _linear_ms(rows: list[dict[str, str]], path: Path) -> dict[tuple[int, int], float]:
    """(tp, tokens) → Σ median of the per-layer operators, ms (duplicate rows averaged)."""
    acc: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in rows:
        try:
            key = (int(r["num_tensor_parallel_workers"]), int(r["num_tokens"]))
            acc[key].append(sum(float(r[f"time_stats.{op}.median"]) for op in VIDUR_LAYER_OPS))
        except (KeyError, ValueError) as exc:
            raise ProfileError(f"{path}: not a Vidur mlp.csv row ({exc})") from None
    return {k: statistics.mean(v) for k, v in acc.items()}


def _attention_rows(path: Path, model_dir: str) -> dict[tuple[int, str, int, int, int], float]:
    """(tp, phase, batch, chunk, kv) → median attention kernel ms, from an extract or Vidur's attention.csv."""
    acc: dict[tuple[int, str, int, int, int], list[float]] = defaultdict(list)
    for r in _read_csv(path):
        if "model" in r and r["model"] != model_dir:
            continue
        try:
            prefill = r["is_prefill"].strip().lower() == "true"
            tp = int(r.get("tp") or r["num_tensor_parallel_workers"])
            if "attn_median_ms" in r:
                ms = float(r["attn_median_ms"])
            else:
                ms = float(r[f"time_stats.attn_{'prefill' if prefill else 'decode'}.median"])
            key = (tp, "prefill" if prefill else "decode", int(r["batch_size"]), int(r["prefill_chunk_size"]))
            acc[(*key, int(r["kv_cache_size"]))].append(ms)
        except (KeyError, ValueError) as exc:
            raise ProfileError(f"{path}: not a Vidur attention row ({exc})") from None
    return {k: statistics.mean(v) for k, v in acc.items()}


def import_vidur(
    root: Path,
    catalog: Catalog,
    *,
    devices: dict[str, str],
    models: dict[str, str],
    skip_models: set[str] | frozenset[str] = frozenset(),
    command: str = "",
) -> ProfileFile:
    """Step latencies of every mapped (SKU, model) under ``root``: prefill at batch 1 over the profiled prompt
    lengths, decode over the profiled (batch, context) points, at every tensor-parallel degree both files have."""
    root = Path(root)
    if root.is_file():
        return _import_vidur_derived(
            root, catalog, devices=devices, models=models, skip=set(skip_models), command=command
        )
    skus = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    if not skus:
        raise ProfileError(f"{root}: no <sku>/<model>/mlp.csv folders (Vidur's data/profiling/compute layout)")
    _check_mapping("SKU", devices, skus, set(), str(root))
    steps: list[StepRow] = []
    notes = []
    for sku, device in sorted(devices.items()):
        catalog.device(device)
        model_dirs = {p.parent.name for p in (root / sku).glob("*/mlp.csv")}
        _check_mapping("model", models, model_dirs, set(skip_models), str(root / sku))
        for model_dir, model_id in sorted(models.items()):
            model = catalog.model(model_id)
            mlp_path = root / sku / model_dir / "mlp.csv"
            mlp_rows = _read_csv(mlp_path)
            for col, field in _ARCH.items():
                got = {r.get(col) for r in mlp_rows}
                if got != {str(getattr(model, field))}:
                    raise ProfileError(
                        f"{mlp_path}: {col} {sorted(x or '' for x in got)} but {model_id} has {field} "
                        f"{getattr(model, field)}: the profile is of another model"
                    )
            linear = _linear_ms(mlp_rows, mlp_path)
            own = root / sku / model_dir / "attention.csv"
            attn_path = own if own.exists() else root / sku / "attention_extract.csv"
            if not attn_path.exists():
                raise ProfileError(f"{root / sku / model_dir}: no attention.csv (nor {sku}/attention_extract.csv)")
            attn = _attention_rows(attn_path, model_dir)
            before = len(steps)
            for (tp, phase, batch, chunk, kv), a_ms in sorted(attn.items()):
                if phase == "prefill" and (batch != 1 or kv != 0):
                    continue  # chunked prefill over an existing cache: not a whole-prompt step
                tokens = chunk if phase == "prefill" else batch
                lin = linear.get((tp, tokens))
                if lin is None:
                    continue
                steps.append(
                    StepRow(
                        device=device,
                        model=model_id,
                        phase="prefill" if phase == "prefill" else "decode",
                        tensor_parallel=tp,
                        batch=batch,
                        tokens=chunk if phase == "prefill" else kv,
                        latency_ms=round(model.layers * (lin + a_ms), 6),
                    )
                )
            if len(steps) == before:
                raise ProfileError(f"{attn_path}: no attention rows of {model_dir} match its mlp.csv token counts")
            notes.append(f"{sku}/{model_dir} -> {device}/{model_id}: {len(steps) - before} steps from {attn_path.name}")
    return ProfileFile(
        kind="step-latency",
        command=command,
        source=str(root),
        notes="Vidur kernel-only step latencies: layers x (sum of per-layer operator medians + attention median); "
        "no LM head, launch gaps or sampling. " + "; ".join(notes),
        steps=steps,
    )


def _import_vidur_derived(
    path: Path, catalog: Catalog, *, devices: dict[str, str], models: dict[str, str], skip: set[str], command: str
) -> ProfileFile:
    """Step rows of a table already derived from Vidur (configs/profiles/a100_vidur_derived.csv: sku, model,
    phase, tp, prompt_len, batch, ctx_len, total_ms)."""
    rows = _read_csv(path)
    need = {"sku", "model", "phase", "tp", "prompt_len", "batch", "ctx_len", "total_ms"}
    if not rows or not need <= set(rows[0]):
        raise ProfileError(f"{path}: expected a derived Vidur table with columns {', '.join(sorted(need))}")
    _check_mapping("SKU", devices, {r["sku"] for r in rows}, set(), str(path))
    _check_mapping("model", models, {r["model"] for r in rows}, skip, str(path))
    steps = []
    for i, r in enumerate(rows, start=2):
        if r["model"] in skip:
            continue
        if not r["total_ms"]:
            raise ProfileError(f"{path}:{i}: {r['model']} {r['phase']} has no total_ms (skip the model)")
        device, model = catalog.device(devices[r["sku"]]).name, catalog.model(models[r["model"]]).name
        prefill = r["phase"] == "prefill"
        steps.append(
            StepRow(
                device=device,
                model=model,
                phase="prefill" if prefill else "decode",
                tensor_parallel=int(r["tp"]),
                batch=int(r["batch"]),
                tokens=int(r["prompt_len"] if prefill else r["ctx_len"]),
                latency_ms=float(r["total_ms"]),
            )
        )
    return ProfileFile(
        kind="step-latency",
        command=command,
        source=str(path),
        notes="Step latencies of a derived Vidur table (total_ms: kernel-only sums; no LM head, launch gaps or "
        f"sampling). Mapped: {', '.join(f'{k}->{v}' for k, v in sorted(models.items()))}.",
        steps=steps,
    )


# ----------------------------------------------------------------------------- Mélange


def _melange_config(data: Any, case: str | None, path: Path) -> tuple[dict[str, Any], float | None]:
    """The solver input inside ``data`` (a bare config, a {config, tpot_slo_ms} wrapper, or a map of cases)."""
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a Mélange input is a JSON object")
    if "gpu_info" not in data and "config" not in data:
        cases = sorted(k for k, v in data.items() if isinstance(v, dict))
        if case is None:
            raise ProfileError(f"{path} holds several inputs ({', '.join(cases)}); choose one with --case")
        if case not in data:
            raise ProfileError(f"{path}: no case {case!r}; it has {', '.join(cases)}")
        data = data[case]
    elif case is not None:
        raise ProfileError(f"{path} holds one input; --case {case} does not apply")
    slo = data.get("tpot_slo_ms")
    config = data.get("config", data)
    if not isinstance(config, dict) or not isinstance(config.get("gpu_info"), dict):
        raise ProfileError(f"{path}: no gpu_info (Mélange's {{name: {{cost, tputs}}}})")
    return config, float(slo) if slo is not None else None


def melange_bucket_edges(path: Path) -> tuple[list[int], list[int]]:
    """Input and output token sizes of each bucket index from a buckets.csv (axis, index, …, representative_tokens)."""
    axes: dict[str, dict[int, int]] = {"input": {}, "output": {}}
    for r in _read_csv(path):
        try:
            axes[r["axis"]][int(r["index"])] = int(r["representative_tokens"])
        except (KeyError, ValueError) as exc:
            raise ProfileError(f"{path}: expected columns axis,index,representative_tokens ({exc})") from None
    return [axes["input"][i] for i in sorted(axes["input"])], [axes["output"][i] for i in sorted(axes["output"])]


def read_melange(path: Path, case: str | None = None) -> tuple[dict[str, Any], float | None]:
    """Mélange's solver input (gpu_info, workload_distribution, total_request_rate, slice_factor) and the SLO
    stated beside it, if any."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not JSON: {exc}") from None
    return _melange_config(data, case, Path(path))


def import_melange(
    path: Path,
    catalog: Catalog,
    *,
    model: str,
    devices: dict[str, str],
    input_tokens: list[int],
    output_tokens: list[int],
    tpot_slo_ms: float | None = None,
    case: str | None = None,
    command: str = "",
) -> ProfileFile:
    """Request-rate rows of every mapped GPU: one per (input bucket, output bucket) cell of its ``tputs``."""
    path = Path(path)
    config, file_slo = read_melange(path, case)
    if tpot_slo_ms is not None and file_slo is not None and tpot_slo_ms != file_slo:
        raise ProfileError(f"{path}: the input says tpot_slo_ms {file_slo:g}, the option {tpot_slo_ms:g}")
    slo = tpot_slo_ms if tpot_slo_ms is not None else file_slo
    if slo is None:
        raise ProfileError(f"{path}: Mélange's tables hold under a TPOT SLO the file does not state; give --tpot-ms")
    catalog.model(model)
    gpu_info: dict[str, Any] = config["gpu_info"]
    _check_mapping("GPU", devices, set(gpu_info), set(), str(path))
    rates: list[RateRow] = []
    for gpu, device in sorted(devices.items()):
        catalog.device(device)
        tputs = gpu_info[gpu].get("tputs")
        if not isinstance(tputs, list) or len(tputs) != len(input_tokens):
            raise ProfileError(
                f"{path}: {gpu} has {len(tputs) if isinstance(tputs, list) else 'no'} tputs rows, "
                f"but {len(input_tokens)} input bucket sizes were given"
            )
        for i, row in enumerate(tputs):
            if not isinstance(row, list) or len(row) != len(output_tokens):
                raise ProfileError(
                    f"{path}: {gpu} tputs row {i} has {len(row) if isinstance(row, list) else 'no'} cells, "
                    f"but {len(output_tokens)} output bucket sizes were given"
                )
            for j, value in enumerate(row):
                rate = float(value)
                rates.append(
                    RateRow(
                        device=device,
                        model=model,
                        tpot_slo_ms=slo,
                        input_tokens=input_tokens[i],
                        output_tokens=output_tokens[j],
                        max_req_per_s=rate if rate >= MIN_RATE_PER_S else 0.0,
                    )
                )
    prices = ", ".join(f"{g} ${float(gpu_info[g].get('cost', 0)):g}/h" for g in sorted(devices))
    return ProfileFile(
        kind="request-rate",
        command=command,
        source=str(path) + (f" case {case}" if case else ""),
        notes=f"Mélange tputs under a {slo:g} ms TPOT SLO; rates below {MIN_RATE_PER_S:g}/s read as 0 (cannot). "
        f"Buckets: input {input_tokens}, output {output_tokens}. Prices in the file (not used by the profile; "
        f"put them in the cluster inventory): {prices}.",
        rates=rates,
    )
