"""GET /v1/plans/{plan_id}/simulation: what the discrete-event simulator (simulator/core.py) found for a plan.

The numbers are simulated, not planned or measured: the plan document's ``simulation`` (planner/plan.py), which
queueing-aware planning wrote when the plan was made, or the daemon wrote on the first request for a plan made
without arrivals (Service.plan_simulation)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from orchestrator.dependencies import Read, get_service
from orchestrator.models import SimulationOut
from orchestrator.service import Service

router = APIRouter(prefix="/v1/plans/{plan_id}", tags=["plans"])


@router.get(
    "/simulation",
    response_model=SimulationOut,
    dependencies=[Read],
    summary="The plan's simulated latency distribution, utilisation and cost; simulated on first request "
    "for a plan made without arrivals",
)
def get_simulation(plan_id: str, service: Service = Depends(get_service)) -> SimulationOut:
    return simulation_out(service.plan_simulation(plan_id))


def simulation_out(found: dict[str, Any]) -> SimulationOut:
    """The response from a stored plan (``PlanOut``) whose document has a ``simulation``."""
    plan, s = found["plan"], found["plan"]["simulation"]
    d = s.get("distribution") or {}  # plans simulated before distributions were stored have none
    return SimulationOut(
        plan_id=found["id"],
        graph_id=found["graph_id"],
        source="computed_on_request" if s.get("on_request") else "stored",
        plan_feasible=plan["feasible"],
        arrivals=s["arrivals"],
        rate_per_s=plan["rate_per_s"],
        percentile=s["percentile"],
        seed=s["seed"],
        runs=s["runs"],
        completed=d.get("completed"),
        sla_ms=plan["sla_ms"],
        mean_ms=d.get("mean_ms"),
        p50_ms=s["simulated_p50_ms"],
        p95_ms=s["simulated_p95_ms"],
        p99_ms=s["simulated_p99_ms"],
        p99_9_ms=d.get("p99_9_ms"),
        ttft_p50_ms=d.get("ttft_p50_ms"),
        ttft_p95_ms=d.get("ttft_p95_ms"),
        ttft_p99_ms=d.get("ttft_p99_ms"),
        ttft_p99_9_ms=d.get("ttft_p99_9_ms"),
        attainment=s["simulated_attainment"],
        sla_met=s["sla_met"],
        usd_per_1k_runs=d.get("usd_per_1k_runs"),
        pools=d.get("pools") or {},
        histogram=d.get("e2e_histogram"),
    )
