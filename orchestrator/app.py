"""The hetagent control plane: a FastAPI app over orchestrator.service.Service.

Layers run one way: routers -> service -> (control, store) -> db. Only this module and the routers
know HTTP; the service, the controller and the store can be driven without it (tests do)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from orchestrator import errors
from orchestrator.routers import deployments, graphs, plans, runs, simulations, system
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

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return errors.problem(413, "request too large", f"the limit is {settings.max_body_bytes} bytes", request)
        return await call_next(request)

    for r in (system, graphs, plans, simulations, deployments, runs):
        app.include_router(r.router)
    return app
