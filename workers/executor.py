"""Run a placed agent graph on Ray: one replica pool per spec node, dispatch as soon as inputs are ready.

The driver never touches intermediate outputs: each call receives its upstream results as Ray
object references (top-level arguments, resolved by Ray on the worker), renders its templates
there and returns an envelope {output, started_at, service_ms}. The driver waits on references
(`ray.wait`) to dispatch successors, enforce per-op timeouts, retry idempotent ops (and any idempotent
op whose actor died — Ray restarts the actor; a non-idempotent tool whose actor died mid-call fails the run,
since its side effect may have happened), and cancel everything in flight when one op fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler.spec import AgentGraph, LLMNode, VectorSearchNode
from planner.plan import Plan
from workers.actors import HostWorker, LLMWorker, actor_options
from workers.templates import render
from workers.units import Pool, Unit, build_layout, node_device

if TYPE_CHECKING:
    from costmodels.catalog import Catalog, ModelSpec

DEFAULT_DATA_DIR = Path(os.environ.get("HETAGENT_DATA_DIR", ".hetagent"))
CANCEL_POLL_S = 0.1
RESTART_TIMEOUT_S = 300.0  # a restarted vLLM engine on a busy 2-core machine takes minutes to load


class RunError(RuntimeError):
    """An op failed: names the op, its device and the cause."""

    def __init__(self, node: str, device: str, cause: str):
        self.node, self.device, self.cause = node, device, cause
        super().__init__(f"op {node!r} on {device} failed: {cause}")


class InputError(ValueError):
    """The run's inputs do not match the graph's declared inputs (checked before anything starts)."""


@dataclass
class OpRecord:
    node: str
    kind: str
    ops: list[str]
    device: str
    replica: int
    attempts: int
    queue_wait_ms: float
    service_ms: float
    measured_ms: float
    predicted_ms: float
    planned_cost_usd: float  # the plan's $ per run for these ops (device $/h by planned busy time ÷ planned runs/h)
    measured_cost_usd: float  # this run's busy time × the device's price (see GraphRunner._measured_cost)
    status: str
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    phase: str | None = None  # "prefill" / "decode" for the two halves of a split LLM node
    # LLM ops: the model the cost model's prediction is for. The plan's model when the worker loaded it; when it
    # loaded a stand-in checkpoint, "<loaded> (stand-in for <plan's model>)", and ``served_prediction`` holds the
    # prediction for the loaded model at this request's token counts (``predicted_ms`` stays the plan's)
    predicted_for_model: str | None = None
    served_prediction: dict[str, Any] | None = None


@dataclass
class RunResult:
    run_id: str
    graph: str
    status: str
    outputs: dict[str, Any]
    e2e_ms: float
    predicted_e2e_ms: float | None
    records: list[OpRecord]
    notes: list[str]
    kv_transfers: list[dict[str, Any]] = field(default_factory=list)
    measured_cost_usd: float = 0.0  # Σ records' measured cost
    planned_cost_usd: float = 0.0  # Σ records' planned cost (the plan's $ per run)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- inputs


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def check_inputs(graph: AgentGraph, inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs with defaults filled; raises InputError listing every problem."""
    problems = []
    out = dict(inputs)
    for name, spec in graph.spec.inputs.items():
        if name not in inputs:
            if spec.default is not None:
                out[name] = spec.default
            elif spec.required:
                problems.append(f"missing input {name!r} ({spec.type})")
            continue
        value = inputs[name]
        ok = isinstance(value, _JSON_TYPES[spec.type]) and not (
            spec.type in ("number", "integer") and isinstance(value, bool)
        )
        if not ok:
            problems.append(f"input {name!r} must be {spec.type}, got {type(value).__name__}")
        elif spec.max_chars is not None and isinstance(value, str) and len(value) > spec.max_chars:
            problems.append(f"input {name!r} has {len(value)} characters, more than max_chars {spec.max_chars}")
    for name in inputs:
        if name not in graph.spec.inputs:
            problems.append(f"unknown input {name!r}; the graph declares {sorted(graph.spec.inputs) or 'none'}")
    if problems:
        raise InputError("; ".join(problems))
    return out


# ----------------------------------------------------------------------------- runner


# Ray's GCS keeps the events of this many tasks (actor calls) for its state API, then overwrites the oldest: its
# memory is bounded by the count. Under Ray's default a local head's GCS grew 4.5 MiB/min through a 10-minute soak
# without reaching it; at 10,000 it levels off near 83 MiB (docs/reliability.md).
RAY_TASK_EVENTS_ENV = "RAY_task_events_max_num_task_in_gcs"
RAY_TASK_EVENTS_MAX = 10_000


def ray_node_env() -> dict[str, str]:
    """Settings a Ray node this package starts gets in its environment (a user's own setting wins)."""
    return {RAY_TASK_EVENTS_ENV: os.environ.get(RAY_TASK_EVENTS_ENV, str(RAY_TASK_EVENTS_MAX))}


def ensure_ray(address: str | None = None, devices: list[str] | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray whose custom resources expose
    every device type of the local inventory (`device:<type>`), so the plan's tiers are schedulable."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    os.environ.update(ray_node_env())  # the local head's GCS inherits it
    resources = {f"device:{d}": 1000.0 for d in (devices or ["local-cpu"])}
    # workers import user callables ('pkg.mod:fn') the way `python -m` would: from the current directory
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        address="local",  # a new local Ray, never the last `ray start` cluster of this machine (maybe long dead)
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        resources=resources,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )


def ray_lost(timeout_s: float = 1.0) -> str | None:
    """Why the Ray cluster this process is connected to is gone — its GCS accepts no connection — or None
    (it answers, or this process is not connected). A TCP connect: cheap enough to poll every second."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        address = ray.get_runtime_context().gcs_address
        host, port = address.rsplit(":", 1)
    except Exception:  # noqa: BLE001 - shut down meanwhile: not connected
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"the Ray cluster is unreachable (its GCS at {address}: {exc.strerror or exc})"


class GraphRunner:
    """Starts the replica pools a plan asks for and runs the graph on them.

    The layout — which pools, how many replicas, which nodes each serves, which LLM nodes are split
    across two engines — is the plan's (``workers.units.build_layout``): LLM engines are the
    lowering's engine groups, host nodes on one device are fused into convex segments. A split LLM
    node runs as prefill → KV hand-off → decode: the prefill replica returns the request's KV
    blocks, Ray moves them to the decode replica's node, and the decode engine injects them.
    """

    def __init__(
        self,
        graph: AgentGraph,
        plan: Plan,
        *,
        data_dir: Path = DEFAULT_DATA_DIR,
        model_dir: Path | None = None,
        index_dirs: tuple[Path, ...] = (),
        catalog: Catalog | None = None,
        egress: list[str] | None = None,
    ):
        if not plan.feasible:
            raise ValueError(f"plan for {plan.graph!r} is infeasible: {plan.reason}")
        self.graph, self.plan, self.data_dir = graph, plan, Path(data_dir)
        self.model_dir = model_dir
        self.egress = egress  # tool nodes' allow-list (workers.egress); None: no policy (embedded use)
        self._catalog = catalog
        self._served_spec: ModelSpec | None = None  # the stand-in checkpoint's shape, read on first use
        self.index_dirs = tuple(Path(d) for d in index_dirs)
        self._ops_of = {n.name: [o for o in plan.ops if o.source_node == n.name] for n in graph.spec.nodes}
        layout = build_layout(graph, plan)
        self.layout = layout
        self.units = layout.units
        self.notes: list[str] = list(layout.notes)
        self.pools: dict[str, Pool] = {}  # started pools (empty until start())
        self._nodes = {n.name: n for n in graph.spec.nodes}
        self._order = graph.topological_order()
        self._ups = {n.name: graph.upstream(n) for n in graph.spec.nodes}
        self._sinks = graph.sinks()
        self._unit_of = {n: u.id for u in self.units.values() for n in u.nodes}
        self._edges = {(e.src, e.dst): e for e in plan.edges}

    def placement(self, node: str) -> list[tuple[str, str]]:
        """(phase, device) pairs a node runs on: one ("", device) pair, or prefill and decode of a split node."""
        unit = self.units[self._unit_of[node]]
        pools = [self.layout.pools[p] for p in unit.pools]
        if unit.split:
            return [("prefill", pools[0].device), ("decode", pools[1].device)]
        return [("", pools[0].device)]

    def start(self, start_timeout_s: float = 300.0) -> None:
        import ray

        try:
            self._start_pools(ray)
        except BaseException:
            self.shutdown()
            raise
        self._await_ready(start_timeout_s)

    def _pool_payload(self, pool: Pool) -> tuple[Any, list[tuple[dict, dict]], str | None]:
        """(the configured actor class, its nodes with their execution configs, model weights) of a pool."""
        import ray

        payload = []
        for name in pool.nodes:
            node = self._nodes[name]
            execution = pool.execution if pool.llm else node_device(self._ops_of[name])[2]
            if isinstance(node, VectorSearchNode):
                execution = self._with_index_path(node, pool.device, execution)
            if node.kind == "tool":  # set here, never from the plan or the spec
                execution = {**execution, "egress": self.egress}
            payload.append((node.model_dump(mode="json"), execution))
        env: dict[str, str] = {}
        for _, execution in payload:  # a fused segment gets the widest thread settings of its ops
            for k, v in (execution.get("env") or {}).items():
                env[k] = str(max(int(v), int(env.get(k, 0)))) if str(v).isdigit() else str(v)
        options = actor_options(pool.device, pool.device_class, {**payload[0][1], "env": env}, llm=pool.llm)
        cls = ray.remote(LLMWorker if pool.llm else HostWorker).options(**options, max_concurrency=64)
        first = self._nodes[pool.nodes[0]]
        weights = self._weights(first, pool.device) if pool.llm and isinstance(first, LLMNode) else None
        return cls, payload, weights

    def _start_pools(self, ray: Any) -> None:
        for pool in self.layout.pools.values():
            cls, payload, model_dir = self._pool_payload(pool)
            pool.actors = [cls.remote(payload, str(self.data_dir), model_dir) for _ in range(pool.replicas)]
            pool.in_flight = [0] * pool.replicas
            self.pools[pool.id] = pool

    def _await_ready(self, timeout_s: float) -> None:
        """Wait for every replica's constructor; a pool that cannot be placed or fails to start is a RunError."""
        import ray
        from ray.exceptions import RayActorError

        pings = {a.ping.remote(): p for p in self.pools.values() for a in p.actors}
        ready, waiting = ray.wait(list(pings), num_returns=len(pings), timeout=timeout_s)
        for ref in ready:
            try:
                ray.get(ref)
            except RayActorError as exc:
                unit = pings[ref]
                self.shutdown()
                raise RunError(unit.id, unit.device, f"worker failed to start: {exc}") from None
        if not waiting:
            self._note_substitutions()
            return
        unit = pings[waiting[0]]
        free = ray.available_resources()
        self.shutdown()
        raise RunError(
            unit.id,
            unit.device,
            (
                f"worker not ready within {timeout_s:g} s: either it cannot be placed (does the Ray cluster have a "
                f"node with resource 'device:{unit.device}' and free CPU/GPU?) or its constructor is still loading; "
                f"available now: { ({k: round(v, 3) for k, v in sorted(free.items()) if not k.startswith('node:')}) }"
            ),
        )

    def _note_substitutions(self) -> None:
        """Say in the run record when a worker serves another model than the spec names (never silently)."""
        import ray

        for rows in ray.get([p.actors[0].info.remote() for p in self.pools.values()]):
            for info in rows:
                if info.get("kind") == "embed" and info.get("substituted"):
                    note = (
                        f"{info['name']}: embedding model {info['model_requested']} is served as "
                        f"{info['model_served']} (the packaged CPU model)"
                    )
                    if note not in self.notes:
                        self.notes.append(note)

    def _weights(self, node: LLMNode, device: str) -> str:
        """Checkpoint an LLM node serves: ``model_dir`` when given (every LLM node serves it, and the
        run's notes say so), else ``<data_dir>/models/<catalog model>`` (a Hugging Face-format folder)."""
        if self.model_dir is not None:
            note = (
                f"{node.name}: catalog model {node.model} is served with the weights in {self.model_dir} "
                f"(no hub access; the plan's latency and cost predictions are for {node.model}; each LLM record's "
                "served_prediction is the cost model's for the model actually loaded)"
            )
            if note not in self.notes:
                self.notes.append(note)
            return str(self.model_dir)
        path = self.data_dir / "models" / node.model
        if not (path / "config.json").is_file():
            raise RunError(
                node.name,
                device,
                f"no weights for model {node.model!r} at {path}: put a Hugging Face-"
                "format checkpoint there, or pass model_dir (--model-dir)",
            )
        return str(path)

    def _with_index_path(self, node: VectorSearchNode, device: str, execution: dict[str, Any]) -> dict[str, Any]:
        """Resolve the node's index on the driver (absolute path in settings), so a missing index fails
        before any worker starts. On a multi-node cluster the path must be on storage every node sees."""
        from workers.ops import IndexMissing, resolve_index_path

        try:
            path = resolve_index_path(node.index, execution, self.data_dir, self.index_dirs)
        except IndexMissing as exc:
            raise RunError(node.name, device, str(exc)) from None
        settings = {**(execution.get("settings") or {}), "index_path": str(path.resolve())}
        return {**execution, "settings": settings}

    def scale_to(self, plan: Plan) -> bool:
        """Adopt ``plan`` in place when it keeps every pool on the same device with the same members
        (only replica counts change): start or stop replicas. False (nothing changed) otherwise."""
        import ray

        other = GraphRunner(
            self.graph,
            plan,
            data_dir=self.data_dir,
            model_dir=self.model_dir,
            index_dirs=self.index_dirs,
            catalog=self._catalog,
            egress=self.egress,
        )

        def shape(r: GraphRunner) -> list[tuple[str, str, tuple[str, ...]]]:
            return [(p.id, p.device, tuple(p.nodes)) for p in r.layout.pools.values()]

        if shape(other) != shape(self) or [u.pools for u in other.units.values()] != [
            u.pools for u in self.units.values()
        ]:
            return False
        for pid, pool in self.layout.pools.items():
            want = other.layout.pools[pid].replicas
            live = self.pools.get(pid)
            if live is None or want == len(live.actors):
                pool.replicas = want
                continue
            if want > len(live.actors):
                cls, payload, weights = self._pool_payload(pool)
                new = [cls.remote(payload, str(self.data_dir), weights) for _ in range(want - len(live.actors))]
                ray.get([a.ping.remote() for a in new])
                live.actors += new
                live.in_flight += [0] * len(new)
            else:  # drop the least-loaded replicas; calls in flight on them finish first
                keep = sorted(range(len(live.actors)), key=lambda i: -live.in_flight[i])[:want]
                drop = [a for i, a in enumerate(live.actors) if i not in keep]
                live.actors = [live.actors[i] for i in keep]
                live.in_flight = [live.in_flight[i] for i in keep]
                for a in drop:
                    a.__ray_terminate__.remote()  # graceful: queued calls run before the actor exits
            pool.replicas = want
        self.plan = plan
        self._ops_of = other._ops_of
        self._edges = other._edges
        return True

    def shutdown(self) -> None:
        import ray

        for p in self.pools.values():
            for a in p.actors:
                ray.kill(a)
            p.actors, p.in_flight = [], []
        self.pools.clear()

    # -- one run
    def run(
        self,
        inputs: dict[str, Any],
        *,
        on_event: Callable[[str, str, dict], None] | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> RunResult:
        """Run the graph once. Every unit whose upstream units are submitted is submitted at once with
        their ObjectRefs as arguments, so Ray's core worker starts it the moment its inputs exist (no
        driver round trip per op); this loop only observes completions, retries dead workers, times
        out and cancels. Op errors are retried inside the workers (bounded, idempotent ops only).

        Events to ``on_event(kind, node, data)``: started (inputs ready), token (streamed LLM text),
        retry, finished, failed, completed.
        """
        import ray
        from ray import ObjectRefGenerator
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError, TaskCancelledError

        graph_inputs = check_inputs(self.graph, inputs)
        if not self.pools:
            self.start()
        run_id = uuid.uuid4().hex[:12]
        emit = on_event or (lambda *_: None)
        units, unit_of, nodes, pools = self.units, self._unit_of, self._nodes, self.pools
        unit_ups = {
            uid: list(dict.fromkeys(unit_of[x] for n in u.nodes for x in self._ups[n] if unit_of[x] != uid))
            for uid, u in units.items()
        }
        unit_succs: dict[str, list[str]] = {uid: [] for uid in units}
        for uid, ups in unit_ups.items():
            for up in ups:
                unit_succs[up].append(uid)
        descendants: dict[str, set[str]] = {}
        for uid in reversed(list(units)):  # units are in topological order
            descendants[uid] = set(unit_succs[uid]).union(*(descendants[c] for c in unit_succs[uid]))
        streamed = (
            {
                uid
                for uid, u in units.items()
                if u.llm and (getattr(nodes[u.nodes[0]], "stream", False) or u.nodes[0] in self._sinks)
            }
            if on_event
            else set()
        )
        unit_timeout = {
            uid: sum(nodes[n].timeout_s * (nodes[n].retries + 1) for n in u.nodes) for uid, u in units.items()
        }
        available: dict[str, Any] = {}  # unit → ObjectRef of its result (submitted, maybe not finished)
        done: dict[str, dict] = {}  # node → envelope
        finished_units: set[str] = set()
        pending: dict[Any, str] = {}  # ObjectRef / ObjectRefGenerator → unit
        side_refs: dict[str, list[Any]] = {}  # unit → refs it waits on that are not its result (a split's prefill)
        submitted: dict[str, tuple[list[tuple[str, int]], int]] = {}  # unit → ([(pool, replica)], attempt)
        seen_ready: dict[str, float] = {}  # unit → monotonic time the driver saw its inputs ready
        records: list[OpRecord] = []
        kv_transfers: list[dict[str, Any]] = []
        attempts: dict[str, int] = {}
        t_start = time.perf_counter()
        wall_start = time.time()
        deadline = None if timeout_s is None else t_start + timeout_s

        def unit_device(uid: str) -> str:
            return self.layout.unit_device(uid)

        def submit(uid: str) -> None:
            unit = units[uid]
            picks = []
            for pid in unit.pools:
                i = pools[pid].pick()
                pools[pid].in_flight[i] += 1
                picks.append((pid, i))
            attempts[uid] = attempts.get(uid, 0) + 1
            args = (graph_inputs, *[available[u] for u in unit_ups[uid]])
            last = pools[picks[-1][0]].actors[picks[-1][1]]
            if unit.split:  # prefill → (KV through the object store) → decode, both submitted now
                pre = pools[picks[0][0]].actors[picks[0][1]].prefill.remote(unit.nodes[0], *args)
                side_refs[uid] = [pre]
                args, names = (pre,), ("decode", "decode_stream")
            else:
                names = ("run", "run_stream")
            if unit.llm:
                args = (unit.nodes[0], *args)
            if uid in streamed:
                ref = getattr(last, names[1]).options(num_returns="streaming").remote(*args)
            else:
                ref = getattr(last, names[0]).remote(*args)
                available[uid] = ref
            pending[ref] = uid
            submitted[uid] = (picks, attempts[uid])
            if all(u in finished_units for u in unit_ups[uid]):
                mark_ready(uid)

        def mark_ready(uid: str) -> None:
            seen_ready[uid] = time.perf_counter()
            picks, attempt = submitted[uid]
            for n in units[uid].nodes:
                emit("started", n, {"device": pools[picks[0][0]].device, "replica": picks[0][1], "attempt": attempt})

        def submit_ready(uids) -> None:
            for uid in units:
                if (
                    uid in uids
                    and uid not in submitted
                    and uid not in finished_units
                    and all(u in available for u in unit_ups[uid])
                ):
                    submit(uid)

        def release(uid: str) -> tuple[list[tuple[str, int]], int]:
            picks, attempt = submitted.pop(uid)
            for pid, i in picks:
                if i < len(pools[pid].in_flight):
                    pools[pid].in_flight[i] -= 1
            return picks, attempt

        def withdraw(uid: str) -> None:
            """Forget a live submission (it failed, or an upstream unit is being retried)."""
            release(uid)
            available.pop(uid, None)
            seen_ready.pop(uid, None)
            for ref in side_refs.pop(uid, []):
                ray.cancel(ref, force=False)
            for ref, u in list(pending.items()):
                if u == uid:
                    del pending[ref]
                    ray.cancel(ref, force=False)

        def fail(node: str, device: str, cause: str) -> None:
            for uid in list(submitted):
                withdraw(uid)
            emit("failed", node, {"error": cause})
            raise RunError(node, device, cause)

        submit_ready(set(units))
        while pending:
            now = time.perf_counter()
            if deadline is not None and now > deadline:
                uid = next(iter(pending.values()))
                fail(units[uid].nodes[0], unit_device(uid), f"run timed out after {timeout_s:g} s")
            waits = [seen_ready[u] + unit_timeout[u] - now for u in set(pending.values()) if u in seen_ready]
            if deadline is not None:
                waits.append(deadline - now)
            if cancel is not None:
                if cancel.is_set():
                    uid = next(iter(pending.values()))
                    fail(units[uid].nodes[0], unit_device(uid), "cancelled")
                waits.append(CANCEL_POLL_S)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, min(waits)) if waits else None)
            if not ready:
                now = time.perf_counter()
                for uid in set(pending.values()):
                    if uid in seen_ready and now - seen_ready[uid] > unit_timeout[uid]:
                        fail(units[uid].nodes[0], unit_device(uid), f"timed out after {unit_timeout[uid]:g} s")
                continue
            ref = ready[0]
            uid = pending.pop(ref)
            unit = units[uid]
            picks, attempt = submitted[uid]
            try:
                if isinstance(ref, ObjectRefGenerator):
                    gen = ref
                    ref = next(gen)
                    result = ray.get(ref)
                    if "delta" in result:
                        emit("token", unit.nodes[0], {"text": result["delta"]})
                        pending[gen] = uid
                        continue
                else:
                    result = ray.get(ref)
            except StopIteration:
                fail(unit.nodes[0], unit_device(uid), "the op's stream ended without a result")
            except RayActorError as exc:  # a worker died: Ray restarts it; the unit runs again (a split: from prefill)
                lost = ray_lost()
                if lost:
                    fail(unit.nodes[0], unit_device(uid), f"{lost}; the op's worker is gone ({type(exc).__name__})")
                once = [n for n in unit.nodes if not getattr(nodes[n], "idempotent", True)]
                if once:  # never fused with others (workers.units): the unit is this one tool
                    fail(
                        once[0],
                        unit_device(uid),
                        "its worker died mid-call and the op is not idempotent, so it is not run again "
                        f"(its side effect may have happened): {type(exc).__name__}",
                    )
                allowed = 1 + max(nodes[n].retries for n in unit.nodes)
                revived = (
                    [self._revive(p, i) for p, i in picks if i < len(pools[p].actors)] if attempt <= allowed else None
                )
                if revived is not None and all(revived):
                    withdraw(uid)
                    emit(
                        "retry",
                        unit.nodes[0],
                        {
                            "error": f"worker died: {type(exc).__name__}",
                            "rerun": "from prefill" if unit.split else "whole op",
                            "worker": "replaced" if "replaced" in revived else "restarted",
                        },
                    )
                    for d in [u for u in units if u in descendants[uid] and u in submitted]:
                        withdraw(d)  # their argument was the failed ref: submit them again behind the retry
                        attempts[d] -= 1  # that submission never ran; it is not an attempt
                    submit(uid)
                    submit_ready(descendants[uid])
                    continue
                fail(unit.nodes[0], unit_device(uid), ray_lost() or f"worker died {attempt} times: {exc}")
            except (RayTaskError, TaskCancelledError, GetTimeoutError) as exc:
                cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
                node = getattr(cause, "node", None) or unit.nodes[0]
                fail(node, unit_device(uid), getattr(cause, "cause", None) or f"{type(cause).__name__}: {cause}")
            release(uid)
            side_refs.pop(uid, None)
            finished_units.add(uid)
            available[uid] = ref
            for name in unit.nodes:  # in topological order
                env = result[name]
                done[name] = env
                ready_at = max((done[u]["finished_at"] for u in self._ups[name] if u in done), default=wall_start)
                new = self._records(name, env, ready_at, unit, picks, attempt)
                records += new
                if unit.split:
                    kv_transfers.append(self._kv_transfer(name, env, picks))
                emit("finished", name, {"ms": new[-1].measured_ms + (new[0].measured_ms if unit.split else 0.0)})
            for succ in unit_succs[uid]:
                if succ in submitted and succ not in seen_ready and all(u in finished_units for u in unit_ups[succ]):
                    mark_ready(succ)
            submit_ready(set(unit_succs[uid]))
        values = {n: e["output"] for n, e in done.items()}
        outputs = {k: render(t, graph_inputs, values) for k, t in self.graph.spec.outputs.items()} or {
            s: values[s] for s in self._sinks
        }
        e2e_ms = (time.perf_counter() - t_start) * 1000.0
        emit("completed", self.graph.metadata.name, {"ms": e2e_ms, "wall_start": wall_start})
        position = {n: i for i, n in enumerate(self._order)}
        records.sort(key=lambda r: (position[r.node], r.phase != "prefill"))
        return RunResult(
            run_id,
            self.graph.metadata.name,
            "succeeded",
            outputs,
            e2e_ms,
            self.plan.predicted_e2e_ms,
            records,
            list(self.notes),
            kv_transfers,
            sum(r.measured_cost_usd for r in records),
            sum(r.planned_cost_usd for r in records),
        )

    def _revive(self, pool_id: str, i: int) -> str | None:
        """Bring a pool's replica back after its worker died: "restarted" when Ray restarted it, "replaced"
        when it was dead for good (its ``max_restarts`` spent) and a new actor took its place — so a pool
        outlives any number of worker deaths; None when neither answers (or Ray itself is gone)."""
        pool = self.pools[pool_id]
        if self._await_restart(pool.actors[i]):
            return "restarted"
        if ray_lost():
            return None
        cls, payload, weights = self._pool_payload(pool)
        pool.actors[i] = cls.remote(payload, str(self.data_dir), weights)
        return "replaced" if self._await_restart(pool.actors[i]) else None

    @staticmethod
    def _await_restart(actor: Any, within_s: float = RESTART_TIMEOUT_S) -> bool:
        """Wait until Ray has restarted a dead actor (its constructor ran again); False if it stays down:
        dead for good (Ray answers ActorDiedError, not ActorUnavailableError, once no restart is left)."""
        import ray
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

        end = time.monotonic() + within_s
        while time.monotonic() < end and not ray_lost():
            try:
                ray.get(actor.ping.remote(), timeout=5)
                return True
            except ActorDiedError:
                return False
            except (RayActorError, GetTimeoutError):
                time.sleep(0.2)
        return False

    def _records(
        self, name: str, env: dict, ready_at: float, unit: Unit, picks: list[tuple[str, int]], attempt: int
    ) -> list[OpRecord]:
        """Times run from the moment the op's inputs existed (its upstream ops finished on their workers)
        to the moment it finished on its worker (wall clocks of the workers). A split LLM node has two
        records: prefill (tokenize + prefill, until its KV was ready) and decode (from the KV being
        ready, so it includes the hand-off, to the last token)."""
        ops = self._ops_of[name]
        attempts = env.get("attempts", 1) + attempt - 1
        detail = {k: v for k, v in env.get("detail", {}).items() if k not in ("prefill", "kv_transfer")}
        if len(unit.nodes) > 1:
            detail["unit"] = unit.id
        if not unit.split:
            pool = self.pools[picks[0][0]]
            return [
                OpRecord(
                    node=name,
                    kind=self._nodes[name].kind,
                    ops=[o.name for o in ops],
                    device=pool.device,
                    replica=picks[0][1],
                    attempts=attempts,
                    queue_wait_ms=max(0.0, (env["started_at"] - ready_at) * 1000.0),
                    service_ms=env["service_ms"],
                    measured_ms=max(env["service_ms"], (env["finished_at"] - ready_at) * 1000.0),
                    predicted_ms=sum(o.predicted_latency_ms for o in ops),
                    planned_cost_usd=self._cost_share(ops),
                    measured_cost_usd=self._measured_cost(ops, env["service_ms"], pool.device),
                    status="succeeded",
                    detail=detail,
                    **self._llm_prediction(name, env, pool.device, None),
                )
            ]
        pre = env["detail"]["prefill"]
        pre_ops = [o for o in ops if o.kind in ("tokenize", "prefill")]
        dec_ops = [o for o in ops if o.kind not in ("tokenize", "prefill")]
        (pre_pool, pre_i), (dec_pool, dec_i) = picks
        return [
            OpRecord(
                node=name,
                kind="llm",
                ops=[o.name for o in pre_ops],
                device=self.pools[pre_pool].device,
                replica=pre_i,
                attempts=attempts,
                queue_wait_ms=max(0.0, (pre["started_at"] - ready_at) * 1000.0),
                service_ms=pre["service_ms"],
                measured_ms=max(pre["service_ms"], (pre["finished_at"] - ready_at) * 1000.0),
                predicted_ms=sum(o.predicted_latency_ms for o in pre_ops),
                planned_cost_usd=self._cost_share(pre_ops),
                measured_cost_usd=self._measured_cost(pre_ops, pre["service_ms"], self.pools[pre_pool].device),
                status="succeeded",
                detail={"pid": pre["pid"]},
                phase="prefill",
                **self._llm_prediction(name, env, self.pools[pre_pool].device, "prefill"),
            ),
            OpRecord(
                node=name,
                kind="llm",
                ops=[o.name for o in dec_ops],
                device=self.pools[dec_pool].device,
                replica=dec_i,
                attempts=attempts,
                queue_wait_ms=max(0.0, (env["started_at"] - pre["finished_at"]) * 1000.0),
                service_ms=env["service_ms"],
                measured_ms=max(env["service_ms"], (env["finished_at"] - pre["finished_at"]) * 1000.0),
                predicted_ms=sum(o.predicted_latency_ms for o in dec_ops),
                planned_cost_usd=self._cost_share(dec_ops),
                measured_cost_usd=self._measured_cost(dec_ops, env["service_ms"], self.pools[dec_pool].device),
                status="succeeded",
                detail=detail,
                phase="decode",
                **self._llm_prediction(name, env, self.pools[dec_pool].device, "decode"),
            ),
        ]

    def _served_model(self) -> ModelSpec | None:
        """The stand-in checkpoint's ``ModelSpec`` (from its config.json), or None with a note saying why not."""
        if self._served_spec is None and self.model_dir is not None:
            from costmodels.served import served_model_spec

            try:
                self._served_spec = served_model_spec(self.model_dir)
            except (OSError, KeyError, ValueError) as exc:
                note = f"no cost-model prediction for the served weights in {self.model_dir}: {exc}"
                if note not in self.notes:
                    self.notes.append(note)
        return self._served_spec

    def _llm_prediction(self, name: str, env: dict, device: str, phase: str | None) -> dict[str, Any]:
        """The LLM record's ``predicted_for_model`` and, for a stand-in checkpoint, ``served_prediction``: the cost
        model's time of this request (its real prompt and output tokens, batch 1) for the model actually loaded,
        on the device it ran on (costmodels/served.py). The plan's ``predicted_ms`` is left as it is."""
        node = self._nodes[name]
        if not isinstance(node, LLMNode):
            return {}
        spec = self._served_model() if self.model_dir is not None else None
        detail = env.get("detail") or {}
        prompt, output = detail.get("prompt_tokens"), detail.get("output_tokens")
        if spec is None or not prompt or not output:
            return {"predicted_for_model": node.model}
        from costmodels.catalog import CatalogError, load_catalog
        from costmodels.served import predict_request

        catalog = self._catalog or load_catalog()
        try:
            p = predict_request(spec, catalog.device(device), int(prompt), int(output))
        except (CatalogError, ValueError) as exc:
            note = f"{name}: no cost-model prediction for {spec.name} on {device}: {exc}"
            if note not in self.notes:
                self.notes.append(note)
            return {"predicted_for_model": node.model}
        ms = {"prefill": p.prefill_ms, "decode": p.decode_ms}.get(phase or "", p.total_ms)
        return {
            "predicted_for_model": f"{spec.name} (stand-in for {node.model})",
            "served_prediction": {
                "model": spec.name,
                "stand_in_for": node.model,
                "device": device,
                "batch": 1,
                "prompt_tokens": p.prompt_tokens,
                "output_tokens": p.output_tokens,
                "prefill_ms": p.prefill_ms,
                "decode_ms": p.decode_ms,
                "predicted_ms": ms,  # this record's part: prefill, decode, or both for an unsplit node
            },
        }

    def _kv_transfer(self, name: str, env: dict, picks: list[tuple[str, int]]) -> dict[str, Any]:
        """One split request's KV hand-off: bytes moved, measured time, and the cost model's time for
        those bytes on the planned link (the plan's edge: its bandwidth and fixed cost)."""
        from costmodels.roofline import link_transfer_ms

        transfer = env["detail"]["kv_transfer"]
        edge = self._edges.get((f"{name}.prefill", f"{name}.decode"))
        nbytes = transfer.get("kv_bytes")
        predicted = None
        if edge is not None and nbytes is not None:
            predicted = (
                link_transfer_ms(nbytes, edge.link_gb_s, edge.link_fixed_ms) if edge.link_gb_s else edge.transfer_ms
            )
        return {
            "node": name,
            "src_device": self.pools[picks[0][0]].device,
            "dst_device": self.pools[picks[1][0]].device,
            "bytes": nbytes,
            "tokens": transfer.get("kv_tokens"),
            "prompt_tokens": env["detail"].get("prompt_tokens_prefilled"),
            "measured_ms": transfer.get("transfer_measured_ms"),
            "predicted_ms": predicted,
            "planned_bytes": edge.bytes if edge is not None else None,
            "planned_ms": edge.transfer_ms if edge is not None else None,
        }

    def _measured_cost(self, ops, service_ms: float, device: str) -> float:
        """$ of the devices these ops held while this run's call was in service: its service time ×
        the device's $/s × what one replica holds (its tensor-parallel devices; on a CPU tier its
        threads ÷ the device's cores). An engine serving a batch is charged whole for each request,
        so for batched LLM calls this is an upper bound (the planned figure divides by the batch)."""
        usage = next((d for d in self.plan.devices if d.device == device), None)
        if usage is None or not ops:
            return 0.0
        main = max(ops, key=lambda o: o.predicted_latency_ms)
        if usage.device_class == "cpu":
            held = min(1.0, max(1, main.cores_per_replica) / (usage.cores or max(1, main.cores_per_replica)))
        else:
            held = float(main.tensor_parallel)
        return service_ms / 1000.0 * usage.usd_per_hour_per_device / 3600.0 * held

    def _cost_share(self, ops) -> float:
        """$ of one run attributable to these ops at the planned rate: their devices' $/h split by busy time."""
        usage = {d.device: d for d in self.plan.devices}
        usd_h = 0.0
        for o in ops:
            dev = usage.get(o.device)
            if dev is None:
                continue
            peers = [p for p in self.plan.ops if p.device == o.device]
            weight = sum(p.predicted_latency_ms * p.replicas for p in peers) or 1.0
            usd_h += dev.usd_per_hour * o.predicted_latency_ms * o.replicas / weight
        return usd_h / (self.plan.rate_per_s * 3600.0)
