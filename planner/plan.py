"""The plan document: what `hetagent plan --format json` prints and what the runtime and daemon consume.

Pydantic models double as the format's documentation; `plan_json_schema()` generates the JSON
Schema shipped in docs/plan.schema.json.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

PLAN_API_VERSION: Final = "hetagent.dev/v1alpha1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlannedSlice(_Strict):
    """A share of a sliced LLM node's requests of one size, served on one device type (planner/slicing.py)."""

    input_tokens: int = Field(ge=1, description="Prompt tokens of the bucket's requests.")
    output_tokens: int = Field(ge=1, description="Generated tokens of the bucket's requests.")
    bucket_share: float = Field(ge=0, le=1, description="The bucket's share of the node's requests (spec).")
    fraction: float = Field(gt=0, le=1, description="Fraction of the bucket's requests this slice serves.")
    device: str = Field(description="Hardware catalog id the slice's engines run on.")
    tensor_parallel: int = Field(ge=1, description="Devices per engine.")
    batch: int | None = Field(
        None, ge=1, description="Decode batch of the engine (None: a request-rate profile, whose batching is its own)."
    )
    requests_per_s: float = Field(ge=0, description="Requests/s the slice receives: rate × bucket_share × fraction.")
    rate_per_device: float = Field(gt=0, description="Requests/s of this size one device sustains (μ).")
    devices: float = Field(ge=0, description="Devices the slice occupies: requests_per_s ÷ (max_utilisation × μ).")
    latency_ms: float = Field(ge=0, description="This op's time for one request of the bucket (prefill or decode).")
    tpot_slo_ms: float | None = Field(None, description="TPOT SLO of the request-rate profile the rate comes from.")
    estimate_source: str = Field(
        description="Where this slice's numbers come from: profile:<file>, calibrated, roofline."
    )


class PlannedOp(_Strict):
    name: str = Field(description="Granular op id, '<node>.<kind>'.")
    kind: str = Field(
        description="Granular kind: tokenize, prefill, decode, detokenize, embed, vector_search, tool, transform."
    )
    source_node: str = Field(description="Spec node the op came from.")
    model: str | None = Field(None, description="Model catalog id for model ops.")
    device: str = Field(description="Hardware catalog id of the tier the op runs on.")
    device_class: Literal["cpu", "gpu", "accelerator"]
    replicas: int = Field(ge=1, description="Replica count in the op's pool on that device type.")
    batch: int = Field(ge=1, description="Requests one replica serves concurrently (vLLM max_num_seqs).")
    tensor_parallel: int = Field(ge=1, description="Devices per replica (accelerators).")
    cores_per_replica: int = Field(ge=0, description="CPU threads per replica (CPU tiers; 0 on accelerators).")
    devices_allocated: int = Field(
        ge=0, description="replicas × tensor_parallel on accelerators; 0 on time-shared CPUs."
    )
    predicted_latency_ms: float = Field(ge=0, description="Service time of one call at this batch.")
    throughput_per_replica: float = Field(gt=0, description="Calls/s one replica sustains.")
    utilisation: float = Field(ge=0, description="Offered load / pool capacity.")
    memory_bytes_per_replica: float = Field(ge=0)
    bound: str = Field(
        description="What limits the op on this device: compute, memory or fixed (external); sliced: see slices."
    )
    estimate_source: str = Field(
        "roofline",
        description="Where the op's latency and throughput come from: 'profile:<file>' (an imported measured "
        "profile), 'calibrated' (a device measured by hetagent calibrate) or 'roofline'; 'mixed' for a sliced op "
        "whose slices differ.",
    )
    slices: list[PlannedSlice] = Field(
        default_factory=list,
        description="Request-size slices of an LLM node with a traffic distribution (empty: not sliced). The "
        "node's prefill and decode list the same slices; its engines serve whole requests and count on the decode op.",
    )
    execution: dict[str, Any] = Field(
        default_factory=dict, description="Lowered execution config (engine args, threads…)."
    )


class PlannedEdge(_Strict):
    src: str
    dst: str
    bytes: float = Field(ge=0, description="Payload per run (the KV cache on prefill→decode).")
    transfer_ms: float = Field(ge=0, description="0 when both ends share a device type.")
    src_device: str
    dst_device: str
    link_gb_s: float | None = Field(
        None,
        ge=0,
        description="Effective bandwidth of the end that limits the transfer "
        "(None on one device type); the runtime predicts a request's transfer from it.",
    )
    link_fixed_ms: float = Field(0.0, ge=0, description="Fixed cost per transfer at that end, ms.")


class DeviceUsage(_Strict):
    device: str
    device_class: Literal["cpu", "gpu", "accelerator"]
    allocated: int = Field(ge=0, description="Devices (GPUs, or CPU sockets) the plan occupies.")
    inventory: int | None = Field(None, description="Devices of this type in the cluster (None: unbounded fleet).")
    busy_fraction: float = Field(ge=0, description="Mean busy time of allocated devices at the planned rate.")
    usd_per_hour_per_device: float = Field(ge=0)
    cores: int | None = Field(
        None,
        ge=1,
        description="Cores of one device (CPU tiers): a run's measured cost prices "
        "its ops' busy core-seconds at usd_per_hour_per_device / cores.",
    )
    usd_per_hour: float = Field(ge=0)


class Baseline(_Strict):
    name: str = Field(description="'homogeneous:<device>' or 'greedy-fastest'.")
    feasible: bool
    tco_usd_per_hour: float | None = None
    usd_per_1k_runs: float | None = None
    predicted_e2e_ms: float | None = None
    tco_ratio: float | None = Field(None, description="Baseline TCO ÷ this plan's TCO (> 1: the plan is cheaper).")
    devices: dict[str, int] = Field(default_factory=dict, description="Devices allocated per type.")
    reason: str | None = None


class LatencyHistogram(_Strict):
    """Latencies binned: counts[i] values in [edges_ms[i], edges_ms[i+1]) (the last bin closed)."""

    edges_ms: list[float] = Field(description="Bin edges, ms, ascending: one more than counts.")
    counts: list[int] = Field(description="Values per bin; they sum to the values binned.")


class SimulatedPool(_Strict):
    """One op's replica pool as the simulator loaded it (simulated, not planned)."""

    device: str = Field(description="Hardware catalog id the pool runs on.")
    replicas: int = Field(ge=1, description="Replicas simulated (the plan's).")
    utilisation: float = Field(ge=0, description="Mean busy fraction of the replicas.")
    mean_queue: float = Field(ge=0, description="Time-averaged calls waiting per replica.")
    max_queue: int = Field(ge=0, description="Longest queue of a replica.")
    mean_wait_ms: float = Field(ge=0, description="Mean time a call waited before service, ms.")


class SimulatedDistribution(_Strict):
    """The rest of what the simulation found: tails, TTFT, cost per run, per-pool load, the e2e histogram."""

    completed: int = Field(ge=0, description="Runs completed (the simulation drains every run that arrived).")
    mean_ms: float = Field(description="Mean e2e latency, ms.")
    p99_9_ms: float | None = Field(None, description="e2e p99.9, ms; None below 1,000 runs.")
    ttft_p50_ms: float | None = Field(None, description="Time to first token of the final LLM, median, ms.")
    ttft_p95_ms: float | None = None
    ttft_p99_ms: float | None = None
    ttft_p99_9_ms: float | None = None
    usd_per_1k_runs: float | None = Field(None, description="TCO $/h × simulated time ÷ runs completed, × 1,000.")
    pools: dict[str, SimulatedPool] = Field(default_factory=dict, description="By granular op name.")
    e2e_histogram: LatencyHistogram | None = Field(None, description="e2e latencies of the completed runs.")


class SimulatedIteration(_Strict):
    """One pass of queueing-aware planning: the ILP at a utilisation cap, then the simulator on its plan."""

    iteration: int = Field(ge=1, description="1 = the service-time plan at the requested cap.")
    max_utilisation: float = Field(gt=0, le=1, description="Utilisation cap the ILP planned with.")
    planned_sla_ms: float = Field(description="SLA budget the ILP planned with (≤ the plan's sla_ms).")
    feasible: bool = Field(description="Whether the ILP found a plan at this cap.")
    tco_usd_per_hour: float | None = Field(None, description="Planned TCO of this iteration's plan.")
    simulated_attainment: float | None = Field(None, description="Simulated fraction of runs within the SLA.")
    simulated_p99_ms: float | None = Field(None, description="Simulated e2e p99 latency, ms.")


class SimulationCheck(_Strict):
    """What the discrete-event simulator found for this plan (simulated, not planned; simulator/core.py)."""

    arrivals: str = Field(description="Arrival process simulated: poisson, bursty:CV or a trace CSV.")
    percentile: float = Field(gt=0, lt=100, description="Percentile of runs that must meet sla_ms, %.")
    seed: int = Field(description="Seed of the simulation (arrivals, request sizes).")
    runs: int = Field(ge=0, description="Runs simulated.")
    simulated_p50_ms: float = Field(description="Simulated e2e median, ms.")
    simulated_p95_ms: float = Field(description="Simulated e2e p95, ms.")
    simulated_p99_ms: float = Field(description="Simulated e2e p99, ms.")
    simulated_attainment: float = Field(ge=0, le=1, description="Simulated fraction of runs with e2e ≤ sla_ms.")
    sla_met: bool = Field(description="simulated_attainment ≥ percentile / 100.")
    iteration: int = Field(ge=1, description="The iteration of queueing-aware planning that produced this plan.")
    max_utilisation: float = Field(gt=0, le=1, description="Utilisation cap this plan was solved with.")
    planned_sla_ms: float = Field(
        description="SLA budget the ILP solved this plan with: sla_ms, or less where the simulated percentile "
        "exceeded it (the plan's predicted_e2e_ms is within this budget)."
    )
    iterations: list[SimulatedIteration] = Field(default_factory=list, description="Every iteration run, in order.")
    distribution: SimulatedDistribution | None = Field(None, description="Tails, TTFT, pools, histogram.")
    on_request: bool = Field(
        False,
        description="True: simulated after planning, when a client first asked the daemon "
        "(GET /v1/plans/{id}/simulation), not by queueing-aware planning; iterations is then empty.",
    )


class Plan(_Strict):
    apiVersion: Literal["hetagent.dev/v1alpha1"] = PLAN_API_VERSION
    kind: Literal["Plan"] = "Plan"
    graph: str
    cluster: str
    feasible: bool
    sla_ms: float
    ttft_ms: float | None = None
    rate_per_s: float
    max_utilisation: float
    predicted_e2e_ms: float | None = Field(
        None, description="Longest path through ops and edges (latencies + transfers)."
    )
    predicted_ttft_ms: float | None = None
    critical_path: list[str] = Field(default_factory=list)
    tco_usd_per_hour: float | None = None
    usd_per_1k_runs: float | None = None
    solver: str
    solve_seconds: float
    optimality_gap: float | None = Field(None, description="Relative MIP gap the solver stopped at.")
    binding_constraints: list[str] = Field(default_factory=list)
    ops: list[PlannedOp] = Field(default_factory=list)
    edges: list[PlannedEdge] = Field(default_factory=list)
    devices: list[DeviceUsage] = Field(default_factory=list)
    baselines: list[Baseline] = Field(default_factory=list)
    engines: list[dict[str, Any]] = Field(
        default_factory=list, description="Per-device execution configs from lowering."
    )
    tightest_sla_ms: float | None = Field(
        None, description="Infeasible plans: lowest e2e latency the inventory can reach."
    )
    max_rate_per_s: float | None = Field(None, description="Infeasible plans: highest rate the inventory sustains.")
    reason: str | None = Field(None, description="Why the plan is infeasible.")
    simulation: SimulationCheck | None = Field(
        None,
        description="Queueing-aware planning (hetagent plan --arrivals/--percentile), or the daemon on a "
        "client's first request (on_request): the simulated check of this plan; None when not simulated.",
    )

    def op(self, name: str) -> PlannedOp:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(name)


def plan_json_schema() -> dict[str, Any]:
    return Plan.model_json_schema()
