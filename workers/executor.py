"""Run a placed agent graph on Ray: one replica pool per spec node, dispatch as soon as inputs are ready.

The driver never touches intermediate outputs: each call receives its upstream results as Ray
object references (top-level arguments, resolved by Ray on the worker), renders its templates
there and returns an envelope {output, started_at, service_ms}. The driver waits on references
(`ray.wait`) to dispatch successors, enforce per-op timeouts, retry idempotent ops (and any op
whose actor died — Ray restarts the actor), and cancel everything in flight when one op fails.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from compiler.spec import AgentGraph, LLMNode, ToolNode, VectorSearchNode
from planner.plan import Plan
from workers.actors import actor_options, worker_class
from workers.templates import render

DEFAULT_DATA_DIR = Path(os.environ.get("HETAGENT_DATA_DIR", ".hetagent"))


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
    cost_share_usd: float
    status: str
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- inputs


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,), "object": (dict,), "array": (list,),
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
        ok = isinstance(value, _JSON_TYPES[spec.type]) and not (spec.type in ("number", "integer")
                                                                   and isinstance(value, bool))
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


@dataclass
class _Pool:
    node: str
    device: str
    actors: list[Any]
    in_flight: list[int]

    def pick(self) -> int:
        return min(range(len(self.actors)), key=lambda i: self.in_flight[i])


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
    resources = {f"device:{d}": 1000.0 for d in (devices or ["local-cpu"])}
    # workers import user callables ('pkg.mod:fn') the way `python -m` would: from the current directory
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False, resources=resources,
             runtime_env={"env_vars": {"PYTHONPATH": path}})


class GraphRunner:
    """Starts the replica pools a plan asks for and runs the graph on them."""

    def __init__(self, graph: AgentGraph, plan: Plan, *, data_dir: Path = DEFAULT_DATA_DIR, model_dir: Path | None = None,
                 index_dirs: tuple[Path, ...] = ()):
        if not plan.feasible:
            raise ValueError(f"plan for {plan.graph!r} is infeasible: {plan.reason}")
        self.graph, self.plan, self.data_dir = graph, plan, Path(data_dir)
        self.model_dir = model_dir
        self.index_dirs = tuple(Path(d) for d in index_dirs)
        self.pools: dict[str, _Pool] = {}
        self.notes: list[str] = []
        self._ops_of = {n.name: [o for o in plan.ops if o.source_node == n.name] for n in graph.spec.nodes}
        for name, ops in self._ops_of.items():
            if not ops:
                raise ValueError(f"plan has no ops for node {name!r}: was it made for another graph?")
        self._placement = {n.name: self._node_device(n.name) for n in graph.spec.nodes}
        self._nodes = {n.name: n for n in graph.spec.nodes}
        self._order = graph.topological_order()
        self._ups = {n.name: graph.upstream(n) for n in graph.spec.nodes}
        self._succs: dict[str, list[str]] = {n: [] for n in self._order}
        for n, us in self._ups.items():
            for u in us:
                self._succs[u].append(n)
        self._sinks = graph.sinks()
        self._descendants: dict[str, list[str]] = {}
        for n in reversed(self._order):
            below = dict.fromkeys(self._succs[n])
            for c in self._succs[n]:
                below.update(dict.fromkeys(self._descendants[c]))
            self._descendants[n] = list(below)

    # -- placement of a node's pool
    def _node_device(self, name: str) -> tuple[str, dict[str, Any], int]:
        ops = self._ops_of[name]
        main = next((o for o in ops if o.kind == "decode"), None) or next(
            (o for o in ops if o.kind not in ("tokenize", "detokenize")), ops[0])
        prefill = next((o for o in ops if o.kind == "prefill"), None)
        if prefill is not None and prefill.device != main.device:
            self.notes.append(
                f"{name}: the plan puts prefill on {prefill.device} and decode on {main.device}; "
                f"{'the CPU backend has no KV-transfer connector, so ' if main.device_class == 'cpu' else ''}"
                f"both phases run on {main.device} (one engine) in this runtime")
        replicas = max(o.replicas for o in ops if o.kind not in ("tokenize", "detokenize")) if len(ops) > 1 else ops[0].replicas
        return main.device, main.execution, max(1, replicas)

    def start(self, start_timeout_s: float = 300.0) -> None:
        import ray

        try:
            self._start_pools(ray)
        except BaseException:
            self.shutdown()
            raise
        self._await_ready(start_timeout_s)

    def _start_pools(self, ray: Any) -> None:
        for node in self.graph.spec.nodes:
            device, execution, replicas = self._placement[node.name]
            device_class = next(o.device_class for o in self._ops_of[node.name] if o.device == device)
            options = actor_options(device, device_class, execution, llm=isinstance(node, LLMNode))
            cls = ray.remote(worker_class(node)).options(**options, max_concurrency=64)
            model_dir = self._weights(node, device) if isinstance(node, LLMNode) else None
            if isinstance(node, VectorSearchNode):
                execution = self._with_index_path(node, device, execution)
            actors = [cls.remote(node.model_dump(mode="json"), execution, str(self.data_dir), model_dir)
                      for _ in range(replicas)]
            self.pools[node.name] = _Pool(node.name, device, actors, [0] * replicas)

    def _await_ready(self, timeout_s: float) -> None:
        """Wait for every replica's constructor; a pool that cannot be placed or fails to start is a RunError."""
        import ray
        from ray.exceptions import RayActorError

        pings = {a.ping.remote(): (p.node, p.device) for p in self.pools.values() for a in p.actors}
        ready, waiting = ray.wait(list(pings), num_returns=len(pings), timeout=timeout_s)
        for ref in ready:
            try:
                ray.get(ref)
            except RayActorError as exc:
                node, device = pings[ref]
                self.shutdown()
                raise RunError(node, device, f"worker failed to start: {exc}") from None
        if not waiting:
            self._note_substitutions()
            return
        if waiting:
            node, device = pings[waiting[0]]
            free = ray.available_resources()
            self.shutdown()
            raise RunError(node, device, (
                f"worker not ready within {timeout_s:g} s: either it cannot be placed (does the Ray cluster have a "
                f"node with resource 'device:{device}' and free CPU/GPU?) or its constructor is still loading; "
                f"available now: "
                f"{ {k: round(v, 3) for k, v in sorted(free.items()) if not k.startswith('node:')} }"))

    def _note_substitutions(self) -> None:
        """Say in the run record when a worker serves another model than the spec names (never silently)."""
        import ray

        infos = ray.get([p.actors[0].info.remote() for p in self.pools.values()])
        for info in infos:
            if info.get("kind") == "embed" and info.get("substituted"):
                note = (f"{info['name']}: embedding model {info['model_requested']} is served as {info['model_served']} "
                        "(the packaged CPU model)")
                if note not in self.notes:
                    self.notes.append(note)

    def _weights(self, node: LLMNode, device: str) -> str:
        """Checkpoint an LLM node serves: ``model_dir`` when given (every LLM node serves it, and the
        run's notes say so), else ``<data_dir>/models/<catalog model>`` (a Hugging Face-format folder)."""
        if self.model_dir is not None:
            note = (f"{node.name}: catalog model {node.model} is served with the weights in {self.model_dir} "
                    f"(no hub access; latency and cost predictions are for {node.model})")
            if note not in self.notes:
                self.notes.append(note)
            return str(self.model_dir)
        path = self.data_dir / "models" / node.model
        if not (path / "config.json").is_file():
            raise RunError(node.name, device, f"no weights for model {node.model!r} at {path}: put a Hugging Face-"
                                              "format checkpoint there, or pass model_dir (--model-dir)")
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

    def shutdown(self) -> None:
        import ray

        for p in self.pools.values():
            for a in p.actors:
                ray.kill(a)
        self.pools.clear()

    # -- one run
    def run(self, inputs: dict[str, Any], *, on_event: Callable[[str, str, dict], None] | None = None,
            timeout_s: float | None = None) -> RunResult:
        """Run the graph once. Every op whose upstream ops are submitted is submitted at once with their
        ObjectRefs as arguments, so Ray's core worker starts it the moment its inputs exist (no driver
        round trip per op); this loop only observes completions, retries, times out and cancels.

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
        order, ups, succs, nodes = self._order, self._ups, self._succs, self._nodes
        streamed = {n for n, node in nodes.items() if isinstance(node, LLMNode) and (
            node.stream or n in self._sinks)} if on_event else set()
        available: dict[str, Any] = {}  # node → ObjectRef of its envelope (submitted, maybe not finished)
        done: dict[str, dict] = {}  # node → envelope
        pending: dict[Any, str] = {}  # ObjectRef / ObjectRefGenerator → node
        submitted: dict[str, tuple[int, int]] = {}  # node → (replica, attempt) of its live submission
        ready_at: dict[str, float] = {}  # node → wall time its inputs existed (worker-side upstream finish)
        seen_ready: dict[str, float] = {}  # node → monotonic time the driver saw its inputs ready (timeouts)
        records: dict[str, OpRecord] = {}
        attempts: dict[str, int] = {}
        t_start = time.perf_counter()
        wall_start = time.time()
        deadline = None if timeout_s is None else t_start + timeout_s

        def submit(name: str) -> None:
            pool = self.pools[name]
            i = pool.pick()
            pool.in_flight[i] += 1
            attempts[name] = attempts.get(name, 0) + 1
            args = (graph_inputs, ups[name], *[available[u] for u in ups[name]])
            if name in streamed:
                ref = pool.actors[i].run_stream.options(num_returns="streaming").remote(*args)
            else:
                ref = pool.actors[i].run.remote(*args)
                available[name] = ref
            pending[ref] = name
            submitted[name] = (i, attempts[name])
            if all(u in done for u in ups[name]):
                mark_ready(name)

        def mark_ready(name: str) -> None:
            ready_at[name] = max((done[u]["finished_at"] for u in ups[name]), default=time.time())
            seen_ready[name] = time.perf_counter()
            replica, attempt = submitted[name]
            emit("started", name, {"device": self.pools[name].device, "replica": replica, "attempt": attempt})

        def submit_ready_successors(names: list[str]) -> None:
            for n in order:
                if n in names and n not in submitted and all(u in available for u in ups[n]):
                    submit(n)

        def withdraw(name: str) -> None:
            """Forget a live submission (it failed, or an upstream is being retried)."""
            replica, _ = submitted.pop(name)
            self.pools[name].in_flight[replica] -= 1
            available.pop(name, None)
            ready_at.pop(name, None)
            seen_ready.pop(name, None)
            for ref, n in list(pending.items()):
                if n == name:
                    del pending[ref]
                    ray.cancel(ref, force=False)

        def retry(name: str, why: str) -> None:
            emit("retry", name, {"error": why})
            for d in [n for n in order if n in self._descendants[name] and n in submitted]:
                withdraw(d)  # their argument was the failed ref: submit them again behind the retry
                attempts[d] -= 1  # that submission never ran; it is not an attempt
            submit(name)
            submit_ready_successors(self._descendants[name])

        def fail(name: str, cause: str) -> None:
            for n in list(submitted):
                withdraw(n)
            emit("failed", name, {"error": cause})
            raise RunError(name, self.pools[name].device, cause)

        submit_ready_successors(order)
        while pending:
            now = time.perf_counter()
            if deadline is not None and now > deadline:
                fail(next(iter(pending.values())), f"run timed out after {timeout_s:g} s")
            waits = [seen_ready[n] + nodes[n].timeout_s - now for n in set(pending.values()) if n in seen_ready]
            if deadline is not None:
                waits.append(deadline - now)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, min(waits)) if waits else None)
            if not ready:
                now = time.perf_counter()
                for n in set(pending.values()):
                    if n in seen_ready and now - seen_ready[n] > nodes[n].timeout_s:
                        fail(n, f"timed out after {nodes[n].timeout_s:g} s")
                continue
            ref = ready[0]
            name = pending.pop(ref)
            node = nodes[name]
            replica, attempt = submitted[name]
            try:
                if isinstance(ref, ObjectRefGenerator):
                    gen = ref
                    ref = next(gen)
                    env = ray.get(ref)
                    if "delta" in env:
                        emit("token", name, {"text": env["delta"]})
                        pending[gen] = name
                        continue
                else:
                    env = ray.get(ref)
            except StopIteration:
                fail(name, "the op's stream ended without a result")
            except RayActorError as exc:  # the actor died: Ray restarts it; retry once more than configured
                if attempt <= node.retries + 1 and self._await_restart(self.pools[name].actors[replica]):
                    withdraw(name)
                    retry(name, f"worker died: {type(exc).__name__}")
                    continue
                fail(name, f"worker died {attempt} times: {exc}")
            except (RayTaskError, TaskCancelledError, GetTimeoutError) as exc:
                cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
                idempotent = getattr(node, "idempotent", True) if isinstance(node, ToolNode) else True
                http_tool = isinstance(node, ToolNode) and bool(node.url)  # retried inside the op, with backoff
                if attempt <= node.retries and idempotent and not http_tool:
                    withdraw(name)
                    retry(name, f"{type(cause).__name__}: {cause}")
                    continue
                fail(name, f"{type(cause).__name__}: {cause}")
            finished = time.time()
            self.pools[name].in_flight[replica] -= 1
            del submitted[name]
            env["finished_at"] = env["started_at"] + env["service_ms"] / 1000.0
            done[name] = env
            available[name] = ref
            if name not in ready_at:  # its upstream results were observed out of order: use what is known
                ready_at[name] = max((done[u]["finished_at"] for u in ups[name] if u in done), default=wall_start)
            records[name] = self._record(name, env, ready_at[name], finished, replica, attempt)
            emit("finished", name, {"ms": records[name].measured_ms})
            for succ in succs[name]:
                if succ in submitted and succ not in ready_at and all(u in done for u in ups[succ]):
                    mark_ready(succ)
            submit_ready_successors(succs[name])
        values = {n: e["output"] for n, e in done.items()}
        outputs = {k: render(t, graph_inputs, values) for k, t in self.graph.spec.outputs.items()} or {
            s: values[s] for s in self._sinks}
        e2e_ms = (time.perf_counter() - t_start) * 1000.0
        emit("completed", self.graph.metadata.name, {"ms": e2e_ms, "wall_start": wall_start})
        return RunResult(run_id, self.graph.metadata.name, "succeeded", outputs, e2e_ms, self.plan.predicted_e2e_ms,
                         [records[n] for n in order], list(self.notes))

    @staticmethod
    def _await_restart(actor: Any, within_s: float = 60.0) -> bool:
        """Wait until Ray has restarted a dead actor (its constructor ran again); False if it stays down."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        end = time.monotonic() + within_s
        while time.monotonic() < end:
            try:
                ray.get(actor.ping.remote(), timeout=5)
                return True
            except (RayActorError, GetTimeoutError):
                time.sleep(0.2)
        return False

    def _record(self, name: str, env: dict, ready_at: float, finished: float, replica: int, attempt: int) -> OpRecord:
        """Times are from the moment the op's inputs existed (its upstream ops finished on their workers)."""
        ops = self._ops_of[name]
        pool = self.pools[name]
        predicted = sum(o.predicted_latency_ms for o in ops)
        return OpRecord(
            node=name, kind=self.graph.node(name).kind, ops=[o.name for o in ops], device=pool.device,
            replica=replica, attempts=attempt, queue_wait_ms=max(0.0, (env["started_at"] - ready_at) * 1000.0),
            service_ms=env["service_ms"], measured_ms=(finished - ready_at) * 1000.0, predicted_ms=predicted,
            cost_share_usd=self._cost_share(ops), status="succeeded", detail=env.get("detail", {}),
        )

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
