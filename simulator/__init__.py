"""The simulator: a discrete-event replay of a plan under load (simulator/core.py states the model).

Reads a plan (``planner.plan``), the granular graph and the cost models (``costmodels``); never the
solver. The names below are the public API; they load on first use, so ``import simulator`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import costmodels  # its lazy_exports loads the names below on first use

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

__getattr__, __dir__ = costmodels.lazy_exports(globals(), _EXPORTS)
