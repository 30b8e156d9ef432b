"""Online calibration: refit a device's efficiency factors from the op latencies the runtime measures,
so the cost model's predictions converge on what the hardware does.

Model: for roofline ops (prefill, decode, embed, vector_search) predicted latency is
work / (peak · efficiency) (+ a fixed overhead), so if measured / predicted = f on a device, dividing
its compute and memory efficiencies by f makes the next prediction match. Each refit moves only
part of the way (``step``: f**step) and ignores noise inside ``tolerance``, so one slow run does
not swing the planner. Records whose worker served a stand-in model (the offline tiny LLM, the
packaged embedding model) or ops priced from the spec's declared latency (tools, transforms) are
not evidence about the hardware and are skipped.
"""

from __future__ import annotations

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


def observations_from_records(records: Iterable[dict[str, Any]]) -> list[Observation]:
    """Observations from executor run records (workers.executor.OpRecord as dicts)."""
    out = []
    for r in records:
        detail = r.get("detail") or {}
        served, requested = detail.get("model_served"), detail.get("model_requested")
        stand_in = bool(served and requested and str(served).rstrip("/").split("/")[-1] != requested)
        out.append(Observation(r["device"], r["kind"], float(r["measured_ms"]), float(r["predicted_ms"]), stand_in))
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
            ratios.setdefault(o.device, []).append(o.measured_ms / o.predicted_ms)
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
        applied[device] = scale
    if not applied:
        return catalog, {}
    return catalog.model_copy(update={"hardware": hardware}), applied
