"""The MILP solvers the placement ILP runs on, through PuLP: the CBC it bundles, and HiGHS when highspy is there."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pulp  # imported where used at run time, so that `import planner` stays light

LARGE_MODEL = 1000  # binaries from which CBC runs without preprocessing (docs/benchmarks.md, planner scale)


def available_solvers() -> list[str]:
    import pulp

    names = pulp.listSolvers(onlyAvailable=True)
    return [s for s, key in (("cbc", "PULP_CBC_CMD"), ("highs", "HiGHS")) if key in names]


def resolve_solver(name: str) -> str:
    """'auto' → the CBC bundled with PuLP: the faster of the two on 200- and 1,000-op graphs (docs/benchmarks.md)."""
    return "cbc" if name == "auto" else name


def make_solver(name: str, time_limit_s: float, gap: float, *, binaries: int = 0) -> pulp.LpSolver:
    """A PuLP solver for a model with ``binaries`` binary variables; a bad name raises PlanningError."""
    import pulp

    from planner.ilp import PlanningError

    name = resolve_solver(name)
    if name == "cbc":
        # From LARGE_MODEL binaries on, CBC's preprocessing and feasibility pump cost more than they save: the
        # LP bound (socket rows included) is within the gap there, and RENS rounds the LP to a plan that meets it
        large = ["preprocess off", "feas off", "rens on"] if binaries >= LARGE_MODEL else []
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap, options=large)
    if name == "highs":
        if "HiGHS" not in pulp.listSolvers(onlyAvailable=True):
            raise PlanningError("solver 'highs' needs the highspy package: pip install 'hetagent[highs]'")
        return pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap)
    raise PlanningError(f"unknown solver {name!r}; choose auto, cbc or highs")
