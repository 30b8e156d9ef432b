from __future__ import annotations

import json

import yaml
from fastapi import APIRouter, Depends, Request, Response

from compiler.limits import DocumentError, check_document, load_yaml
from orchestrator.dependencies import Read, Write, get_service
from orchestrator.models import GraphOut
from orchestrator.service import Service, ServiceError

router = APIRouter(prefix="/v1/graphs", tags=["graphs"])

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=GraphOut,
    dependencies=[Write],
    openapi_extra=_BODY,
    summary="Store a new agent graph (YAML or JSON): validated, compiled, versioned by name",
)
async def create_graph(request: Request, service: Service = Depends(get_service)) -> GraphOut:
    body = await request.body()
    if len(body) > service.settings.max_body_bytes:
        raise ServiceError(
            413, "request too large", f"{len(body)} bytes; the limit is {service.settings.max_body_bytes}"
        )
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    limits = service.settings
    try:  # JSON nesting was checked by the BodyLimit middleware; YAML is checked as it is parsed
        if ctype in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
            doc = load_yaml(body, limits.max_doc_depth, limits.max_doc_nodes)
        elif ctype in ("application/json", ""):
            doc = json.loads(body)
        else:
            raise ServiceError(415, "unsupported media type", f"send application/json or application/yaml, not {ctype}")
        check_document(doc, limits.max_doc_depth)
    except DocumentError as exc:
        raise ServiceError(400, "body over a parsing limit", f"{ctype}: {exc}", limit=exc.limit) from None
    except (ValueError, yaml.YAMLError) as exc:
        raise ServiceError(400, "unparseable body", f"{ctype}: {exc}") from None
    from starlette.concurrency import run_in_threadpool

    return GraphOut(**await run_in_threadpool(service.create_graph, doc))


@router.get("", response_model=list[GraphOut], dependencies=[Read])
def list_graphs(service: Service = Depends(get_service)) -> list[GraphOut]:
    return [GraphOut(**g) for g in service.list_graphs()]


@router.get("/{graph_id}", response_model=GraphOut, dependencies=[Read])
def get_graph(graph_id: str, service: Service = Depends(get_service)) -> GraphOut:
    return GraphOut(**service.get_graph(graph_id))


@router.delete("/{graph_id}", status_code=204, dependencies=[Write])
def delete_graph(graph_id: str, service: Service = Depends(get_service)) -> Response:
    service.delete_graph(graph_id)
    return Response(status_code=204)
