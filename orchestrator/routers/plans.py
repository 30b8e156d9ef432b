from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from orchestrator.dependencies import Read, Write, get_service
from orchestrator.models import PlanOut, PlanRequest, PlanSummary
from orchestrator.service import Service

router = APIRouter(prefix="/v1/graphs/{graph_id}/plans", tags=["plans"])


@router.post(
    "",
    status_code=201,
    response_model=PlanOut,
    dependencies=[Write],
    summary="Plan the graph for an SLA and a rate (queueing-aware with arrivals/percentile); infeasible plans "
    "are stored too and say why",
)
def create_plan(graph_id: str, body: PlanRequest, service: Service = Depends(get_service)) -> PlanOut:
    queueing: dict[str, Any] | None = None  # service times only: no simulation (fast)
    if body.arrivals is not None or body.percentile is not None:
        queueing = body.model_dump(include={"arrivals", "percentile", "seed", "simulation_runs"})
    return PlanOut(**service.create_plan(graph_id, body.sla_ms, body.rate_per_s, body.cluster, body.ttft_ms, queueing))


@router.get("", response_model=list[PlanSummary], dependencies=[Read])
def list_plans(graph_id: str, service: Service = Depends(get_service)) -> list[PlanSummary]:
    return [PlanSummary(**p) for p in service.list_plans(graph_id)]


@router.get("/diff", dependencies=[Read], summary="What changes from one plan to another")
def diff_plans(
    graph_id: str, from_: str = Query(..., alias="from"), to: str = Query(...), service: Service = Depends(get_service)
) -> dict[str, Any]:
    return service.diff_plans(graph_id, from_, to)


@router.get("/{plan_id}", response_model=PlanOut, dependencies=[Read])
def get_plan(graph_id: str, plan_id: str, service: Service = Depends(get_service)) -> PlanOut:
    return PlanOut(**service.get_plan(graph_id, plan_id))
