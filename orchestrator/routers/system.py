from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.dependencies import Read, get_service
from orchestrator.service import RAY_RETRY_AFTER_S, Service, ServiceError
from orchestrator.store import STORAGE_RETRY_AFTER_S

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Database migrated and answering, catalog loaded, recovery done, Ray answering; which replica this is, "
    "whether it leads",
)
def readyz(service: Service = Depends(get_service)) -> dict[str, Any]:
    if not service.ready.is_set():
        raise ServiceError(503, "not ready", "recovering state from the database", retry_after_s=1)
    if not service.ray_up.is_set():  # unauthenticated: the cause with its addresses is in the log and in 503s to keys
        raise ServiceError(503, "not ready", "the Ray cluster is lost; reconnecting", retry_after_s=RAY_RETRY_AFTER_S)
    try:
        service.store.ping()
    except SQLAlchemyError:  # the cause names the server: it goes to the log and to 503s of keyed requests
        raise ServiceError(
            503, "not ready", "the database does not answer", retry_after_s=STORAGE_RETRY_AFTER_S
        ) from None
    return {"status": "ready", **service.leadership.status()}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(service: Service = Depends(get_service)) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/hardware",
    dependencies=[Read],
    summary="The hardware catalog, with each device's online calibrations (refits applied since start)",
)
def hardware(service: Service = Depends(get_service)) -> list[dict[str, Any]]:
    return service.hardware()


@router.get("/v1/clusters", dependencies=[Read], summary="Cluster inventories shipped in configs/clusters")
def clusters(service: Service = Depends(get_service)) -> list[dict[str, Any]]:
    from costmodels.catalog import list_clusters, load_cluster

    out = []
    for name in list_clusters():
        inv = load_cluster(name, service.catalog)
        out.append({**inv.model_dump(mode="json"), "file": name, "default": inv.name == service.cluster.name})
    return out
