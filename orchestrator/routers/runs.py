from __future__ import annotations

import json
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, StreamingResponse

from orchestrator.dependencies import Read, Write, get_service
from orchestrator.models import RunOut, RunRequest
from orchestrator.service import Service

router = APIRouter(tags=["runs"])


@router.post(
    "/v1/graphs/{graph_id}/runs",
    response_model=RunOut,
    dependencies=[Write],
    responses={202: {"description": "async mode, or sync mode past timeout_s: the run goes on"}},
    summary="Run the deployed graph with inputs (sync: wait for the result; async: get a run id)",
)
def create_run(graph_id: str, body: RunRequest, service: Service = Depends(get_service)):
    run_id, handle = service.create_run(graph_id, body.inputs)
    if body.mode == "async":
        return JSONResponse(
            RunOut(**service.get_run(run_id)).model_dump(), status_code=202, headers={"Location": f"/v1/runs/{run_id}"}
        )
    run = service.wait_run(run_id, body.timeout_s, handle)
    status = 200 if run["status"] not in ("queued", "running") else 202
    return JSONResponse(RunOut(**run).model_dump(), status_code=status, headers={"Location": f"/v1/runs/{run_id}"})


@router.get("/v1/runs/{run_id}", response_model=RunOut, dependencies=[Read])
def get_run(run_id: str, service: Service = Depends(get_service)) -> RunOut:
    return RunOut(**service.get_run(run_id))


@router.post("/v1/runs/{run_id}/cancel", response_model=RunOut, dependencies=[Write])
def cancel_run(run_id: str, service: Service = Depends(get_service)) -> RunOut:
    return RunOut(**service.cancel_run(run_id))


@router.get(
    "/v1/runs/{run_id}/events",
    dependencies=[Read],
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    summary="The run's events as Server-Sent Events: started, token, retry, finished, failed, completed, end",
)
def run_events(
    run_id: str,
    after: int = Query(0, ge=0, description="Skip this many events (resume)."),
    service: Service = Depends(get_service),
) -> StreamingResponse:
    service.get_run(run_id)  # 404 before the stream starts

    def stream() -> Iterator[str]:
        seen = after
        while True:
            events, ended = service.run_events(run_id, seen, timeout_s=15.0)
            for e in events:
                seen += 1
                yield f"id: {seen}\nevent: {e['event']}\ndata: {json.dumps(e, default=str)}\n\n"
            if ended and not events:
                return
            if not events:
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
