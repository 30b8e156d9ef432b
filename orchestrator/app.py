"""The hetagent control plane: a FastAPI app over orchestrator.service.Service.

Layers run one way: routers -> service -> (control, store) -> db. Only this module and the routers
know HTTP; the service, the controller and the store can be driven without it (tests do)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from orchestrator import errors
from orchestrator.limits import BodyLimit, RateLimiter
from orchestrator.routers import deployments, graphs, keys, plans, runs, simulations, system
from orchestrator.service import Service
from orchestrator.settings import Settings


def create_app(settings: Settings | None = None, service: Service | None = None) -> FastAPI:
    """The app; its lifespan starts the service (recovery, control loop) and stops it on shutdown."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = service or Service(settings)
        app.state.service = svc
        svc.start()
        try:
            yield
        finally:
            svc.stop()

    app = FastAPI(
        title="hetagent",
        version="0.1.0",
        lifespan=lifespan,
        description="Serve AI agent graphs on heterogeneous hardware at the lowest TCO that meets the SLA. "
        "Every route but /healthz, /readyz and /metrics needs an API key "
        "(`Authorization: Bearer <key>`, from `hetagent keys create`).",
    )
    errors.install(app)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app.state.auth_failures = RateLimiter(settings.auth_failures_per_s, settings.auth_failures_burst)  # per address
    if settings.cors_origins:  # off unless origins are configured: browsers on other sites get no answer
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )
    # outermost: counts body bytes as they arrive and checks JSON nesting before anything parses it
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, max_depth=settings.max_doc_depth)

    for r in (system, graphs, plans, simulations, deployments, runs, keys):
        app.include_router(r.router)
    return app
