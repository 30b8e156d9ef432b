"""FastAPI dependencies: the service, and API-key auth with scopes (401 no/invalid key, 403 scope,
429 over the key's rate limit or, per client address, over the wrong keys it may present)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.auth import allows, hash_key, lookup_scope
from orchestrator.limits import retry_after_s
from orchestrator.service import Service, ServiceError

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
        address = request.client.host if request.client is not None else ""
        failures = request.app.state.auth_failures
        blocked_s = failures.take(address, take=False)
        if blocked_s > 0:  # before the lookup: while blocked, a right key is not told apart from a wrong one
            raise ServiceError(
                429,
                "too many wrong API keys",
                f"this address presented more wrong API keys than {service.settings.auth_failures_per_s:g}/s "
                f"(burst {service.settings.auth_failures_burst}; settings auth_failures_per_s, auth_failures_burst)",
                retry_after_s=retry_after_s(blocked_s),
            )
        have = lookup_scope(service.store.sessions, key)
        if have is None:
            failures.take(address)
            raise HTTPException(401, "unknown or revoked API key")
        if not allows(have, scope):
            raise HTTPException(403, f"this key has scope '{have}'; this call needs '{scope}'")
        wait_s = request.app.state.rate_limiter.take(hash_key(key))
        if wait_s > 0:
            raise ServiceError(
                429,
                "too many requests",
                f"this key is over its rate limit of {service.settings.rate_limit_per_s:g} requests/s "
                f"(burst {service.settings.rate_limit_burst}; settings rate_limit_per_s, rate_limit_burst)",
                retry_after_s=retry_after_s(wait_s),
            )
        return have

    check.scope = scope  # type: ignore[attr-defined]  # read by tests/test_security.py's route table
    return check


Read = Depends(require("read"))
Write = Depends(require("write"))
Admin = Depends(require("admin"))
