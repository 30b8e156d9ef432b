"""The cost model against measured step timings: read measured profiles, predict every row, summarise the error.

A measured profile is a CSV in the format of ``configs/profiles/a100_vidur_derived.csv`` (the Vidur A100 kernel
sums; ``bench/gpu_profile.py`` writes the same format): one row per step with ``sku``, ``model``, ``phase``,
``tp``, ``prompt_len`` (prefill), ``batch``, ``ctx_len`` (decode), ``n_layers``, ``linear_ms`` (every layer
kernel but attention), ``attn_ms`` and ``total_ms`` (= linear + attention; empty where attention was not
measured). Lines starting with ``#`` are comments (the command that wrote the file). The timings cover the
transformer layers only (no embedding gather, LM head or sampling), so they are predicted with
``layers_only=True``; a row without ``total_ms`` is checked on its ``linear_ms`` (the layers without attention).

Names: ``sku`` is a catalog device id or a Vidur SKU (``SKU_ALIASES``); ``model`` is a Vidur model folder
(``VIDUR_MODELS``, shapes from the models' config.json) or a catalog model id, unless the row carries its own
shape columns (``hidden_size``, ``heads``, ``kv_heads``, ``head_dim``, ``intermediate_size``, ``vocab_size``,
``dtype``). The step-latency JSON profiles that ``hetagent costmodel import`` writes (costmodels/profiles.py) are
read too. Used by ``hetagent costmodel check`` (orchestrator/cli_costmodel.py) and the fit (costmodels/fit.py).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from costmodels import work as W
from costmodels.catalog import Catalog, CatalogError, DeviceType, Efficiency, ModelKind, ModelSpec, repo_configs_dir
from costmodels.roofline import roofline_step_s

SHIPPED_PROFILES = repo_configs_dir() / "profiles"
SKU_ALIASES = {"a100": "a100-80g", "h100": "h100-sxm"}  # Vidur's data/profiling/compute/<sku> folders
# Vidur's model folders: shapes from each model's config.json on the Hugging Face Hub; Vidur profiles in fp16
_VIDUR_SHAPES = {
    # name: (parameters, layers, hidden, heads, kv heads, head dim, intermediate, vocab)
    "Llama-2-7b-hf": (6_738_415_616, 32, 4096, 32, 32, 128, 11008, 32000),
    "Llama-2-70b-hf": (68_976_648_192, 80, 8192, 64, 8, 128, 28672, 32000),
    "Meta-Llama-3-8B": (8_030_261_248, 32, 4096, 32, 8, 128, 14336, 128256),
    "Meta-Llama-3-70B": (70_553_706_496, 80, 8192, 64, 8, 128, 28672, 128256),
}
SHAPE_COLUMNS = ("hidden_size", "heads", "kv_heads", "head_dim", "intermediate_size", "vocab_size", "dtype")
REQUIRED_COLUMNS = ("sku", "model", "phase", "tp", "prompt_len", "batch", "ctx_len", "n_layers", "linear_ms")


def _spec(name: str, shape: tuple[int, ...], dtype: str = "fp16") -> ModelSpec:
    params, layers, hidden, heads, kv_heads, head_dim, ff, vocab = shape
    return ModelSpec(
        name=name.lower().replace("_", "-"),
        display_name=name,
        kind=ModelKind.llm,
        parameters=float(params),
        layers=layers,
        hidden_size=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=ff,
        vocab_size=vocab,
        dtype=dtype,
        max_context_tokens=4096,
    )


VIDUR_MODELS = {name: _spec(name, shape) for name, shape in _VIDUR_SHAPES.items()}


class ProfileFormatError(CatalogError):
    """A measured profile is missing, malformed or names a device or model the cost model does not know."""


@dataclass(frozen=True)
class ProfileRow:
    """One measured step."""

    source: str  # file name
    device: str  # catalog id
    model: str  # the name in the file
    spec: ModelSpec  # the shape predicted, with the row's layer count
    phase: str  # prefill | decode
    tp: int
    batch: int
    tokens: int  # prompt tokens (prefill) or context tokens (decode)
    scope: str  # "step": the layers with attention; "linear": without attention; "full": with embedding and LM head
    measured_ms: float

    @property
    def size(self) -> str:
        return f"P={self.tokens}" if self.phase == "prefill" else f"B={self.batch} C={self.tokens}"

    @property
    def group(self) -> str:
        """The phase this row is summarised under (``prefill_linear``: attention not measured)."""
        return f"{self.phase}_linear" if self.scope == "linear" else self.phase


@dataclass(frozen=True)
class CheckedRow:
    row: ProfileRow
    predicted_ms: float
    bound: str

    @property
    def ratio(self) -> float:
        """Predicted ÷ measured."""
        return self.predicted_ms / self.row.measured_ms

    @property
    def abs_error(self) -> float:
        return abs(self.ratio - 1.0)


@dataclass(frozen=True)
class Summary:
    n: int
    median_abs_error: float
    p90_abs_error: float
    max_abs_error: float
    median_ratio: float
    worst: list[CheckedRow] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "n": self.n,
            "median_abs_error": round(self.median_abs_error, 4),
            "p90_abs_error": round(self.p90_abs_error, 4),
            "max_abs_error": round(self.max_abs_error, 4),
            "median_ratio": round(self.median_ratio, 4),
            "worst": [
                {
                    "model": c.row.model,
                    "size": c.row.size,
                    "measured_ms": round(c.row.measured_ms, 4),
                    "predicted_ms": round(c.predicted_ms, 4),
                    "ratio": round(c.ratio, 4),
                }
                for c in self.worst
            ],
        }


# ----------------------------------------------------------------------------- reading


def _model_of(r: dict[str, str], catalog: Catalog, where: str) -> ModelSpec:
    if all(r.get(c) for c in SHAPE_COLUMNS):
        try:
            return ModelSpec(
                name=r["model"].lower().replace("_", "-"),
                display_name=r["model"],
                kind=ModelKind.llm,
                parameters=1.0,  # not used by a step's time (the layers' weights come from the shape)
                layers=int(r["n_layers"]),
                hidden_size=int(r["hidden_size"]),
                heads=int(r["heads"]),
                kv_heads=int(r["kv_heads"]),
                head_dim=int(r["head_dim"]),
                intermediate_size=int(r["intermediate_size"]),
                vocab_size=int(r["vocab_size"]),
                dtype=r["dtype"],
                max_context_tokens=1 << 20,
            )
        except ValueError as exc:
            raise ProfileFormatError(f"{where}: bad model shape columns: {exc}") from None
    if r["model"] in VIDUR_MODELS:
        spec = VIDUR_MODELS[r["model"]]
    elif r["model"] in catalog.models:
        spec = catalog.model(r["model"])
    else:
        raise ProfileFormatError(
            f"{where}: unknown model {r['model']!r}: not a Vidur model ({', '.join(VIDUR_MODELS)}), not a catalog id, "
            f"and the row has no shape columns ({', '.join(SHAPE_COLUMNS)})"
        )
    if r.get("dtype"):
        spec = spec.model_copy(update={"dtype": r["dtype"]})
    return spec.model_copy(update={"layers": int(r["n_layers"])})


def read_profile_csv(path: Path, catalog: Catalog) -> list[ProfileRow]:
    """Every row of one measured profile (format in the module docstring)."""
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    except OSError as exc:
        raise ProfileFormatError(f"cannot read profile {path}: {exc.strerror}") from None
    reader = csv.DictReader(lines)
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ProfileFormatError(f"{path}: not a step profile: no column {', '.join(missing)}")
    rows = []
    for i, r in enumerate(reader, start=2):
        where = f"{path}:{i}"
        try:
            device = catalog.device(SKU_ALIASES.get(r["sku"], r["sku"])).name
        except CatalogError as exc:
            raise ProfileFormatError(f"{where}: {exc}") from None
        if r["phase"] not in ("prefill", "decode"):
            raise ProfileFormatError(f"{where}: phase must be prefill or decode, not {r['phase']!r}")
        try:
            prefill = r["phase"] == "prefill"
            total = r.get("total_ms") or ""
            row = ProfileRow(
                source=Path(path).name,
                device=device,
                model=r["model"],
                spec=_model_of(r, catalog, where),
                phase=r["phase"],
                tp=int(r["tp"]),
                batch=int(r["batch"]),
                tokens=int(r["prompt_len"] if prefill else r["ctx_len"]),
                scope="step" if total else "linear",
                measured_ms=float(total or r["linear_ms"]),
            )
        except ValueError as exc:
            raise ProfileFormatError(f"{where}: {exc}") from None
        if row.measured_ms <= 0 or row.tokens < 1 or row.batch < 1 or row.tp < 1:
            raise ProfileFormatError(f"{where}: sizes and times must be positive")
        rows.append(row)
    return rows


def read_profile_json(path: Path, catalog: Catalog) -> list[ProfileRow]:
    """The step-latency rows of a profile written by ``hetagent costmodel import`` (costmodels/profiles.py);
    request-rate files have none. Rows of a file whose notes say "kernel-only" (Vidur imports) are layer sums."""
    from costmodels.profiles import read_profile_file

    profile = read_profile_file(path)
    layers_only = "kernel-only" in profile.notes.lower()
    rows = []
    for s in profile.steps:
        try:
            device, spec = catalog.device(s.device).name, catalog.model(s.model)
        except CatalogError as exc:
            raise ProfileFormatError(f"{path}: {exc}") from None
        rows.append(
            ProfileRow(
                source=Path(path).name,
                device=device,
                model=s.model,
                spec=spec,
                phase=s.phase,
                tp=s.tensor_parallel,
                batch=s.batch,
                tokens=s.tokens,
                scope="step" if layers_only else "full",
                measured_ms=s.latency_ms,
            )
        )
    return rows


def load_profile_rows(profiles: Path, catalog: Catalog) -> list[ProfileRow]:
    """Rows of a profile file, or of every ``*.csv`` and ``*.json`` profile in a directory."""
    profiles = Path(profiles)
    paths = sorted([*profiles.glob("*.csv"), *profiles.glob("*.json")]) if profiles.is_dir() else [profiles]
    if not paths or not paths[0].exists():
        raise ProfileFormatError(f"no measured profiles (*.csv, *.json) at {profiles}")
    rows: list[ProfileRow] = []
    for p in paths:
        rows += read_profile_json(p, catalog) if p.suffix == ".json" else read_profile_csv(p, catalog)
    return rows


# ----------------------------------------------------------------------------- predicting and summarising


def step_work(row: ProfileRow) -> W.Work:
    """The work of what the row timed: the transformer layers, without attention for a ``linear`` row."""
    layers_only = row.scope != "full"
    if row.phase == "prefill":
        work = W.prefill_work(row.spec, row.tokens, row.batch, layers_only=layers_only)
    else:
        work = W.decode_step_work(row.spec, row.tokens, row.batch, layers_only=layers_only)
    if row.scope == "linear":
        groups = [g for g in work.groups if g.kind != "attention"]
        work = W.Work(sum(g.flops for g in groups), sum(g.bytes_moved for g in groups), groups=tuple(groups))
    return work


def predict_ms(row: ProfileRow, device: DeviceType) -> tuple[float, str]:
    """The cost model's time for the row on ``device`` (tensor parallel at the row's degree; the profiles hold
    kernel times, so no all-reduce is added)."""
    seconds, bound = roofline_step_s(step_work(row), device, row.spec.dtype, tp=row.tp)
    return seconds * 1000.0, bound


def check_rows(
    rows: Iterable[ProfileRow], catalog: Catalog, efficiency: dict[str, Efficiency] | None = None
) -> list[CheckedRow]:
    """Predict every row with the catalog's device entry (or with ``efficiency[device]`` in its place)."""
    out = []
    for row in rows:
        device = catalog.device(row.device)
        if efficiency and row.device in efficiency:
            device = device.model_copy(update={"efficiency": efficiency[row.device]})
        ms, bound = predict_ms(row, device)
        out.append(CheckedRow(row, ms, bound))
    return out


def summarise(checked: Sequence[CheckedRow], worst: int = 3) -> dict[str, dict[str, Summary]]:
    """Per device and phase: n, median and p90 of |predicted ÷ measured − 1|, the ``worst`` rows."""
    groups: dict[tuple[str, str], list[CheckedRow]] = {}
    for c in checked:
        groups.setdefault((c.row.device, c.row.group), []).append(c)
    order = {"prefill": 0, "decode": 1, "prefill_linear": 2, "decode_linear": 3}
    out: dict[str, dict[str, Summary]] = {}
    for (device, phase), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))):
        errors = np.array([c.abs_error for c in cs])
        out.setdefault(device, {})[phase] = Summary(
            n=len(cs),
            median_abs_error=float(np.median(errors)),
            p90_abs_error=float(np.percentile(errors, 90)),
            max_abs_error=float(errors.max()),
            median_ratio=float(np.median([c.ratio for c in cs])),
            worst=sorted(cs, key=lambda c: -c.abs_error)[:worst],
        )
    return out


def summary_json(summary: dict[str, dict[str, Summary]]) -> dict[str, dict[str, dict[str, object]]]:
    return {device: {phase: s.to_json() for phase, s in phases.items()} for device, phases in summary.items()}


def summary_markdown(summary: dict[str, dict[str, Summary]]) -> str:
    """The summary as a Markdown table (for docs)."""
    lines = [
        "| device | phase | n | median abs error | p90 abs error | max abs error | median predicted ÷ measured "
        "| worst rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for device, phases in summary.items():
        for phase, s in phases.items():
            worst = "; ".join(f"{c.row.model} {c.row.size}: {c.ratio:.2f}" for c in s.worst)
            lines.append(
                f"| {device} | {phase} | {s.n} | {s.median_abs_error:.1%} | {s.p90_abs_error:.1%} | "
                f"{s.max_abs_error:.1%} | {s.median_ratio:.3f} | {worst} |"
            )
    return "\n".join(lines)


def scatter_png(checked: Sequence[CheckedRow], path: Path, title: str = "") -> Path:
    """Predicted vs measured, log-log, one colour per device and phase, with the ±10% and ±25% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
    lo = min(min(c.row.measured_ms, c.predicted_ms) for c in checked) / 1.5
    hi = max(max(c.row.measured_ms, c.predicted_ms) for c in checked) * 1.5
    xs = np.array([lo, hi])
    ax.plot(xs, xs, color="black", lw=1, label="predicted = measured")
    for band, style in ((0.10, "--"), (0.25, ":")):
        for k in (1 - band, 1 + band):
            ax.plot(xs, xs * k, color="grey", lw=0.8, ls=style, label=f"±{band:.0%}" if k > 1 else None)
    keys = sorted({(c.row.device, c.row.group) for c in checked})
    for i, (device, group) in enumerate(keys):
        cs = [c for c in checked if (c.row.device, c.row.group) == (device, group)]
        color = f"C{i % 10}"
        ax.scatter(
            [c.row.measured_ms for c in cs],
            [c.predicted_ms for c in cs],
            marker="o" if group.startswith("prefill") else "s",
            s=28,
            facecolors="none" if group.endswith("_linear") else color,
            edgecolors=color,
            label=f"{device} {group} ({len(cs)})",
        )
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured ms", ylabel="predicted ms")
    ax.set_title(title or "cost model: predicted vs measured step time", fontsize=10)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
