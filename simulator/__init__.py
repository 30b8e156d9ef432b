"""The simulator: a discrete-event replay of a plan under load (simulator/core.py states the model).

Reads a plan (``planner.plan``), the granular graph and the cost models (``costmodels``); never the
solver. The names below are the public API; they load on first use, so ``import simulator`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.arrivals import arrival_times as arrival_times
    from simulator.core import (
        SimOptions as SimOptions,
        SimResult as SimResult,
        SimulationError as SimulationError,
        simulate as simulate,
    )

# public name -> the module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "arrival_times": "simulator.arrivals",
    "SimOptions": "simulator.core",
    "SimResult": "simulator.core",
    "SimulationError": "simulator.core",
    "simulate": "simulator.core",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
