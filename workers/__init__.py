"""The runtime: Ray actors, ops, the vLLM engine wrapper and the graph executor.

Imports ``planner.plan`` (the plan document), ``compiler.spec`` (the graph spec) and
``costmodels``, never the planner's solver nor ``orchestrator`` (see CONTRIBUTING.md). The names
below are the public API; they load on first use, so ``import workers`` does not import Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import costmodels  # its lazy_exports loads the names below on first use

if TYPE_CHECKING:
    from workers.executor import (
        GraphRunner as GraphRunner,
        InputError as InputError,
        OpRecord as OpRecord,
        RunError as RunError,
        RunResult as RunResult,
        check_inputs as check_inputs,
        ensure_ray as ensure_ray,
    )

# public name -> the module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "GraphRunner": "workers.executor",
    "InputError": "workers.executor",
    "OpRecord": "workers.executor",
    "RunError": "workers.executor",
    "RunResult": "workers.executor",
    "check_inputs": "workers.executor",
    "ensure_ray": "workers.executor",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = costmodels.lazy_exports(globals(), _EXPORTS)
