"""Request and response models of the REST API, shared with the CLI client."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_ARRIVALS_CV = 20.0  # gamma gaps of a larger CV underflow to 0 s: drawing N arrivals would take far longer


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanRequest(_Strict):
    sla_ms: float | None = Field(None, gt=0, description="End-to-end SLA; default the graph's spec.sla.e2e_ms.")
    rate_per_s: float = Field(gt=0, le=1e6, description="Arrival rate to plan for, runs per second.")
    ttft_ms: float | None = Field(None, gt=0, description="Time-to-first-token target; default the spec's.")
    cluster: str | None = Field(None, description="Cluster inventory name; default the daemon's.")
    arrivals: str | None = Field(
        None,
        description="Queueing-aware planning (as `hetagent plan --arrivals`): poisson or bursty:CV; the plan is "
        "simulated under them and capacity added until the simulated percentile meets the SLA. Trace CSVs are "
        "CLI-only. Default: no simulation, unless percentile is given (then poisson).",
    )
    percentile: float | None = Field(
        None, ge=50, le=99.9, description="Queueing-aware: % of runs that must meet the SLA (default: the spec's)."
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Queueing-aware: seed of the simulation (7).")
    simulation_runs: int | None = Field(
        None, ge=100, le=10_000, description="Queueing-aware: runs simulated per iteration (2,000)."
    )

    @field_validator("arrivals")
    @classmethod
    def _arrivals(cls, v: str | None) -> str | None:
        """The CLI's syntax, but never a path: the daemon reads no file a client names."""
        if v is None:
            return v
        if v != "poisson" and not v.startswith("bursty:"):
            raise ValueError(f"must be poisson or bursty:CV (trace CSVs are accepted by the CLI only), got {v!r}")
        from simulator.arrivals import ArrivalError, arrival_times

        cv = 1.0
        with contextlib.suppress(ValueError):  # not a number: arrival_times says so below
            cv = float(v.partition(":")[2]) if v != "poisson" else 1.0
        if cv > MAX_ARRIVALS_CV:
            raise ValueError(f"bursty:CV takes CV ≤ {MAX_ARRIVALS_CV:g} here, got {v!r}")
        try:
            arrival_times(v, 1.0, 1.0, 0)  # parses the CV: one simulated second of arrivals
        except ArrivalError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _simulation_knobs(self) -> PlanRequest:
        if self.arrivals is None and self.percentile is None and (self.seed, self.simulation_runs) != (None, None):
            raise ValueError("seed and simulation_runs need arrivals or percentile (queueing-aware planning)")
        return self


class HistogramOut(BaseModel):
    edges_ms: list[float] = Field(description="Bin edges, ms, ascending: one more than counts.")
    counts: list[int] = Field(description="Runs per bin [edges_ms[i], edges_ms[i+1]) (last closed); sum: completed.")


class SimulatedPoolOut(BaseModel):
    device: str
    replicas: int
    utilisation: float = Field(description="Mean busy fraction of the pool's replicas.")
    mean_queue: float = Field(description="Time-averaged calls waiting per replica.")
    max_queue: int
    mean_wait_ms: float


class SimulationOut(BaseModel):
    """GET /v1/plans/{id}/simulation: the plan's simulated distribution (simulated, not planned or measured)."""

    plan_id: str
    graph_id: str
    source: Literal["stored", "computed_on_request"] = Field(
        description="stored: simulated when the plan was made (queueing-aware planning); computed_on_request: the "
        "plan was made without arrivals, so the first GET simulated it (poisson, the plan's rate, seed 7) and "
        "stored the result, which later GETs return unchanged."
    )
    plan_feasible: bool
    arrivals: str
    rate_per_s: float
    percentile: float = Field(description="% of runs that must meet sla_ms.")
    seed: int
    runs: int = Field(description="Runs simulated.")
    completed: int | None = Field(None, description="Runs completed (all: the simulation drains).")
    sla_ms: float
    mean_ms: float | None = None
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p99_9_ms: float | None = Field(None, description="None below 1,000 runs.")
    ttft_p50_ms: float | None = Field(None, description="Time to first token of the final LLM (None: no LLM).")
    ttft_p95_ms: float | None = None
    ttft_p99_ms: float | None = None
    ttft_p99_9_ms: float | None = None
    attainment: float = Field(description="Fraction of runs with e2e ≤ sla_ms.")
    sla_met: bool = Field(description="attainment ≥ percentile / 100.")
    usd_per_1k_runs: float | None = Field(None, description="The plan's $/h over the runs completed per hour.")
    pools: dict[str, SimulatedPoolOut] = Field(default_factory=dict, description="Per granular op's replica pool.")
    histogram: HistogramOut | None = Field(None, description="e2e latency of the completed runs.")


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
