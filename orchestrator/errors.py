"""RFC 9457 problem+json for every error the API returns: bad input is a 4xx, a database that
refuses a write or is unreachable a 503 with Retry-After, a full disk under the database a 507 with
Retry-After, never a 500."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, request: Request | None = None, **extra: Any) -> JSONResponse:
    """A problem+json response; ``retry_after_s`` also sets Retry-After, a 401 WWW-Authenticate."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if request is not None:
        body["instance"] = str(request.url.path)
    body.update(extra)
    headers = {"Retry-After": str(int(extra["retry_after_s"]))} if "retry_after_s" in extra else None
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="hetagent"'}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    """Map every exception a request can raise to its problem, so clients never parse a traceback."""
    from sqlalchemy.exc import OperationalError

    from compiler.spec import SpecError
    from orchestrator.service import ServiceError
    from orchestrator.store import STORAGE_RETRY_AFTER_S, StorageError, StorageFull, storage_error

    def _storage_problem(request: Request, exc: StorageError, what: str) -> JSONResponse:
        if isinstance(exc, StorageFull):  # the operator's problem, not a passing one: say which disk
            store = getattr(getattr(request.app.state, "service", None), "store", None)
            where = store.location() if store is not None else "the database"
            return problem(
                507,
                "insufficient storage",
                f"the disk holding {where} is full ({exc}); writes succeed again once space is freed there",
                request,
                retry_after_s=STORAGE_RETRY_AFTER_S,
            )
        return problem(503, "storage unavailable", f"{what}: {exc}", request, retry_after_s=STORAGE_RETRY_AFTER_S)

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError):
        return problem(exc.status, exc.title, exc.detail, request, **exc.extra)

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError):
        return _storage_problem(request, exc, "the database refused the write")

    @app.exception_handler(OperationalError)
    async def _database(request: Request, exc: OperationalError):  # locked, unreachable, read-only, disk full
        return _storage_problem(request, storage_error(exc), "the database is unavailable")

    @app.exception_handler(SpecError)
    async def _spec(request: Request, exc: SpecError):
        return problem(
            422, "invalid agent graph", str(exc), request, errors=[{"path": p, "reason": r} for p, r in exc.problems]
        )

    from compiler.ir import CompileError
    from costmodels.catalog import CatalogError
    from planner.ilp import PlanningError

    for cls, title in (
        (CatalogError, "unknown catalog entry"),
        (PlanningError, "cannot plan"),
        (CompileError, "cannot compile the graph"),
    ):

        async def _user(request: Request, exc: Exception, title: str = title):
            return problem(422, title, str(exc), request)

        app.add_exception_handler(cls, _user)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [
            {"path": ".".join(str(x) for x in e.get("loc", ())), "reason": e.get("msg", "")} for e in exc.errors()
        ]
        detail = "; ".join(f"{e['path']}: {e['reason']}" for e in errors) or "invalid request"
        return problem(422, "invalid request", detail, request, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        titles = {
            401: "unauthorized",
            403: "forbidden",
            404: "not found",
            405: "method not allowed",
            413: "request too large",
            415: "unsupported media type",
        }
        return problem(exc.status_code, titles.get(exc.status_code, "error"), str(exc.detail), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: say so without a traceback
        return problem(
            500, "internal error", f"{type(exc).__name__} while handling the request; see the daemon log", request
        )
