"""Request and response models of the REST API, shared with the CLI client."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanRequest(_Strict):
    sla_ms: float | None = Field(None, gt=0, description="End-to-end SLA; default the graph's spec.sla.e2e_ms.")
    rate_per_s: float = Field(gt=0, le=1e6, description="Arrival rate to plan for, runs per second.")
    ttft_ms: float | None = Field(None, gt=0, description="Time-to-first-token target; default the spec's.")
    cluster: str | None = Field(None, description="Cluster inventory name; default the daemon's.")


class DeploymentRequest(_Strict):
    plan_id: str | None = Field(None, description="Plan to apply; default the graph's newest feasible plan.")


class RunRequest(_Strict):
    inputs: dict[str, Any] = Field(default_factory=dict, description="Graph inputs by name.")
    mode: Literal["sync", "async"] = Field(
        "sync", description="sync: answer when the run ends (or timeout_s); async: answer at once with the run id."
    )
    timeout_s: float = Field(60.0, gt=0, le=3600, description="sync mode: longest wait for the result.")


class GraphOut(BaseModel):
    id: str
    name: str
    version: int
    created_at: str
    spec: dict[str, Any] | None = None


class PlanOut(BaseModel):
    id: str
    graph_id: str
    created_at: str
    request: dict[str, Any]
    plan: dict[str, Any] = Field(description="The plan document (docs/plan-format.md).")


class PlanSummary(BaseModel):
    id: str
    created_at: str
    request: dict[str, Any]
    feasible: bool
    tco_usd_per_hour: float | None = None
    predicted_e2e_ms: float | None = None


class DeploymentOut(BaseModel):
    id: str
    graph_id: str
    plan_id: str
    state: str = Field(description="starting | ready | failed | draining | stopped")
    detail: str
    pools: dict[str, Any]
    created_at: str
    updated_at: str
    replans: list[dict[str, Any]]


class RunOut(BaseModel):
    id: str
    graph_id: str
    deployment_id: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled | interrupted")
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = None
    error: str | None = None
    e2e_ms: float | None = None
    notes: list[str] = Field(default_factory=list)
    created_at: str
    finished_at: str | None = None
    records: list[dict[str, Any]] = Field(default_factory=list)
