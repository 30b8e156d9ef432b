"""The planner: the placement ILP, plan assembly and baselines, the plan document and its checker.

Imports ``compiler`` and ``costmodels`` (see CONTRIBUTING.md). The names below are the public API;
they load on first use, so ``import planner`` (or the runtime's ``import planner.plan``) does not
load the solver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import costmodels  # its lazy_exports loads the names below on first use

if TYPE_CHECKING:
    from planner.evaluate import check_plan as check_plan
    from planner.ilp import (
        PlanningError as PlanningError,
        build_problem as build_problem,
        cluster_tiers as cluster_tiers,
        solve as solve,
    )
    from planner.pipeline import apply_model_overrides as apply_model_overrides, plan_spec as plan_spec
    from planner.place import PlanOptions as PlanOptions, place_graph as place_graph
    from planner.plan import Plan as Plan, PlannedOp as PlannedOp, plan_json_schema as plan_json_schema

# public name -> the module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "apply_model_overrides": "planner.pipeline",
    "plan_spec": "planner.pipeline",
    "PlanOptions": "planner.place",
    "place_graph": "planner.place",
    "Plan": "planner.plan",
    "PlannedOp": "planner.plan",
    "plan_json_schema": "planner.plan",
    "PlanningError": "planner.ilp",
    "build_problem": "planner.ilp",
    "cluster_tiers": "planner.ilp",
    "solve": "planner.ilp",
    "check_plan": "planner.evaluate",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = costmodels.lazy_exports(globals(), _EXPORTS)
