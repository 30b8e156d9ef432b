"""Measured profiles that override the roofline: the store format, interpolated lookups, sourced configurations.

A profiles directory (``hetagent plan --profiles DIR``) holds one JSON file per imported source, written by
``hetagent costmodel import`` (costmodels/profile_import.py). Two kinds of table:

* ``step-latency`` (from Vidur's per-operator CSVs): the latency of one prefill step (batch, prompt tokens) or
  one decode step (batch, context tokens) of a model at a tensor-parallel degree on a device type;
* ``request-rate`` (from Mélange's tables): the highest request rate one device sustains for requests of
  (input, output) tokens while meeting a time-per-output-token SLO (0: it cannot meet it).

Lookups interpolate linearly in the logarithm of the size coordinates between measured points (exact at a
point, monotone between two) and return None outside them, so the roofline stays the fallback. Device and
model names in a file are catalog ids (the importer maps the source's names explicitly); an unknown id, or two
files covering the same table, is a ``ProfileError``.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from costmodels import work as W
from costmodels.catalog import Catalog, CatalogError, DeviceClass, DeviceType
from costmodels.granular import GranularOp
from costmodels.roofline import MIN_LATENCY_S, OpConfig, op_configs

ROOFLINE = "roofline"
CALIBRATED = "calibrated"
_CALIBRATION_MARK = "measured by hetagent calibrate"


class ProfileError(CatalogError):
    """A profile file is missing, malformed, names an unknown device or model, or overlaps another."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepRow(_Strict):
    """One measured step of a model on a device type."""

    device: str = Field(description="Hardware catalog id.")
    model: str = Field(description="Model catalog id.")
    phase: Literal["prefill", "decode"]
    tensor_parallel: int = Field(ge=1, description="Devices the step runs on.")
    batch: int = Field(ge=1, description="Sequences in the step.")
    tokens: int = Field(ge=1, description="Prompt tokens per sequence (prefill) or context tokens (decode).")
    latency_ms: float = Field(gt=0, description="Measured time of the step, ms.")


class RateRow(_Strict):
    """The highest request rate one device sustains for one request size under a TPOT SLO."""

    device: str = Field(description="Hardware catalog id.")
    model: str = Field(description="Model catalog id.")
    tpot_slo_ms: float = Field(gt=0, description="Time-per-output-token SLO the rate was measured under, ms.")
    input_tokens: int = Field(ge=1, description="Prompt tokens of every request.")
    output_tokens: int = Field(ge=1, description="Generated tokens of every request.")
    max_req_per_s: float = Field(ge=0, description="Requests/s one device sustains meeting the SLO; 0: cannot.")


class ProfileFile(_Strict):
    """One imported source: what ``hetagent costmodel import`` writes, one file per source."""

    format: Literal["hetagent-profile/v1"] = Field("hetagent-profile/v1", description="Format version.")
    kind: Literal["step-latency", "request-rate"]
    command: str = Field(description="The command that wrote the file.")
    source: str = Field(description="What was imported (path, and its provenance where known).")
    notes: str = Field("", description="How the numbers were derived from the source.")
    steps: list[StepRow] = Field(default_factory=list, description="step-latency rows.")
    rates: list[RateRow] = Field(default_factory=list, description="request-rate rows.")


def write_profile_file(profile: ProfileFile, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.model_dump(mode="json"), indent=1) + "\n")
    return path


def read_profile_file(path: Path) -> ProfileFile:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not JSON: {exc}") from None
    try:
        return ProfileFile.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()]
        raise ProfileError("\n".join(lines)) from None


# ----------------------------------------------------------------------------- interpolation


def _bracket(axis: list[float], q: float) -> tuple[int, int, float] | None:
    """(i, j, t): q = axis[i]·(axis[j]/axis[i])^t with 0 ≤ t ≤ 1 (t = 0 when q is a point); None outside."""
    if not axis or q < axis[0] * (1 - 1e-12) or q > axis[-1] * (1 + 1e-12):
        return None
    i = bisect.bisect_left(axis, q * (1 - 1e-12))
    if i < len(axis) and math.isclose(axis[i], q, rel_tol=1e-12):
        return i, i, 0.0
    lo, hi = i - 1, i
    return lo, hi, (math.log(q) - math.log(axis[lo])) / (math.log(axis[hi]) - math.log(axis[lo]))


def _interp_1d(axis: list[float], values: list[float], q: float, zero_absorbs: bool) -> float | None:
    b = _bracket(axis, q)
    if b is None:
        return None
    i, j, t = b
    if zero_absorbs and (values[i] <= 0 or (t > 0 and values[j] <= 0)):
        return 0.0
    return values[i] + t * (values[j] - values[i])


@dataclass
class Grid:
    """Values at points of two positive size coordinates (x, y): interpolated along y within the two rows of x
    that bracket the query, then along x — linear in the logarithms of x and y. Rows may have different y points
    (measurement grids are ragged); a query outside either bracketing row is outside the grid."""

    points: dict[tuple[float, float], float]

    def __post_init__(self) -> None:
        rows: dict[float, list[tuple[float, float]]] = {}
        for (x, y), v in self.points.items():
            rows.setdefault(x, []).append((y, v))
        self.xs = sorted(rows)
        self.rows = {x: ([y for y, _ in sorted(r)], [v for _, v in sorted(r)]) for x, r in rows.items()}

    def at(self, x: float, y: float, *, zero_absorbs: bool = False) -> float | None:
        """Interpolated value, or None outside the measured points.

        ``zero_absorbs``: a zero neighbour makes the answer 0 (a rate of 0 means "cannot", and a point between
        a size that can and one that cannot is not known to be servable)."""
        bx = _bracket(self.xs, x)
        if bx is None:
            return None
        i, j, t = bx
        lo = _interp_1d(*self.rows[self.xs[i]], y, zero_absorbs)
        if lo is None or t == 0:
            return lo
        hi = _interp_1d(*self.rows[self.xs[j]], y, zero_absorbs)
        if hi is None:
            return None
        if zero_absorbs and (lo <= 0 or hi <= 0):
            return 0.0
        return lo + t * (hi - lo)


# ----------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class RequestRate:
    """What a request-rate table says about one request size on one device type."""

    tpot_slo_ms: float
    max_req_per_s: float  # 0: the device cannot meet the SLO at this size
    source: str  # "profile:<file>"


class ProfileStore:
    """Every profile file of a directory, indexed for lookups. Built by ``load_profiles``."""

    def __init__(self, files: dict[str, ProfileFile], catalog: Catalog):
        self.files = files
        self._steps: dict[tuple[str, str, str, int], tuple[Grid, str]] = {}
        self._rates: dict[tuple[str, str], dict[float, tuple[Grid, str]]] = {}
        step_pts: dict[tuple[str, str, str, int], dict[tuple[float, float], float]] = {}
        rows: list[StepRow | RateRow]
        rate_pts: dict[tuple[str, str, float], dict[tuple[float, float], float]] = {}
        owner: dict[tuple[object, ...], str] = {}
        for name, f in sorted(files.items()):
            rows = [*f.steps, *f.rates]
            for row in rows:
                _check_ids(catalog, name, row.device, row.model)
            for s in f.steps:
                skey: tuple[str, str, str, int] = (s.device, s.model, s.phase, s.tensor_parallel)
                _claim(owner, skey, name)
                step_pts.setdefault(skey, {})[float(s.batch), float(s.tokens)] = s.latency_ms
            for r in f.rates:
                rkey = (r.device, r.model, r.tpot_slo_ms)
                _claim(owner, rkey, name)
                rate_pts.setdefault(rkey, {})[float(r.input_tokens), float(r.output_tokens)] = r.max_req_per_s
        for skey, pts in step_pts.items():
            self._steps[skey] = (Grid(pts), f"profile:{owner[skey]}")
        for (dev, model, slo), pts in rate_pts.items():
            self._rates.setdefault((dev, model), {})[slo] = (Grid(pts), f"profile:{owner[dev, model, slo]}")

    def step_ms(
        self, device: str, model: str, phase: str, tensor_parallel: int, batch: int, tokens: float
    ) -> tuple[float, str] | None:
        """Interpolated step latency (ms) and its source, or None where no profile covers the point."""
        found = self._steps.get((device, model, phase, tensor_parallel))
        if found is None:
            return None
        grid, source = found
        ms = grid.at(batch, tokens)
        return None if ms is None else (ms, source)

    def request_rates(self, device: str, model: str, input_tokens: int, output_tokens: int) -> list[RequestRate]:
        """Every request-rate table of (device, model) covering this size (empty: not covered)."""
        out = []
        for slo, (grid, source) in sorted(self._rates.get((device, model), {}).items()):
            rate = grid.at(input_tokens, output_tokens, zero_absorbs=True)
            if rate is not None:
                out.append(RequestRate(slo, rate, source))
        return out


def _check_ids(catalog: Catalog, file: str, device: str, model: str) -> None:
    if device not in catalog.hardware:
        raise ProfileError(
            f"profile {file}: unknown device type {device!r}; known: {', '.join(sorted(catalog.hardware))}"
        )
    if model not in catalog.models:
        raise ProfileError(f"profile {file}: unknown model {model!r}; known: {', '.join(sorted(catalog.models))}")


def _claim(owner: dict[tuple[object, ...], str], key: tuple[object, ...], file: str) -> None:
    prev = owner.setdefault(key, file)
    if prev != file:
        raise ProfileError(f"profiles {prev} and {file} both cover {key}; keep one of them in the directory")


def load_profiles(directory: Path, catalog: Catalog) -> ProfileStore:
    """Every ``*.json`` profile of ``directory`` (a missing or empty directory is an error: a typo, not "none")."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ProfileError(f"profiles directory {directory} does not exist")
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise ProfileError(f"profiles directory {directory} holds no *.json profile (hetagent costmodel import)")
    return ProfileStore({p.name: read_profile_file(p) for p in paths}, catalog)


# ----------------------------------------------------------------------------- sourced configurations


def roofline_source(device: DeviceType) -> str:
    """'calibrated' when the device's efficiencies were measured by `hetagent calibrate`, else 'roofline'."""
    measured = any(k.startswith("efficiency") and v.startswith(_CALIBRATION_MARK) for k, v in device.sources.items())
    return CALIBRATED if measured else ROOFLINE


def profiled_latency_ms(op: GranularOp, c: OpConfig, store: ProfileStore | None) -> tuple[float, str] | None:
    """A prefill or decode configuration's latency from a step-latency profile, or None where none covers it."""
    if store is None or not op.model or op.kind not in ("prefill", "decode"):
        return None
    if op.kind == "prefill":
        return store.step_ms(c.device, op.model, "prefill", c.tensor_parallel, c.batch, op.input_tokens)
    ctx = W.decode_mean_context(op.input_tokens, op.output_tokens)
    step = store.step_ms(c.device, op.model, "decode", c.tensor_parallel, c.batch, ctx)
    return None if step is None else (step[0] * op.output_tokens, step[1])


def estimated_configs(
    op: GranularOp, device: DeviceType, catalog: Catalog, *, per_node: int | None = None, store: ProfileStore | None
) -> list[OpConfig]:
    """``op_configs`` with every configuration's source: a covering profile's latency replaces the roofline's."""
    base = roofline_source(device)
    out = []
    for c in op_configs(op, device, catalog, per_node=per_node):
        found = profiled_latency_ms(op, c, store)
        if found is None:
            out.append(c if base == c.estimate_source else replace(c, estimate_source=base))
            continue
        ms, source = found
        latency_s = max(ms / 1000.0, MIN_LATENCY_S)
        cores = c.cores_per_replica if device.device_class is DeviceClass.cpu else 0
        out.append(
            replace(
                c,
                latency_ms=latency_s * 1000.0,
                throughput_per_replica=c.batch / latency_s,
                core_s_per_call=latency_s * cores / c.batch if cores else 0.0,
                estimate_source=source,
            )
        )
    return out
