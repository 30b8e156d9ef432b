"""Arrival processes of graph runs: Poisson, bursty (gamma renewal of a given CV) or a trace of timestamps."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path


class ArrivalError(ValueError):
    """A bad --arrivals value or trace file."""


def arrival_times(spec: str, rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Arrival times (s) in [0, duration_s) for ``spec``: ``poisson``, ``bursty:CV`` or a CSV path.

    ``bursty:CV`` draws gaps from a gamma distribution with mean 1/rate and coefficient of variation CV
    (shape 1/CV²; CV = 1 is Poisson, CV > 1 clusters arrivals). A trace CSV holds one arrival time in
    seconds per row (first column; a header row is skipped); ``rate_per_s`` is ignored for it.
    """
    if duration_s <= 0:
        raise ArrivalError(f"duration must be > 0 s, got {duration_s}")
    if spec == "poisson":
        return _renewal(rate_per_s, duration_s, 1.0, seed)
    if spec.startswith("bursty:"):
        try:
            cv = float(spec.partition(":")[2])
        except ValueError:
            raise ArrivalError(f"bursty:CV needs a number, got {spec!r}") from None
        if not cv > 0 or math.isinf(cv):
            raise ArrivalError(f"bursty:CV needs CV > 0, got {spec!r}")
        return _renewal(rate_per_s, duration_s, cv, seed)
    path = Path(spec)
    if path.suffix.lower() != ".csv":
        raise ArrivalError(f"--arrivals must be poisson, bursty:CV or a .csv trace, got {spec!r}")
    return read_trace(path, duration_s)


def _renewal(rate_per_s: float, duration_s: float, cv: float, seed: int) -> list[float]:
    if not rate_per_s > 0:
        raise ArrivalError(f"rate must be > 0 runs/s, got {rate_per_s}")
    rng = random.Random(f"{seed}:arrivals")
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate_per_s * shape)

    def gap() -> float:
        return rng.expovariate(rate_per_s) if cv == 1.0 else rng.gammavariate(shape, scale)

    out: list[float] = []
    t = gap()
    while t < duration_s:
        out.append(t)
        t += gap()
    return out


def read_trace(path: Path, duration_s: float) -> list[float]:
    """Arrival times from a CSV, sorted, those before ``duration_s``."""
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except OSError as exc:
        raise ArrivalError(f"cannot read trace {path}: {exc}") from None
    out: list[float] = []
    for i, row in enumerate(rows):
        if not row or not row[0].strip():
            continue
        try:
            t = float(row[0])
        except ValueError:
            if i == 0:  # header
                continue
            raise ArrivalError(f"{path}:{i + 1}: not a time in seconds: {row[0]!r}") from None
        if not math.isfinite(t) or t < 0:
            raise ArrivalError(f"{path}:{i + 1}: arrival time must be finite and >= 0, got {row[0]!r}")
        if t < duration_s:
            out.append(t)
    if not out:
        raise ArrivalError(f"{path}: no arrival times before {duration_s} s")
    return sorted(out)
