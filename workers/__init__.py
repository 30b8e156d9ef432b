"""The runtime: Ray actors, ops, the vLLM engine wrapper and the graph executor.

Imports ``planner.plan`` (the plan document), ``compiler.spec`` (the graph spec) and
``costmodels``, never the planner's solver nor ``orchestrator`` (see CONTRIBUTING.md). The names
below are the public API; they load on first use, so ``import workers`` does not import Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562), so ``import workers`` stays light."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
