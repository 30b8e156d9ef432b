"""Online calibration: refit a device's efficiency factors from the op latencies the runtime measures,
so the cost model's predictions converge on what the hardware does.

Model: for roofline ops (prefill, decode, embed, vector_search) predicted latency is
work / (peak · efficiency) (+ a fixed overhead), so if measured / predicted = f on a device, dividing
its compute and memory efficiencies by f makes the next prediction match. Each refit moves only
part of the way (``step``: f**step) and ignores noise inside ``tolerance``, so one slow run does
not swing the planner. An observation's prediction is the one of the plan that ran, made with the catalog
of that time; ``prediction_scale`` (the refits applied to its device since then, multiplied) turns it
into the current catalog's prediction, so a deployment that keeps its plan after a refit does not count
the same gap again at every pass (without it the factor compounded without bound). Records whose
worker served a stand-in model (the offline tiny LLM, the packaged embedding model) or ops priced
from the spec's declared latency (tools, transforms) are not evidence about the hardware and are
skipped.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from costmodels.catalog import Catalog

ROOFLINE_KINDS = ("llm", "embed", "vector_search")


@dataclass(frozen=True)
class Observation:
    device: str
    kind: str  # spec node kind
    measured_ms: float
    predicted_ms: float
    stand_in: bool = False  # the worker served another model than the one predicted
    prediction_scale: float = 1.0  # the current catalog's prediction ÷ predicted_ms (refits since the plan)


def observations_from_records(
    records: Iterable[dict[str, Any]], prediction_scale: dict[str, float] | None = None
) -> list[Observation]:
    """Observations from executor run records (workers.executor.OpRecord as dicts); ``prediction_scale``
    per device: the refits applied since the plan that predicted them was made."""
    scales = prediction_scale or {}
    out = []
    for r in records:
        detail = r.get("detail") or {}
        served, requested = detail.get("model_served"), detail.get("model_requested")
        stand_in = bool(served and requested and str(served).rstrip("/").split("/")[-1] != requested)
        device = r["device"]
        out.append(
            Observation(
                device,
                r["kind"],
                float(r["measured_ms"]),
                float(r["predicted_ms"]),
                stand_in,
                scales.get(device, 1.0),
            )
        )
    return out


def refit(
    catalog: Catalog,
    observations: Iterable[Observation],
    *,
    min_samples: int = 10,
    step: float = 0.5,
    tolerance: float = 0.1,
) -> tuple[Catalog, dict[str, float]]:
    """A catalog with refitted efficiencies, and the factor applied per device (1/f per efficiency)."""
    ratios: dict[str, list[float]] = {}
    for o in observations:
        if o.kind in ROOFLINE_KINDS and not o.stand_in and o.predicted_ms > 0 and o.measured_ms > 0:
            ratios.setdefault(o.device, []).append(o.measured_ms / (o.predicted_ms * o.prediction_scale))
    hardware = dict(catalog.hardware)
    applied: dict[str, float] = {}
    for device, rs in ratios.items():
        if device not in hardware or len(rs) < min_samples:
            continue
        f = statistics.median(rs)
        if abs(f - 1.0) <= tolerance:
            continue
        scale = f**step
        eff = hardware[device].efficiency
        new_eff = eff.model_copy(
            update={"compute": min(1.0, eff.compute / scale), "memory": min(1.0, eff.memory / scale)}
        )
        hardware[device] = hardware[device].model_copy(update={"efficiency": new_eff})
        # what the prediction moves by: ``scale``, unless an efficiency was capped at 1.0
        applied[device] = math.sqrt(eff.compute / new_eff.compute * eff.memory / new_eff.memory)
    if not applied:
        return catalog, {}
    return catalog.model_copy(update={"hardware": hardware}), applied
