"""Run a placed agent graph on Ray: one replica pool per spec node, dispatch as soon as inputs are ready.

The driver never touches intermediate outputs: each call receives its upstream results as Ray
object references (top-level arguments, resolved by Ray on the worker), renders its templates
there and returns an envelope {output, started_at, service_ms}. The driver waits on references
(`ray.wait`) to dispatch successors, enforce per-op timeouts, retry idempotent ops (and any op
whose actor died — Ray restarts the actor), and cancel everything in flight when one op fails.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from compiler.spec import AgentGraph, LLMNode, ToolNode, VectorSearchNode
from planner.plan import Plan
from workers.actors import HostWorker, LLMWorker, actor_options
from workers.templates import render

DEFAULT_DATA_DIR = Path(os.environ.get("HETAGENT_DATA_DIR", ".hetagent"))
CANCEL_POLL_S = 0.1


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
class _Unit:
    """What one actor call runs: an LLM node, or a segment of host nodes fused on one device."""

    id: str
    nodes: list[str]
    device: str
    llm: bool
    replicas: int
    actors: list[Any] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)

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
    """Starts the replica pools a plan asks for and runs the graph on them.

    Execution units: each LLM node is a unit (an LLMWorker pool with the plan's replicas); host
    nodes (embed, vector_search, tool, transform) that the plan puts on the same device are fused
    into segments, one HostWorker pool each, so a chain or fan-out of light ops costs one Ray call,
    not one per op. A segment is convex (no path leaves it and comes back), so it runs as one task.
    Non-idempotent tools are never fused: a retried segment must not repeat a side effect.
    """

    def __init__(self, graph: AgentGraph, plan: Plan, *, data_dir: Path = DEFAULT_DATA_DIR, model_dir: Path | None = None,
                 index_dirs: tuple[Path, ...] = ()):
        if not plan.feasible:
            raise ValueError(f"plan for {plan.graph!r} is infeasible: {plan.reason}")
        self.graph, self.plan, self.data_dir = graph, plan, Path(data_dir)
        self.model_dir = model_dir
        self.index_dirs = tuple(Path(d) for d in index_dirs)
        self.pools: dict[str, _Unit] = {}
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
        self._descendants: dict[str, set[str]] = {}
        for n in reversed(self._order):
            below = set(self._succs[n])
            for c in self._succs[n]:
                below |= self._descendants[c]
            self._descendants[n] = below
        self.units = self._plan_units()
        self._unit_of = {n: u.id for u in self.units.values() for n in u.nodes}

    # -- placement
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

    def _plan_units(self) -> dict[str, _Unit]:
        """LLM nodes alone; host nodes greedily fused, in topological order, into convex per-device
        segments: a node joins (and merges) the segments of its upstream nodes on its device when the
        union stays convex. Returned in a topological order of the units."""
        segments: dict[int, list[str]] = {}
        seg_of: dict[str, int] = {}
        new_ids = itertools.count()
        units: dict[str, _Unit] = {}
        for name in self._order:
            node, (device, _, replicas) = self._nodes[name], self._placement[name]
            if isinstance(node, LLMNode):
                units[name] = _Unit(name, [name], device, True, replicas)
                continue
            candidates: list[int] = []
            if self._fusable(name):
                for u in self._ups[name]:
                    k = seg_of.get(u)
                    if k is not None and k not in candidates and self._placement[u][0] == device and all(
                            self._fusable(m) for m in segments[k]):
                        candidates.append(k)
            choice = None
            for group in ([candidates] if len(candidates) > 1 else []) + [[k] for k in candidates]:
                members = {m for k in group for m in segments[k]} | {name}
                if self._convex(members):
                    choice = group
                    break
            if choice is None:
                k = next(new_ids)
                segments[k] = [name]
            else:
                k = choice[0]
                for other in choice[1:]:
                    segments[k] += segments.pop(other)
                segments[k].append(name)
            for m in segments[k]:
                seg_of[m] = k
        for members in segments.values():
            members.sort(key=self._order.index)
            uid = "+".join(members)
            units[uid] = _Unit(uid, members, self._placement[members[0]][0], False,
                               max(self._placement[m][2] for m in members))
        unit_of = {n: uid for uid, u in units.items() for n in u.nodes}
        ups = {uid: {unit_of[x] for n in u.nodes for x in self._ups[n]} - {uid} for uid, u in units.items()}
        ordered: list[str] = []
        while len(ordered) < len(units):  # Kahn; ties by the first node's position in the graph order
            ready = [uid for uid in units if uid not in ordered and ups[uid] <= set(ordered)]
            ordered.append(min(ready, key=lambda uid: self._order.index(units[uid].nodes[0])))
        return {uid: units[uid] for uid in ordered}

    def _fusable(self, name: str) -> bool:
        node = self._nodes[name]
        return not isinstance(node, LLMNode) and not (isinstance(node, ToolNode) and not node.idempotent)

    def _convex(self, members: set[str]) -> bool:
        """No path leaves ``members`` and comes back (else one task could not run them all)."""
        below = set().union(*(self._descendants[m] for m in members)) - members
        return not any(self._descendants[x] & members for x in below)

    def start(self, start_timeout_s: float = 300.0) -> None:
        import ray

        try:
            self._start_pools(ray)
        except BaseException:
            self.shutdown()
            raise
        self._await_ready(start_timeout_s)

    def _unit_payload(self, unit: _Unit) -> tuple[Any, list[tuple[dict, dict]], str | None]:
        """(the configured actor class, its nodes with their execution configs, model weights) of a unit."""
        import ray

        payload = []
        for name in unit.nodes:
            node = self._nodes[name]
            execution = self._placement[name][1]
            if isinstance(node, VectorSearchNode):
                execution = self._with_index_path(node, unit.device, execution)
            payload.append((node.model_dump(mode="json"), execution))
        first = self._nodes[unit.nodes[0]]
        device_class = next(o.device_class for o in self._ops_of[first.name] if o.device == unit.device)
        env: dict[str, str] = {}
        for _, execution in payload:  # a fused segment gets the widest thread settings of its ops
            for k, v in (execution.get("env") or {}).items():
                env[k] = str(max(int(v), int(env.get(k, 0)))) if str(v).isdigit() else str(v)
        options = actor_options(unit.device, device_class, {**payload[0][1], "env": env}, llm=unit.llm)
        cls = ray.remote(LLMWorker if unit.llm else HostWorker).options(**options, max_concurrency=64)
        return cls, payload, (self._weights(first, unit.device) if unit.llm else None)

    def _start_pools(self, ray: Any) -> None:
        for unit in self.units.values():
            cls, payload, model_dir = self._unit_payload(unit)
            unit.actors = [cls.remote(payload, str(self.data_dir), model_dir) for _ in range(unit.replicas)]
            unit.in_flight = [0] * unit.replicas
            self.pools[unit.id] = unit

    def _await_ready(self, timeout_s: float) -> None:
        """Wait for every replica's constructor; a pool that cannot be placed or fails to start is a RunError."""
        import ray
        from ray.exceptions import RayActorError

        pings = {a.ping.remote(): u for u in self.pools.values() for a in u.actors}
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
        raise RunError(unit.id, unit.device, (
            f"worker not ready within {timeout_s:g} s: either it cannot be placed (does the Ray cluster have a "
            f"node with resource 'device:{unit.device}' and free CPU/GPU?) or its constructor is still loading; "
            f"available now: {({k: round(v, 3) for k, v in sorted(free.items()) if not k.startswith('node:')})}"))

    def _note_substitutions(self) -> None:
        """Say in the run record when a worker serves another model than the spec names (never silently)."""
        import ray

        for rows in ray.get([u.actors[0].info.remote() for u in self.pools.values()]):
            for info in rows:
                if info.get("kind") == "embed" and info.get("substituted"):
                    note = (f"{info['name']}: embedding model {info['model_requested']} is served as "
                            f"{info['model_served']} (the packaged CPU model)")
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

    def scale_to(self, plan: Plan) -> bool:
        """Adopt ``plan`` in place when it keeps every unit on the same device (only replica counts
        change): start or stop replicas. False (nothing changed) when placements differ."""
        import ray

        other = GraphRunner(self.graph, plan, data_dir=self.data_dir, model_dir=self.model_dir, index_dirs=self.index_dirs)
        if [(u.id, u.device) for u in other.units.values()] != [(u.id, u.device) for u in self.units.values()]:
            return False
        for uid, unit in self.units.items():
            want = other.units[uid].replicas
            pool = self.pools.get(uid)
            if pool is None or want == len(pool.actors):
                unit.replicas = want
                continue
            if want > len(pool.actors):
                cls_opts = self._unit_payload(unit)
                new = [cls_opts[0].remote(cls_opts[1], str(self.data_dir), cls_opts[2]) for _ in range(want - len(pool.actors))]
                ray.get([a.ping.remote() for a in new])
                pool.actors += new
                pool.in_flight += [0] * len(new)
            else:  # drop the least-loaded replicas; calls in flight on them finish first
                keep = sorted(range(len(pool.actors)), key=lambda i: -pool.in_flight[i])[:want]
                drop = [a for i, a in enumerate(pool.actors) if i not in keep]
                pool.actors = [pool.actors[i] for i in keep]
                pool.in_flight = [pool.in_flight[i] for i in keep]
                for a in drop:
                    a.__ray_terminate__.remote()  # graceful: queued calls run before the actor exits
            unit.replicas = want
        self.plan = plan
        self._ops_of = other._ops_of
        return True

    def shutdown(self) -> None:
        import ray

        for u in self.pools.values():
            for a in u.actors:
                ray.kill(a)
        self.pools.clear()

    # -- one run
    def run(self, inputs: dict[str, Any], *, on_event: Callable[[str, str, dict], None] | None = None,
            timeout_s: float | None = None, cancel: threading.Event | None = None) -> RunResult:
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
        units, unit_of, nodes = self.units, self._unit_of, self._nodes
        unit_ups = {uid: list(dict.fromkeys(unit_of[x] for n in u.nodes for x in self._ups[n] if unit_of[x] != uid))
                    for uid, u in units.items()}
        unit_succs: dict[str, list[str]] = {uid: [] for uid in units}
        for uid, ups in unit_ups.items():
            for up in ups:
                unit_succs[up].append(uid)
        descendants: dict[str, set[str]] = {}
        for uid in reversed(list(units)):  # units are in topological order
            descendants[uid] = set(unit_succs[uid]).union(*(descendants[c] for c in unit_succs[uid]))
        streamed = {uid for uid, u in units.items() if u.llm and (nodes[u.nodes[0]].stream or u.nodes[0] in self._sinks)
                    } if on_event else set()
        unit_timeout = {uid: sum(nodes[n].timeout_s * (nodes[n].retries + 1) for n in u.nodes) for uid, u in units.items()}
        available: dict[str, Any] = {}  # unit → ObjectRef of its result (submitted, maybe not finished)
        done: dict[str, dict] = {}  # node → envelope
        finished_units: set[str] = set()
        pending: dict[Any, str] = {}  # ObjectRef / ObjectRefGenerator → unit
        submitted: dict[str, tuple[int, int]] = {}  # unit → (replica, attempt) of its live submission
        seen_ready: dict[str, float] = {}  # unit → monotonic time the driver saw its inputs ready
        records: dict[str, OpRecord] = {}
        attempts: dict[str, int] = {}
        t_start = time.perf_counter()
        wall_start = time.time()
        deadline = None if timeout_s is None else t_start + timeout_s

        def submit(uid: str) -> None:
            unit = units[uid]
            i = unit.pick()
            unit.in_flight[i] += 1
            attempts[uid] = attempts.get(uid, 0) + 1
            args = (graph_inputs, *[available[u] for u in unit_ups[uid]])
            if uid in streamed:
                ref = unit.actors[i].run_stream.options(num_returns="streaming").remote(*args)
            else:
                ref = unit.actors[i].run.remote(*args)
                available[uid] = ref
            pending[ref] = uid
            submitted[uid] = (i, attempts[uid])
            if all(u in finished_units for u in unit_ups[uid]):
                mark_ready(uid)

        def mark_ready(uid: str) -> None:
            seen_ready[uid] = time.perf_counter()
            replica, attempt = submitted[uid]
            for n in units[uid].nodes:
                emit("started", n, {"device": units[uid].device, "replica": replica, "attempt": attempt})

        def submit_ready(uids) -> None:
            for uid in units:
                if uid in uids and uid not in submitted and uid not in finished_units and all(
                        u in available for u in unit_ups[uid]):
                    submit(uid)

        def withdraw(uid: str) -> None:
            """Forget a live submission (it failed, or an upstream unit is being retried)."""
            replica, _ = submitted.pop(uid)
            units[uid].in_flight[replica] -= 1
            available.pop(uid, None)
            seen_ready.pop(uid, None)
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
                fail(units[uid].nodes[0], units[uid].device, f"run timed out after {timeout_s:g} s")
            waits = [seen_ready[u] + unit_timeout[u] - now for u in set(pending.values()) if u in seen_ready]
            if deadline is not None:
                waits.append(deadline - now)
            if cancel is not None:
                if cancel.is_set():
                    uid = next(iter(pending.values()))
                    fail(units[uid].nodes[0], units[uid].device, "cancelled")
                waits.append(CANCEL_POLL_S)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, min(waits)) if waits else None)
            if not ready:
                now = time.perf_counter()
                for uid in set(pending.values()):
                    if uid in seen_ready and now - seen_ready[uid] > unit_timeout[uid]:
                        fail(units[uid].nodes[0], units[uid].device, f"timed out after {unit_timeout[uid]:g} s")
                continue
            ref = ready[0]
            uid = pending.pop(ref)
            unit = units[uid]
            replica, attempt = submitted[uid]
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
                fail(unit.nodes[0], unit.device, "the op's stream ended without a result")
            except RayActorError as exc:  # the worker died: Ray restarts it; the unit runs again
                allowed = 1 + max(nodes[n].retries for n in unit.nodes)
                if attempt <= allowed and self._await_restart(unit.actors[replica]):
                    withdraw(uid)
                    emit("retry", unit.nodes[0], {"error": f"worker died: {type(exc).__name__}"})
                    for d in [u for u in units if u in descendants[uid] and u in submitted]:
                        withdraw(d)  # their argument was the failed ref: submit them again behind the retry
                        attempts[d] -= 1  # that submission never ran; it is not an attempt
                    submit(uid)
                    submit_ready(descendants[uid])
                    continue
                fail(unit.nodes[0], unit.device, f"worker died {attempt} times: {exc}")
            except (RayTaskError, TaskCancelledError, GetTimeoutError) as exc:
                cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
                node = getattr(cause, "node", None) or unit.nodes[0]
                fail(node, unit.device, getattr(cause, "cause", None) or f"{type(cause).__name__}: {cause}")
            unit.in_flight[replica] -= 1
            del submitted[uid]
            finished_units.add(uid)
            available[uid] = ref
            for name in unit.nodes:  # in topological order
                env = result[name]
                done[name] = env
                ready_at = max((done[u]["finished_at"] for u in self._ups[name] if u in done), default=wall_start)
                records[name] = self._record(name, env, ready_at, unit, replica, attempt)
                emit("finished", name, {"ms": records[name].measured_ms})
            for succ in unit_succs[uid]:
                if succ in submitted and succ not in seen_ready and all(u in finished_units for u in unit_ups[succ]):
                    mark_ready(succ)
            submit_ready(set(unit_succs[uid]))
        values = {n: e["output"] for n, e in done.items()}
        outputs = {k: render(t, graph_inputs, values) for k, t in self.graph.spec.outputs.items()} or {
            s: values[s] for s in self._sinks}
        e2e_ms = (time.perf_counter() - t_start) * 1000.0
        emit("completed", self.graph.metadata.name, {"ms": e2e_ms, "wall_start": wall_start})
        return RunResult(run_id, self.graph.metadata.name, "succeeded", outputs, e2e_ms, self.plan.predicted_e2e_ms,
                         [records[n] for n in self._order], list(self.notes))

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

    def _record(self, name: str, env: dict, ready_at: float, unit: _Unit, replica: int, attempt: int) -> OpRecord:
        """Times run from the moment the op's inputs existed (its upstream ops finished on their workers)
        to the moment it finished on its worker (wall clocks of the workers)."""
        ops = self._ops_of[name]
        return OpRecord(
            node=name, kind=self._nodes[name].kind, ops=[o.name for o in ops], device=unit.device,
            replica=replica, attempts=env.get("attempts", 1) + attempt - 1,
            queue_wait_ms=max(0.0, (env["started_at"] - ready_at) * 1000.0), service_ms=env["service_ms"],
            measured_ms=max(env["service_ms"], (env["finished_at"] - ready_at) * 1000.0),
            predicted_ms=sum(o.predicted_latency_ms for o in ops), cost_share_usd=self._cost_share(ops),
            status="succeeded", detail={**env.get("detail", {}), **({"unit": unit.id} if len(unit.nodes) > 1 else {})},
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
