"""Fit a CPU device's roofline efficiencies to a serving engine's measured prefill and decode steps.

``hetagent calibrate --engine vllm`` times the real vLLM CPU engine on the offline tiny model
(``workers/engine_probe.py``: prefill of P tokens for B prompts, decode steps at batch B and context C);
this module turns those timings into the ``Efficiency`` fields the roofline (costmodels/roofline.py)
prices CPU LLM steps with. Each measured step is predicted exactly as the planner prices a step of that
shape: ``work.prefill_work`` / ``work.decode_step_work`` on the model's ``ModelSpec``, then
``roofline.roofline_step_s`` on the device with all its cores (what a CPU LLM replica gets).

Fitted (bounded least squares on log(predicted ÷ measured), every step weighing the same):

- ``fixed_overhead_ms``: the engine's time per step that no kernel roof explains (scheduling, input
  preparation, sampling, output processing; on this machine it dominates a small model);
- ``compute``: GEMM efficiency, seen in long prefills;
- ``attention_compute``: causal prefill attention (P² FLOPs) efficiency, seen in long prefills;
- ``attention_memory``: decode attention's KV-cache read efficiency, seen at large batch × context.

Held at the device's values: ``memory`` (streaming; the measured stream copy defines the peak),
``kernel_overhead_us`` (with one model the kernels per step are a constant, so a per-kernel time cannot be
told apart from the per-step one; calibration leaves it at 0) and ``ridge_exponent`` (the hard max).
A parameter the steps do not constrain stays at its start value (1.0 for the efficiencies: no evidence of
loss). The minimiser is ``scipy.optimize.least_squares`` (bounded; the efficiencies in log space) from two
starting points, as ``costmodels/fit.py`` fits kernel profiles.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from costmodels import work as W
from costmodels.catalog import DeviceType, Efficiency, ModelSpec
from costmodels.roofline import roofline_step_s

# field: (lower, upper, log scale)
FIT_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "fixed_overhead_ms": (0.0, 2000.0, False),
    "compute": (0.005, 1.0, True),
    "attention_compute": (0.002, 1.0, True),
    "attention_memory": (0.005, 1.0, True),
}
HELD_FIELDS = ("memory", "kernel_overhead_us", "ridge_exponent")
START_EFFICIENCIES = (1.0, 0.3)  # two starting points, so the result does not depend on the catalog's values
SIGNIFICANT_DIGITS = 4


# (model dir, quick) -> {"steps": [EngineStep, ...], "method": str, "engine": {...}}: times a serving engine
# (workers/engine_probe.py's measure_engine_steps; passed in, this layer imports no engine)
EngineProbe = Callable[[Path, bool], dict[str, Any]]


class EngineFitError(ValueError):
    """Too few, or unusable, measured engine steps to fit."""


@dataclass(frozen=True)
class EngineStep:
    """One measured engine step shape: ``tokens`` is the prompt length (prefill) or the mean context (decode)."""

    phase: str  # "prefill" | "decode"
    batch: int
    tokens: float
    measured_ms: float  # median of ``samples_ms``
    samples_ms: tuple[float, ...] = ()
    other_cpu: float | None = None  # share of CPU time other processes used while this shape was timed

    def __post_init__(self) -> None:
        if self.phase not in ("prefill", "decode"):
            raise EngineFitError(f"phase must be prefill or decode, not {self.phase!r}")
        if self.batch < 1 or self.tokens < 1 or not self.measured_ms > 0 or not math.isfinite(self.measured_ms):
            raise EngineFitError(f"a measured step needs batch, tokens and time > 0: {self}")

    def to_json(self) -> dict[str, object]:
        return {
            "phase": self.phase,
            "batch": self.batch,
            "tokens": self.tokens,
            "measured_ms": self.measured_ms,
            "samples_ms": list(self.samples_ms),
            "other_cpu": self.other_cpu,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EngineStep:
        other = d.get("other_cpu")
        return cls(
            phase=str(d["phase"]),
            batch=int(d["batch"]),
            tokens=float(d["tokens"]),
            measured_ms=float(d["measured_ms"]),
            samples_ms=tuple(float(x) for x in d.get("samples_ms") or ()),
            other_cpu=None if other is None else float(other),
        )


@dataclass(frozen=True)
class EngineFit:
    efficiency: Efficiency  # the device's efficiency with the fitted fields replaced
    fitted: tuple[str, ...]
    predicted_ms: tuple[float, ...]  # per step, in the order given
    median_abs_error: float  # of |predicted ÷ measured − 1| over the steps
    max_abs_error: float
    rows: list[dict[str, object]] = field(default_factory=list)  # per step: shape, measured, predicted, ratio


def step_work(model: ModelSpec, step: EngineStep) -> W.Work:
    """The work of one measured step, as the planner counts it."""
    if step.phase == "prefill":
        return W.prefill_work(model, int(round(step.tokens)), step.batch)
    return W.decode_step_work(model, step.tokens, step.batch)


def predict_step_ms(model: ModelSpec, device: DeviceType, step: EngineStep) -> float:
    """The roofline's time of one step on the whole CPU device (all its cores), ms."""
    seconds, _ = roofline_step_s(step_work(model, step), device, model.dtype, cores=device.cores)
    return seconds * 1000.0


def _with(device: DeviceType, values: dict[str, float]) -> DeviceType:
    return device.model_copy(update={"efficiency": device.efficiency.model_copy(update=values)})


def fit_engine_steps(model: ModelSpec, device: DeviceType, steps: Sequence[EngineStep]) -> EngineFit:
    """Fit ``device``'s per-step overhead and GEMM / attention efficiencies to the measured ``steps`` of ``model``."""
    from scipy.optimize import least_squares

    if len(steps) < len(FIT_BOUNDS) + 1:
        raise EngineFitError(f"{len(steps)} measured steps cannot fit {len(FIT_BOUNDS)} parameters")
    names = tuple(FIT_BOUNDS)
    logs = [math.log(s.measured_ms) for s in steps]

    def values(x: npt.NDArray[np.float64]) -> dict[str, float]:
        return {n: math.exp(u) if FIT_BOUNDS[n][2] else float(u) for n, u in zip(names, x, strict=True)}

    def residuals(x: npt.NDArray[np.float64], /) -> list[float]:
        dev = _with(device, values(x))
        return [math.log(predict_step_ms(model, dev, s)) - m for s, m in zip(steps, logs, strict=True)]

    lower = [math.log(FIT_BOUNDS[n][0]) if FIT_BOUNDS[n][2] else FIT_BOUNDS[n][0] for n in names]
    upper = [math.log(FIT_BOUNDS[n][1]) if FIT_BOUNDS[n][2] else FIT_BOUNDS[n][1] for n in names]
    # starts: no efficiency loss (or some), and the per-step overhead the smallest step leaves over its roofline
    ideal = _with(device, {"fixed_overhead_ms": 0.0, "compute": 1.0, "attention_compute": 1.0, "attention_memory": 1.0})
    overhead = max(0.0, min(s.measured_ms - predict_step_ms(model, ideal, s) for s in steps))
    best = None
    for start in START_EFFICIENCIES:
        x0 = [overhead if not FIT_BOUNDS[n][2] else math.log(start) for n in names]
        x0 = [min(max(v, lo), hi) for v, lo, hi in zip(x0, lower, upper, strict=True)]
        result = least_squares(residuals, x0, bounds=(lower, upper), x_scale="jac")
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None  # START_EFFICIENCIES is not empty
    fitted = {n: float(f"{v:.{SIGNIFICANT_DIGITS}g}") for n, v in values(best.x).items()}
    efficiency = Efficiency.model_validate({**device.efficiency.model_dump(), **fitted})
    dev = device.model_copy(update={"efficiency": efficiency})
    predicted = tuple(predict_step_ms(model, dev, s) for s in steps)
    errors = [abs(p / s.measured_ms - 1.0) for p, s in zip(predicted, steps, strict=True)]
    rows: list[dict[str, object]] = [
        {
            "phase": s.phase,
            "batch": s.batch,
            "tokens": s.tokens,
            "measured_ms": round(s.measured_ms, 3),
            "predicted_ms": round(p, 3),
            "ratio": round(p / s.measured_ms, 3),
        }
        for s, p in zip(steps, predicted, strict=True)
    ]
    return EngineFit(
        efficiency=efficiency,
        fitted=names,
        predicted_ms=predicted,
        median_abs_error=statistics.median(errors),
        max_abs_error=max(errors),
        rows=rows,
    )


def fit_engine_phase(
    probe: EngineProbe, mdir: Path, spec: ModelSpec, peaks: DeviceType, quick: bool, raw: dict[str, Any]
) -> tuple[EngineFit, float, dict[str, str]]:
    """Calibration's model phase with a serving engine (``calibrate.calibrate_cpu``): time the engine's steps on
    the tiny model with ``probe`` and fit ``peaks``' efficiencies to them. Returns (the fit, the largest CPU share
    other processes used while timing, the efficiency fields' sources without calibrate's "measured by" prefix)
    and adds ``raw["engine"]``."""
    measured = probe(mdir, quick)
    steps = measured["steps"]
    fit = fit_engine_steps(spec, peaks, steps)
    loads = [s.other_cpu for s in steps if s.other_cpu is not None]
    model_load = max(loads, default=0.0)
    raw["engine"] = {
        "model_dir": str(mdir),
        "parameters": int(spec.parameters),
        "method": measured.get("method"),
        "engine": measured.get("engine"),
        "steps": fit.rows,
        "fitted": {k: getattr(fit.efficiency, k) for k in FIT_BOUNDS},
        "fit_median_abs_error": round(fit.median_abs_error, 4),
        "fit_max_abs_error": round(fit.max_abs_error, 4),
        "other_processes_cpu_max": round(model_load, 3),
    }
    shapes = (
        f"{sum(s.phase == 'prefill' for s in steps)} prefill and {sum(s.phase == 'decode' for s in steps)} "
        f"decode shapes of {spec.name}"
    )
    how = (
        f"fitted to {shapes} timed on the serving engine ({measured.get('method')}): least squares on "
        f"log(roofline / measured), median |error| {fit.median_abs_error:.1%} (costmodels/engine_fit.py)"
    )
    sources = {
        "efficiency.fixed_overhead_ms": f"per engine step, {how}",
        "efficiency.compute": f"GEMM share of the measured fp32 GEMM peak, {how}",
        "efficiency.attention_compute": f"prefill attention share of the fp32 GEMM peak, {how}",
        "efficiency.attention_memory": f"decode attention (KV read) share of the stream bandwidth, {how}",
        "efficiency.memory": "1.0 by definition: memory_bandwidth_gb_s is the measured stream copy (held in the fit)",
        "efficiency.kernel_overhead_us": (
            "0: one model runs the same kernels every step, so a per-kernel time is not told apart from the "
            "per-step fixed_overhead_ms"
        ),
    }
    return fit, model_load, sources
