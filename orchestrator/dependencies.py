"""FastAPI dependencies: the service, and API-key auth with scopes (401 no/invalid key, 403 scope)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.auth import allows, lookup_scope
from orchestrator.service import Service

_bearer = HTTPBearer(auto_error=False, description="An API key from `hetagent keys create`.")


def get_service(request: Request) -> Service:
    """The app's one Service (created by the lifespan), so routers never build their own."""
    return request.app.state.service


def require(scope: str) -> Callable[..., str]:
    """Dependency: a valid key with at least ``scope``; returns the key's scope."""

    def check(
        request: Request,
        creds: HTTPAuthorizationCredentials | None = Depends(_bearer),
        service: Service = Depends(get_service),
    ) -> str:
        key = creds.credentials if creds is not None else request.headers.get("x-api-key")
        if not key:
            raise HTTPException(401, "an API key is required: 'Authorization: Bearer <key>'")
        have = lookup_scope(service.store.sessions, key)
        if have is None:
            raise HTTPException(401, "unknown or revoked API key")
        if not allows(have, scope):
            raise HTTPException(403, f"this key has scope '{have}'; this call needs '{scope}'")
        return have

    return check


Read = Depends(require("read"))
Write = Depends(require("write"))
Admin = Depends(require("admin"))
