from __future__ import annotations

from fastapi import APIRouter, Body, Depends

from orchestrator.dependencies import Read, Write, get_service
from orchestrator.models import DeploymentOut, DeploymentRequest
from orchestrator.service import Service

router = APIRouter(prefix="/v1/graphs/{graph_id}/deployments", tags=["deployments"])


@router.post(
    "",
    status_code=202,
    response_model=DeploymentOut,
    dependencies=[Write],
    summary="Apply a plan: replica pools start on the Ray cluster (state starting → ready)",
)
def create_deployment(
    graph_id: str,
    body: DeploymentRequest = Body(default_factory=DeploymentRequest),
    service: Service = Depends(get_service),
) -> DeploymentOut:
    return DeploymentOut(**service.create_deployment(graph_id, body.plan_id))


@router.get("", response_model=list[DeploymentOut], dependencies=[Read])
def list_deployments(graph_id: str, service: Service = Depends(get_service)) -> list[DeploymentOut]:
    return [DeploymentOut(**d) for d in service.list_deployments(graph_id)]


@router.get("/{deployment_id}", response_model=DeploymentOut, dependencies=[Read])
def get_deployment(graph_id: str, deployment_id: str, service: Service = Depends(get_service)) -> DeploymentOut:
    return DeploymentOut(**service.get_deployment(graph_id, deployment_id))


@router.delete(
    "/{deployment_id}",
    response_model=DeploymentOut,
    dependencies=[Write],
    summary="Drain (finish runs in flight) and stop the replica pools",
)
def delete_deployment(graph_id: str, deployment_id: str, service: Service = Depends(get_service)) -> DeploymentOut:
    return DeploymentOut(**service.delete_deployment(graph_id, deployment_id))
