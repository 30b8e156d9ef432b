"""Discrete-event simulation of a plan: runs arrive, flow through the granular graph, queue at replicas.

Model (the planner's notation, planner/ilp.py; what the plan fixes is read from it, nothing is re-planned)::

    Runs         arrive at times a_1 < a_2 < … (simulator/arrivals.py: Poisson, gamma renewal of CV, trace)
    Sizes        per run and LLM node n: (P, N) prompt and output tokens — a bucket of the node's spec traffic
                 drawn by share, else log-normal with mean the spec's expected value and σ = size_sigma
                 (round, ≥ 1, ≤ 8× the mean); fixed at the expected values with size_sigma = 0
    Op o         ready when every predecessor u has finished and its edge's transfer t_uv has elapsed;
                 t_uv = the plan's transfer_ms, except prefill→decode (the KV cache), whose bytes scale with
                 the run's P: t = link_fixed_ms + b_uv·P/P̄ / link_gb_s
    Pool of o    n_o replicas (the plan's); a ready op joins the replica with the least load (ties: lowest index)
    Host op      (everything but prefill/decode) a FIFO slot server per replica: s = round(μ_c·l_c) calls in
                 service at once (a tool's 256 in-flight HTTP calls, a batch-b search's b queries, 1 transform),
                 each for l_c (the plan's latency), or Exp(l_c) with host_service="exponential"
    Prefill      vLLM's scheduler per replica: a step takes the partly prefilled sequences first, then waiting
                 ones, up to max_num_seqs = the plan's batch and max_num_batched_tokens tokens; a prompt longer
                 than what is left of the budget is chunked (chunked prefill). Step time = σ_o ·
                 roofline_step_s(prefill_work(model, mean chunk, sequences)) on the op's device, tp, cores
    Decode       continuous batching per replica: waiting sequences join at each step boundary up to
                 max_num_seqs = the plan's batch; a step emits one token per running sequence; step time =
                 σ_o · roofline_step_s(decode_step_work(model, mean context, B)) at the batch B actually formed
                 (context of a sequence = P + tokens generated so far); a sequence leaves after N steps
    σ_o          the plan's latency ÷ the roofline's at the plan's batch and expected sizes: carries what the
                 plan's estimate has beyond the bare roofline (tensor-parallel all-reduce, a calibrated or
                 profiled device)
    CPU cores    every CPU device type has a pool of cores × sockets allocated; a host call holds its k_c/l_c
                 cores per slot (a tool: TOOL_CPU_S_PER_CALL / l_c), a CPU engine step its cores_per_replica
                 (or, if fewer, the measured engine_cores_busy: part of a step is single-threaded);
                 a service starting while the pool is oversubscribed is stretched by demand ÷ capacity
                 (processor sharing, evaluated at the service's start)
    Runtime CPU  the serving runtime's own work (SimOptions.runtime_*, measured: bench/simulator_validation.py):
                 c_run core-seconds per run (the daemon, Ray) on the pool of the device the daemon shares,
                 charged when the run starts (its arrival, unless it waits for a run thread), and c_tok per
                 generated token (an engine's front-end: output processing, streaming) on its CPU engine's
                 pool, charged as steps end; a charge is background demand spread
                 over the next τ = 1 s and served first (servers.CorePool: the daemon at nice 0, Ray workers at 15),
                 so what starts on those cores meanwhile gets capacity − D.
                 GPU engines' front-ends run on host CPUs that are not a pool here: not charged
    Host steal   with SimOptions.cpu_steal, the share s(t) of the cores a VM's host took (hypervisor steal,
                 measured) is gone too: a service starting at t gets capacity · (1 − s(t)) − D
                 (steal_model "gang", the default: a service of c cores is stretched × (1 − s)^−⌈c⌉ beyond the
                 sharing instead; "proportional": as written)
    Run threads  with max_runs_in_flight = m (the daemon's Settings.max_runs_in_flight), at most m runs are in
                 the graph at once; later arrivals wait FIFO for one to finish, and their e2e and TTFT count it
    TTFT         arrival → the end of the first decode step of the final LLM (a streaming LLM if any, else the
                 last decode in topological order, as the planner picks it)

Prefill and decode run in their own pools as the plan sizes them (its prefill and decode replicas), also when
the lowering puts both in one engine: steps mixing prompt chunks and decode tokens are not modelled, nor KV
preemption (the plan's batch is sized so its KV fits). Plans that slice a node's requests by size
(planner/slicing.py) are refused: their engines serve whole requests of chosen sizes on several device types.
Arrivals stop at the duration; the runs in flight are drained, and utilisation and queue length are averaged
over [0, last completion]. $ per 1,000 runs: the plan's TCO $/h × that time ÷ the runs completed.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from costmodels import work as W
from costmodels.catalog import Catalog, ClusterInventory, DeviceClass, DeviceType
from costmodels.granular import GranularGraph, GranularOp
from costmodels.roofline import TOOL_CPU_S_PER_CALL, link_transfer_ms, roofline_step_s
from planner.plan import LatencyHistogram, Plan, PlannedEdge, PlannedOp
from simulator.servers import CorePool, DecodeEngine, Event, PrefillEngine, Replica, SlotServer, StepTimes, Task

DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192  # vLLM V1's default token budget per step for online serving
SIZE_CAP = 8.0  # a drawn size is at most this × the expected one
HISTOGRAM_BINS = 30  # of SimResult.e2e_histogram
MIN_RUNS_P99_9 = 1000  # fewer runs leave p99.9 to the one or two slowest: not reported


class SimulationError(ValueError):
    """The plan and graph cannot be simulated together (they do not match, or the plan is infeasible)."""


class SimOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(7, description="Seeds every random stream (arrivals are drawn by the caller).")
    size_sigma: float = Field(0.5, ge=0, description="σ of the log-normal request sizes (0: the expected sizes).")
    host_service: Literal["deterministic", "exponential"] = Field(
        "deterministic", description="Service time of host ops: the plan's latency, or exponential with that mean."
    )
    sla_percentile: float = Field(50.0, gt=0, lt=100, description="Runs that must meet the SLA (spec), %.")
    max_num_batched_tokens: int = Field(
        DEFAULT_MAX_NUM_BATCHED_TOKENS, ge=1, description="Token budget of one prefill step (engine args win)."
    )
    runtime_device: str | None = Field(
        None,
        description="The CPU device type whose cores the daemon shares (`local-cpu` on `local`; a cluster's "
        "runtime_cpu: runtime_options); None, or a device the plan does not use: runtime_cpu_s_per_run is not charged.",
    )
    runtime_cpu_s_per_run: float = Field(
        0.0, ge=0, description="Core-seconds the daemon and Ray spend per run, on runtime_device's cores (measured)."
    )
    runtime_cpu_s_per_output_token: float = Field(
        0.0,
        ge=0,
        description="Core-seconds a CPU engine's front-end spends per generated token (output processing, "
        "streaming), on the engine's cores (measured).",
    )
    engine_cores_busy: float | None = Field(
        None,
        gt=0,
        description="Cores a CPU engine step holds (measured: a cluster's runtime_cpu.engine_cores_busy); None or "
        "more than the plan's cores_per_replica: cores_per_replica.",
    )
    max_runs_in_flight: int | None = Field(
        None,
        ge=1,
        description="Runs the daemon executes at once (Settings.max_runs_in_flight, its run threads); later arrivals "
        "wait, FIFO, and their e2e counts the wait. None: no limit.",
    )
    cpu_steal: list[tuple[float, float]] | None = Field(
        None,
        description="The share of every CPU device's cores the host took, measured (a VM's hypervisor steal, e.g. "
        "bench/simulator_validation.py's timeline): (t_s, share) samples, t_s from the arrivals' time origin, "
        "ascending, each share holding since the previous sample; 0 after the last. None: no steal.",
    )

    steal_model: Literal["proportional", "gang"] = Field(
        "gang",
        description="How cpu_steal slows a service: gang (a service holding c cores × (1 − s)^−⌈c⌉: a "
        "multi-threaded engine step waits for its slowest vCPU; measured closer, docs/simulator.md) or proportional "
        "(the pool's cores × (1 − s)).",
    )

    @field_validator("cpu_steal")
    @classmethod
    def _steal_in_order(cls, v: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if v is not None:
            if any(not 0.0 <= share < 1.0 for _, share in v):
                raise ValueError("cpu_steal shares must be in [0, 1)")
            if any(b[0] <= a[0] for a, b in itertools.pairwise(v)):
                raise ValueError("cpu_steal times must ascend")
        return v


class OpStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str
    replicas: int
    calls: int = Field(description="Completed calls.")
    utilisation: float = Field(description="Mean busy fraction of the replicas (slots or stepping time).")
    mean_queue: float = Field(description="Time-averaged waiting calls per replica.")
    max_queue: int
    mean_wait_ms: float = Field(description="Mean time a call waited before service.")
    mean_batch: float | None = Field(None, description="LLM ops: mean sequences per step.")
    steps: int | None = Field(None, description="LLM ops: engine steps run (prefill chunks, decode tokens).")
    replica_utilisation: list[float]
    replica_mean_queue: list[float]


class SimResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    graph: str
    seed: int
    runs: int
    completed: int
    horizon_s: float = Field(description="Time of the last completion (simulated seconds).")
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    ttft_p99_ms: float | None = None
    sla_ms: float
    sla_percentile: float
    attainment: float = Field(description="Fraction of runs with e2e ≤ the SLA.")
    sla_met: bool = Field(description="attainment ≥ sla_percentile / 100.")
    usd_per_1k_runs: float | None = Field(None, description="The plan's $/h over the runs completed per hour.")
    ops: dict[str, OpStats]
    p99_9_ms: float | None = Field(None, description=f"e2e p99.9; None below {MIN_RUNS_P99_9} completed runs.")
    ttft_p99_9_ms: float | None = None
    e2e_histogram: LatencyHistogram | None = Field(None, description="e2e latencies of the completed runs, binned.")


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> LatencyHistogram:
    """``bins`` equal-width bins over [min, max] (the last one closed, as numpy's): counts sum to len(values)."""
    lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
    if hi <= lo:  # one value (or none): a unit-wide bin around it
        lo, hi, bins = lo - 0.5, hi + 0.5, 1
    width = (hi - lo) / bins
    counts = [0] * bins
    for x in values:
        counts[min(int((x - lo) / width), bins - 1)] += 1
    return LatencyHistogram(edges_ms=[lo + i * width for i in range(bins)] + [hi], counts=counts)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between order statistics."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class _Run:
    __slots__ = ("arrival", "pending", "sizes", "left", "finish", "ttft")

    def __init__(self, arrival: float, pending: list[int], sizes: dict[str, tuple[int, int]], n_ops: int) -> None:
        self.arrival = arrival
        self.pending = pending
        self.sizes = sizes
        self.left = n_ops
        self.finish = math.nan
        self.ttft = math.nan


@dataclass
class _Op:
    op: GranularOp
    planned: PlannedOp
    replicas: list[Replica]
    succ: list[tuple[int, PlannedEdge]]
    n_pred: int


def runtime_options(cluster: ClusterInventory) -> dict[str, Any]:
    """SimOptions' runtime_* fields from a cluster's measured ``runtime_cpu`` (none: nothing charged)."""
    rt = cluster.runtime_cpu
    if rt is None:
        return {}
    return {
        "runtime_device": rt.device,
        "runtime_cpu_s_per_run": rt.cpu_s_per_run,
        "runtime_cpu_s_per_output_token": rt.cpu_s_per_output_token,
        "engine_cores_busy": rt.engine_cores_busy,
    }


def simulate(
    plan: Plan, graph: GranularGraph, catalog: Catalog, arrivals: Sequence[float], options: SimOptions | None = None
) -> SimResult:
    """Replay ``plan`` for runs arriving at ``arrivals`` (s); deterministic for a given options.seed."""
    return _Simulation(plan, graph, catalog, options or SimOptions()).run(arrivals)


class _Simulation:
    def __init__(self, plan: Plan, graph: GranularGraph, catalog: Catalog, opts: SimOptions) -> None:
        if not plan.feasible or not plan.ops:
            raise SimulationError(f"plan of {plan.graph!r} is infeasible or empty: nothing to simulate")
        planned = {o.name: o for o in plan.ops}
        names = {o.name for o in graph.ops}
        if names != set(planned):
            raise SimulationError(
                f"plan {plan.graph!r} does not match graph {graph.name!r}: ops only in the plan "
                f"{sorted(set(planned) - names)}, only in the graph {sorted(names - set(planned))}"
            )
        sliced = sorted(o.name for o in plan.ops if o.slices)
        if sliced:  # their engines serve whole requests of some sizes on several types: not modelled yet
            raise SimulationError(
                f"plan {plan.graph!r} slices requests by size ({', '.join(sliced)}): not simulated yet"
            )
        self.plan, self.graph, self.catalog, self.opts = plan, graph, catalog, opts
        self.heap: list[Event] = []
        self.tick = itertools.count().__next__
        self.size_rng = random.Random(f"{opts.seed}:sizes")
        self.service_rng = random.Random(f"{opts.seed}:service")
        self.llm_nodes = sorted({o.source_node for o in graph.ops if o.kind in ("prefill", "decode")})
        self.node_op = {o.source_node: o for o in graph.ops if o.kind in ("prefill", "decode")}
        self.cores = self._core_pools()
        self.runtime_pool: CorePool | None = None  # None: the daemon's cores are none of the plan's
        if opts.runtime_device is not None and opts.runtime_cpu_s_per_run > 0:
            if catalog.hardware.get(opts.runtime_device, None) is None or (
                catalog.hardware[opts.runtime_device].device_class is not DeviceClass.cpu
            ):
                raise SimulationError(f"runtime_device {opts.runtime_device!r} is not a CPU device of the catalog")
            self.runtime_pool = self.cores.get(opts.runtime_device)
        order = graph.topological()
        self.index = {o.name: i for i, o in enumerate(order)}
        edges = {(e.src, e.dst): e for e in plan.edges}
        self.ops: list[_Op] = []
        for o in order:
            succ = [
                (self.index[e.dst], edges.get((e.src, e.dst)) or _no_edge(e.src, e.dst))
                for e in graph.edges
                if e.src == o.name
            ]
            n_pred = sum(1 for e in graph.edges if e.dst == o.name)
            self.ops.append(_Op(o, planned[o.name], [], succ, n_pred))
        for rec in self.ops:
            step = self._step_fn(rec.op, rec.planned) if rec.op.kind in ("prefill", "decode") else None
            rec.replicas = [self._replica(rec, step) for _ in range(rec.planned.replicas)]
        self.ttft_op = self._ttft_op()
        self.sources = [i for i, rec in enumerate(self.ops) if rec.n_pred == 0]
        self.in_flight = 0  # runs started and not finished (max_runs_in_flight)
        self.admission: deque[_Run] = deque()  # runs arrived, waiting for a run thread

    # ------------------------------------------------------------------ building

    def _core_pools(self) -> dict[str, CorePool]:
        pools = {}
        steal = tuple((float(t), float(x)) for t, x in self.opts.cpu_steal or ())
        for d in self.plan.devices:
            if d.device_class == "cpu":
                cores = float((d.cores or 1) * max(d.allocated, 1))
                pools[d.device] = CorePool(cores, steal=steal, steal_model=self.opts.steal_model)
        return pools

    def _device(self, name: str) -> DeviceType:
        return self.catalog.device(name)

    def _replica(self, rec: _Op, step: StepTimes | None) -> Replica:
        """One replica of ``rec``'s pool; an engine's ``step`` times are shared by the pool (one memo)."""
        op, p = rec.op, rec.planned
        pool = self.cores.get(p.device) if p.device_class == "cpu" else None
        common: dict[str, Any] = dict(heap=self.heap, tick=self.tick, done=self.op_done, cores=pool)
        if step is not None:
            cores = float(p.cores_per_replica) if pool is not None else 0.0
            if cores and self.opts.engine_cores_busy is not None:
                cores = min(cores, self.opts.engine_cores_busy)
            if op.kind == "prefill":
                budget = int(p.execution.get("engine_args", {}).get("max_num_batched_tokens") or 0)
                return PrefillEngine(
                    **common,
                    max_num_seqs=p.batch,
                    max_num_batched_tokens=budget or self.opts.max_num_batched_tokens,
                    step_s=step,
                    prompt_tokens=lambda task: task[0].sizes[op.source_node][0],
                    cores_per_step=cores,
                )
            return DecodeEngine(
                **common,
                max_num_seqs=p.batch,
                step_s=step,
                sizes=lambda task: task[0].sizes[op.source_node],
                first_token=self.first_token,
                cores_per_step=cores,
                cpu_s_per_token=self.opts.runtime_cpu_s_per_output_token if pool is not None else 0.0,
            )
        latency_s = p.predicted_latency_ms / 1000.0
        slots = max(1, round(p.throughput_per_replica * latency_s))
        if op.kind == "tool":
            per_call = TOOL_CPU_S_PER_CALL / latency_s if latency_s > 0 else 0.0
        else:
            per_call = p.cores_per_replica / slots
        return SlotServer(
            **common,
            slots=slots,
            service_s=latency_s,
            exponential=self.opts.host_service == "exponential",
            rng=self.service_rng,
            cores_per_call=per_call if pool is not None else 0.0,
        )

    def _step_fn(self, op: GranularOp, p: PlannedOp) -> StepTimes:
        """Seconds of one engine step at (sequences, tokens): the roofline at the batch formed, × σ_o."""
        model = self.catalog.model(op.model or "")
        device = self._device(p.device)
        cores = (device.cores or None) if device.device_class is DeviceClass.cpu else None
        tp = p.tensor_parallel

        if op.kind == "prefill":

            def raw(n: int, tokens: float) -> float:
                return roofline_step_s(
                    W.prefill_work(model, max(1, round(tokens)), n), device, model.dtype, tp=tp, cores=cores
                )[0]

            expected = raw(p.batch, float(op.input_tokens))
            grid = 16.0
        else:

            def raw(n: int, tokens: float) -> float:
                return roofline_step_s(W.decode_step_work(model, tokens, n), device, model.dtype, tp=tp, cores=cores)[0]

            ctx = W.decode_mean_context(op.input_tokens, op.output_tokens)
            expected = raw(p.batch, ctx) * op.output_tokens
            grid = 32.0
        scale = 1.0
        if expected > 0 and p.predicted_latency_ms > 0:
            scale = p.predicted_latency_ms / 1000.0 / expected
        return StepTimes(lambda n, tokens: raw(n, tokens) * scale, grid)

    def _ttft_op(self) -> int | None:
        decodes = [i for i, rec in enumerate(self.ops) if rec.op.kind == "decode"]
        if not decodes:
            return None
        streaming = [i for i in decodes if self.ops[i].op.params.get("stream")]
        return (streaming or decodes)[-1]

    # ------------------------------------------------------------------ events

    def at(self, t: float, fn: Callable[[Any, float], None], arg: Any) -> None:
        heapq.heappush(self.heap, (t, self.tick(), fn, arg))

    def _draw(self, op: GranularOp) -> tuple[int, int]:
        raw = op.params.get("traffic")
        if raw:
            r, acc = self.size_rng.random(), 0.0
            for i, o, share in raw:
                acc += float(share)
                if r < acc:
                    return int(i), int(o)
            return int(raw[-1][0]), int(raw[-1][1])
        return self._lognormal(op.input_tokens), self._lognormal(op.output_tokens)

    def _lognormal(self, mean: int) -> int:
        s = self.opts.size_sigma
        if s == 0 or mean <= 0:
            return max(1, mean)
        x = self.size_rng.lognormvariate(math.log(mean) - s * s / 2.0, s)
        return int(min(max(1, round(x)), SIZE_CAP * mean))

    def arrive(self, run: _Run, now: float) -> None:
        limit = self.opts.max_runs_in_flight
        if limit is not None and self.in_flight >= limit:
            self.admission.append(run)  # accepted; waits for one of the daemon's run threads
            return
        self.start(run, now)

    def start(self, run: _Run, now: float) -> None:
        self.in_flight += 1
        if self.runtime_pool is not None:
            self.runtime_pool.charge(self.opts.runtime_cpu_s_per_run, now)
        for i in self.sources:
            self.ready((run, i), now)

    def ready(self, task: Task, now: float) -> None:
        reps = self.ops[task[1]].replicas
        best = reps[0] if len(reps) == 1 else min(reps, key=lambda r: r.load())
        best.submit(task, now)

    def op_done(self, task: Task, now: float) -> None:
        run, i = task
        run.left -= 1
        if run.left == 0:
            run.finish = now
            self.in_flight -= 1
            if self.admission:
                self.start(self.admission.popleft(), now)
        for j, edge in self.ops[i].succ:
            delay = self._transfer_s(run, self.ops[i].op, edge)
            if delay > 0:
                self.at(now + delay, self.edge_arrive, (run, j))
            else:
                self.edge_arrive((run, j), now)

    def edge_arrive(self, task: Task, now: float) -> None:
        run, j = task
        run.pending[j] -= 1
        if run.pending[j] == 0:
            self.ready(task, now)

    def first_token(self, task: Task, now: float) -> None:
        if task[1] == self.ttft_op:
            task[0].ttft = now - task[0].arrival

    def _transfer_s(self, run: _Run, src: GranularOp, edge: PlannedEdge) -> float:
        if src.kind == "prefill" and edge.link_gb_s and src.input_tokens > 0:
            scaled = edge.bytes * run.sizes[src.source_node][0] / src.input_tokens
            return link_transfer_ms(scaled, edge.link_gb_s, edge.link_fixed_ms) / 1000.0
        return edge.transfer_ms / 1000.0

    # ------------------------------------------------------------------ run and report

    def run(self, arrivals: Sequence[float]) -> SimResult:
        if not arrivals:
            raise SimulationError("no runs arrive: raise the rate or the duration")
        runs = []
        preds = [rec.n_pred for rec in self.ops]
        for t in sorted(arrivals):
            sizes = {n: self._draw(self.node_op[n]) for n in self.llm_nodes}
            run = _Run(t, list(preds), sizes, len(self.ops))
            runs.append(run)
            self.at(t, self.arrive, run)
        heap, pop = self.heap, heapq.heappop
        now = 0.0
        while heap:
            now, _, fn, arg = pop(heap)
            fn(arg, now)
        return self._report(runs, now)

    def _report(self, runs: list[_Run], horizon: float) -> SimResult:
        done = [r for r in runs if not math.isnan(r.finish)]
        e2e = [(r.finish - r.arrival) * 1000.0 for r in done]
        ttft = [r.ttft * 1000.0 for r in done if not math.isnan(r.ttft)]
        sla = self.plan.sla_ms
        attainment = sum(1 for x in e2e if x <= sla) / len(e2e) if e2e else 0.0
        usd = None
        if self.plan.tco_usd_per_hour is not None and done and horizon > 0:
            usd = self.plan.tco_usd_per_hour * (horizon / 3600.0) / len(done) * 1000.0
        ops = {rec.op.name: self._op_stats(rec, horizon) for rec in self.ops}

        def pct(xs: list[float], q: float) -> float | None:
            return percentile(xs, q) if len(xs) >= (MIN_RUNS_P99_9 if q > 99 else 1) else None

        return SimResult(
            graph=self.plan.graph,
            seed=self.opts.seed,
            runs=len(runs),
            completed=len(done),
            horizon_s=horizon,
            mean_ms=sum(e2e) / len(e2e) if e2e else math.nan,
            p50_ms=percentile(e2e, 50),
            p95_ms=percentile(e2e, 95),
            p99_ms=percentile(e2e, 99),
            ttft_p50_ms=pct(ttft, 50),
            ttft_p95_ms=pct(ttft, 95),
            ttft_p99_ms=pct(ttft, 99),
            sla_ms=sla,
            sla_percentile=self.opts.sla_percentile,
            attainment=attainment,
            sla_met=attainment >= self.opts.sla_percentile / 100.0,
            usd_per_1k_runs=usd,
            ops=ops,
            p99_9_ms=pct(e2e, 99.9),
            ttft_p99_9_ms=pct(ttft, 99.9),
            e2e_histogram=histogram(e2e) if e2e else None,
        )

    def _op_stats(self, rec: _Op, horizon: float) -> OpStats:
        h = horizon if horizon > 0 else 1.0
        utils, queues = [], []
        for r in rec.replicas:
            r.stats.queue_changed(horizon, len(r.waiting))
            slots = r.slots if isinstance(r, SlotServer) else 1
            utils.append(r.stats.busy_s / (slots * h))
            queues.append(r.stats.queue_area / h)
        calls = sum(r.stats.calls for r in rec.replicas)
        steps = sum(r.stats.steps for r in rec.replicas)
        waited = sum(r.stats.wait_s for r in rec.replicas)
        return OpStats(
            device=rec.planned.device,
            replicas=len(rec.replicas),
            calls=calls,
            utilisation=sum(utils) / len(utils),
            mean_queue=sum(queues) / len(queues),
            max_queue=max(r.stats.queue_max for r in rec.replicas),
            mean_wait_ms=waited / calls * 1000.0 if calls else 0.0,
            mean_batch=sum(r.stats.batch_sum for r in rec.replicas) / steps if steps else None,
            steps=steps if rec.op.kind in ("prefill", "decode") else None,
            replica_utilisation=utils,
            replica_mean_queue=queues,
        )


def _no_edge(src: str, dst: str) -> PlannedEdge:
    raise SimulationError(f"the plan has no edge {src} → {dst} that the graph has: plan and graph do not match")
