"""Fit a device's roofline parameters (costmodels/roofline.py) to measured step timings.

The parameters are the device's ``Efficiency``: GEMM compute and memory efficiency, attention compute and
memory efficiency, the ridge exponent p and the fixed time per kernel. They are fitted together by bounded
least squares on log(predicted ÷ measured) over every row of the device (``scipy.optimize.least_squares``,
from two fixed starting points so the result does not depend on what the catalog holds), each row weighing
the same. Parameters the rows cannot constrain keep the device's values: attention compute needs prefill
rows with attention, attention memory decode rows with attention. The efficiencies are fractions of the
datasheet peaks, so a fit on one device carries over to another through that device's own peaks.

``hetagent costmodel check --fit`` runs this and prints the values for the catalog.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from costmodels.catalog import DeviceType, Efficiency
from costmodels.check import ProfileRow, predict_ms

# field: (lower, upper) bound
BOUNDS: dict[str, tuple[float, float]] = {
    "compute": (0.02, 1.0),
    "memory": (0.02, 1.0),
    "attention_compute": (0.01, 1.0),
    "attention_memory": (0.02, 1.0),
    "ridge_exponent": (1.0, 16.0),
    "kernel_overhead_us": (0.0, 100.0),
}
STARTS: tuple[dict[str, float], ...] = (
    {
        "compute": 0.6,
        "memory": 0.7,
        "attention_compute": 0.3,
        "attention_memory": 0.8,
        "ridge_exponent": 3.0,
        "kernel_overhead_us": 5.0,
    },
    {
        "compute": 0.4,
        "memory": 0.5,
        "attention_compute": 0.1,
        "attention_memory": 0.5,
        "ridge_exponent": 1.5,
        "kernel_overhead_us": 1.0,
    },
)
SIGNIFICANT_DIGITS = 3


class FitError(ValueError):
    """Too few rows to fit, or rows of several devices."""


@dataclass(frozen=True)
class EfficiencyFit:
    device: str
    efficiency: Efficiency  # the device's efficiency with the fitted fields replaced
    fitted: tuple[str, ...]  # the fields the rows constrained
    rows: int
    rms_log_error: float  # of the rows fitted


def _fields_for(rows: Sequence[ProfileRow]) -> tuple[str, ...]:
    fields = ["compute", "memory", "ridge_exponent", "kernel_overhead_us"]
    if any(r.phase == "prefill" and r.scope != "linear" for r in rows):
        fields.append("attention_compute")
    if any(r.phase == "decode" and r.scope != "linear" for r in rows):
        fields.append("attention_memory")
    return tuple(fields)


def _rounded(value: float) -> float:
    """SIGNIFICANT_DIGITS digits, and 0 for what the optimiser left a rounding error above its lower bound of 0."""
    return 0.0 if abs(value) < 1e-9 else float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def fit_efficiency(rows: Sequence[ProfileRow], device: DeviceType) -> EfficiencyFit:
    """Least-squares fit of ``device``'s efficiency to ``rows`` (all of that device)."""
    from scipy.optimize import least_squares

    others = {r.device for r in rows} - {device.name}
    if others:
        raise FitError(f"rows of {', '.join(sorted(others))} in a fit of {device.name}")
    fields = _fields_for(rows)
    if len(rows) < len(fields) + 2:
        raise FitError(f"{device.name}: {len(rows)} rows cannot fit {len(fields)} parameters")
    base = device.efficiency

    def with_values(x: npt.NDArray[np.float64]) -> DeviceType:
        values = {f: float(v) for f, v in zip(fields, x, strict=True)}
        return device.model_copy(update={"efficiency": base.model_copy(update=values)})

    def residuals(x: npt.NDArray[np.float64], /) -> list[float]:
        dev = with_values(x)
        return [math.log(predict_ms(r, dev)[0] / r.measured_ms) for r in rows]

    lower = [BOUNDS[f][0] for f in fields]
    upper = [BOUNDS[f][1] for f in fields]
    best = None
    for start in STARTS:
        result = least_squares(residuals, [start[f] for f in fields], bounds=(lower, upper), x_scale="jac")
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None  # STARTS is not empty
    values = {f: _rounded(v) for f, v in zip(fields, best.x, strict=True)}
    efficiency = Efficiency.model_validate({**base.model_dump(), **values})
    final = residuals(np.array([values[f] for f in fields]))
    return EfficiencyFit(
        device=device.name,
        efficiency=efficiency,
        fitted=fields,
        rows=len(rows),
        rms_log_error=math.sqrt(sum(e * e for e in final) / len(final)),
    )
