"""The daemon's state and operations, independent of HTTP: graphs, plans, deployments (replica
pools on Ray), runs, and the control loop that re-plans deployments as load changes.

Everything durable goes through the database first; in-memory state (runners, live run events)
is rebuilt from it on start: deployments that were up are started again, runs that were in flight
are marked ``interrupted``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from orchestrator.db import DeploymentRow, GraphRow, OpRecordRow, PlanRow, ReplanRow, RunRow, new_id, open_database, utcnow
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings

ACTIVE_RUN_STATES = ("queued", "running")
FINAL_RUN_STATES = ("succeeded", "failed", "cancelled", "interrupted")


class ServiceError(Exception):
    """A request the daemon refuses: becomes an RFC 9457 problem (status, title, detail)."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def not_found(what: str, ident: str) -> ServiceError:
    return ServiceError(404, f"{what} not found", f"no {what} with id {ident!r}")


@dataclass
class ControlPolicy:
    """Re-planning policy: a rate band with hysteresis and a minimum dwell time between changes."""

    window_s: float = 60.0  # arrivals counted over this window
    band: float = 0.3  # re-plan when the measured rate leaves [planned/(1+band), planned*(1+band)]
    min_dwell_s: float = 60.0  # no two changes of one deployment closer than this
    min_runs_for_latency: int = 20  # SLA checks need this many runs in the window
    headroom: float = 1.2  # plan for this multiple of the measured rate
    min_rate_per_s: float = 0.01


@dataclass
class _Live:
    """In-memory side of a deployment."""

    runner: Any = None
    graph_id: str = ""
    arrivals: deque = field(default_factory=lambda: deque(maxlen=100_000))
    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))  # (time, e2e_ms)
    last_change: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _RunLive:
    events: list = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    cancel: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: dict | None = None
    head: dict = field(default_factory=dict)  # id, graph_id, deployment_id, inputs, created_at


class Service:
    def __init__(self, settings: Settings, policy: ControlPolicy | None = None):
        from costmodels.catalog import load_catalog, load_cluster

        self.settings = settings
        self.policy = policy or ControlPolicy(window_s=settings.control_window_s, min_dwell_s=settings.control_dwell_s,
                                              band=settings.control_band)
        self.sessions = open_database(settings.db_url())
        self.catalog = load_catalog()
        self.cluster = load_cluster(settings.cluster, self.catalog)
        self.metrics = Metrics()
        from orchestrator.metrics import EngineMetricsCollector

        self.metrics.registry.register(EngineMetricsCollector(self._engine_handles))
        self.observations: deque = deque(maxlen=5000)  # measured vs predicted op latencies (online calibration)
        self.calibrations: list[dict[str, Any]] = []
        self.writer = GroupCommitWriter(self.sessions.kw["bind"])
        self.live: dict[str, _Live] = {}  # deployment id → live state
        self.runs_live: dict[str, _RunLive] = {}
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="run")
        self._deploy_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="deploy")
        self._stop = threading.Event()
        self._control_thread: threading.Thread | None = None
        self.ready = threading.Event()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Recover from the database: interrupt runs left in flight, restart deployments that were up."""
        with self.sessions.begin() as s:
            s.execute(update(RunRow).where(RunRow.status.in_(ACTIVE_RUN_STATES)).values(
                status="interrupted", error="the daemon stopped while this run was in flight", finished_at=utcnow()))
            to_restart = s.scalars(select(DeploymentRow).where(DeploymentRow.state.in_(("starting", "ready")))).all()
            ids = [d.id for d in to_restart]
            for d in to_restart:
                d.state, d.detail, d.updated_at = "starting", "restarting after a daemon restart", utcnow()
        for dep_id in ids:
            self._deploy_pool.submit(self._bring_up, dep_id)
        if self.settings.control_enabled:
            self._control_thread = threading.Thread(target=self._control_loop, name="control", daemon=True)
            self._control_thread.start()
        self.ready.set()

    def stop(self) -> None:
        self._stop.set()
        self.writer.close()
        for live in list(self.live.values()):
            if live.runner is not None:
                try:
                    live.runner.shutdown()
                except Exception:  # noqa: BLE001 - Ray may already be gone at exit
                    pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._deploy_pool.shutdown(wait=False, cancel_futures=True)

    def _engine_handles(self) -> list[tuple[str, str, int, Any]]:
        out = []
        for live in list(self.live.values()):
            runner = live.runner
            if runner is None:
                continue
            for unit in runner.pools.values():
                if unit.llm:
                    out += [(runner.graph.metadata.name, unit.id, i, a) for i, a in enumerate(unit.actors)]
        return out

    # ------------------------------------------------------------------ graphs
    def create_graph(self, doc: Any) -> dict[str, Any]:
        from compiler.ir import compile_graph
        from compiler.spec import parse_graph
        from planner.pipeline import apply_model_overrides

        graph = parse_graph(doc, self.catalog)  # SpecError → 422
        if len(graph.spec.nodes) > self.settings.max_graph_nodes:
            raise ServiceError(413, "graph too large", f"{len(graph.spec.nodes)} nodes; the limit is "
                                                       f"{self.settings.max_graph_nodes}")
        compile_graph(apply_model_overrides(graph, self.cluster, self.catalog), self.catalog)  # fails early
        with self.sessions.begin() as s:
            version = 1 + (s.scalar(select(func.max(GraphRow.version)).where(GraphRow.name == graph.metadata.name)) or 0)
            row = GraphRow(id=new_id("g"), name=graph.metadata.name, version=version,
                           spec=graph.model_dump(mode="json", exclude_none=True))
            s.add(row)
        return self._graph_json(row)

    def _graph_row(self, s, graph_id: str) -> GraphRow:
        row = s.get(GraphRow, graph_id)
        if row is None or row.deleted:
            raise not_found("graph", graph_id)
        return row

    def _graph_json(self, row: GraphRow) -> dict[str, Any]:
        return {"id": row.id, "name": row.name, "version": row.version, "created_at": row.created_at.isoformat(),
                "spec": row.spec}

    def get_graph(self, graph_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            return self._graph_json(self._graph_row(s, graph_id))

    def list_graphs(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.scalars(select(GraphRow).where(GraphRow.deleted.is_(False)).order_by(GraphRow.created_at)).all()
            return [{k: v for k, v in self._graph_json(r).items() if k != "spec"} for r in rows]

    def delete_graph(self, graph_id: str) -> None:
        with self.sessions.begin() as s:
            row = self._graph_row(s, graph_id)
            active = s.scalar(select(func.count()).select_from(DeploymentRow).where(
                DeploymentRow.graph_id == graph_id, DeploymentRow.state.in_(("starting", "ready"))))
            if active:
                raise ServiceError(409, "graph is deployed", "delete its deployments first")
            row.deleted = True

    def _parsed(self, spec: dict):
        from compiler.spec import parse_graph

        return parse_graph(spec, self.catalog)

    # ------------------------------------------------------------------ plans
    def create_plan(self, graph_id: str, sla_ms: float | None, rate_per_s: float, cluster: str | None = None,
                    ttft_ms: float | None = None) -> dict[str, Any]:
        from costmodels.catalog import list_clusters, load_cluster
        from planner.pipeline import plan_spec
        from planner.place import PlanOptions

        with self.sessions() as s:
            spec = self._graph_row(s, graph_id).spec
        if cluster and cluster not in list_clusters():  # names only: a path would read the daemon's files
            raise ServiceError(422, "unknown cluster", f"{cluster!r}; known: {', '.join(list_clusters())}")
        inventory = load_cluster(cluster, self.catalog) if cluster else self.cluster
        plan = plan_spec(self._parsed(spec), inventory, PlanOptions(rate_per_s=rate_per_s, sla_ms=sla_ms,
                                                                     ttft_ms=ttft_ms), self.catalog)
        self.metrics.solve_seconds.observe(plan.solve_seconds)
        return self._store_plan(graph_id, {"sla_ms": sla_ms, "rate_per_s": rate_per_s, "ttft_ms": ttft_ms,
                                           "cluster": inventory.name}, plan.model_dump(mode="json"))

    def _store_plan(self, graph_id: str, request: dict, plan: dict) -> dict[str, Any]:
        with self.sessions.begin() as s:
            row = PlanRow(id=new_id("p"), graph_id=graph_id, request=request, plan=plan, feasible=plan["feasible"])
            s.add(row)
        return self._plan_json(row)

    @staticmethod
    def _plan_json(row: PlanRow) -> dict[str, Any]:
        return {"id": row.id, "graph_id": row.graph_id, "created_at": row.created_at.isoformat(),
                "request": row.request, "plan": row.plan}

    def get_plan(self, graph_id: str, plan_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            row = s.get(PlanRow, plan_id)
            if row is None or row.graph_id != graph_id:
                raise not_found("plan", plan_id)
            return self._plan_json(row)

    def list_plans(self, graph_id: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            self._graph_row(s, graph_id)
            rows = s.scalars(select(PlanRow).where(PlanRow.graph_id == graph_id).order_by(PlanRow.created_at)).all()
            return [{"id": r.id, "created_at": r.created_at.isoformat(), "request": r.request, "feasible": r.feasible,
                     "tco_usd_per_hour": r.plan.get("tco_usd_per_hour"),
                     "predicted_e2e_ms": r.plan.get("predicted_e2e_ms")} for r in rows]

    def diff_plans(self, graph_id: str, a: str, b: str) -> dict[str, Any]:
        return plan_diff(self.get_plan(graph_id, a)["plan"], self.get_plan(graph_id, b)["plan"]) | {"from": a, "to": b}

    # ------------------------------------------------------------------ deployments
    def create_deployment(self, graph_id: str, plan_id: str | None) -> dict[str, Any]:
        with self.sessions.begin() as s:
            self._graph_row(s, graph_id)
            if plan_id is None:
                plan = s.scalars(select(PlanRow).where(PlanRow.graph_id == graph_id, PlanRow.feasible.is_(True))
                                 .order_by(PlanRow.created_at.desc())).first()
                if plan is None:
                    raise ServiceError(409, "no feasible plan", "create a feasible plan first (POST .../plans)")
            else:
                plan = s.get(PlanRow, plan_id)
                if plan is None or plan.graph_id != graph_id:
                    raise not_found("plan", plan_id)
                if not plan.feasible:
                    raise ServiceError(409, "plan is infeasible", plan.plan.get("reason") or "infeasible plan")
            active = s.scalars(select(DeploymentRow).where(DeploymentRow.graph_id == graph_id,
                                                           DeploymentRow.state.in_(("starting", "ready")))).first()
            if active is not None:
                raise ServiceError(409, "graph already deployed", f"deployment {active.id} is {active.state}; "
                                                                   "delete it first")
            row = DeploymentRow(id=new_id("d"), graph_id=graph_id, plan_id=plan.id, state="starting", detail="", pools={})
            s.add(row)
        self._deploy_pool.submit(self._bring_up, row.id)
        return self.get_deployment(graph_id, row.id)

    def _bring_up(self, dep_id: str) -> None:
        from planner.pipeline import apply_model_overrides
        from planner.plan import Plan
        from workers.executor import GraphRunner, RunError, ensure_ray
        from workers.tiny_model import build_tiny_model

        with self.sessions() as s:
            dep = s.get(DeploymentRow, dep_id)
            plan_row = s.get(PlanRow, dep.plan_id)
            graph_row = s.get(GraphRow, dep.graph_id)
            spec, plan_doc, name = graph_row.spec, plan_row.plan, graph_row.name
        try:
            graph = apply_model_overrides(self._parsed(spec), self.cluster, self.catalog)
            plan = Plan.model_validate(plan_doc)
            model_dir = self.settings.model_dir
            if model_dir is None and all(o.device_class == "cpu" for o in plan.ops) and any(
                    n.kind == "llm" for n in graph.spec.nodes):
                model_dir = build_tiny_model(self.settings.data_dir / "models" / "tiny-llama")
            ensure_ray(self.settings.ray_address, [p.type for p in self.cluster.devices])
            runner = GraphRunner(graph, plan, data_dir=self.settings.data_dir, model_dir=model_dir)
            runner.start()
        except (RunError, ValueError, OSError) as exc:
            self._set_deployment(dep_id, "failed", str(exc))
            return
        with self.sessions() as s:
            graph_id = s.get(DeploymentRow, dep_id).graph_id
        self.live[dep_id] = _Live(runner=runner, graph_id=graph_id)
        self.metrics.set_deployment(name, plan_doc)
        self._set_deployment(dep_id, "ready", "", pools=_pools_json(runner))

    def _set_deployment(self, dep_id: str, state: str, detail: str, **fields: Any) -> None:
        with self.sessions.begin() as s:
            dep = s.get(DeploymentRow, dep_id)
            if dep.state == "stopped" and state != "stopped":
                return  # deleted while it was starting
            dep.state, dep.detail, dep.updated_at = state, detail, utcnow()
            for k, v in fields.items():
                setattr(dep, k, v)

    def get_deployment(self, graph_id: str, dep_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            row = s.get(DeploymentRow, dep_id)
            if row is None or row.graph_id != graph_id:
                raise not_found("deployment", dep_id)
            replans = s.scalars(select(ReplanRow).where(ReplanRow.deployment_id == dep_id).order_by(ReplanRow.id)).all()
            return {"id": row.id, "graph_id": row.graph_id, "plan_id": row.plan_id, "state": row.state,
                    "detail": row.detail, "pools": row.pools, "created_at": row.created_at.isoformat(),
                    "updated_at": row.updated_at.isoformat(),
                    "replans": [{"at": r.created_at.isoformat(), "reason": r.reason, "from_plan": r.old_plan_id,
                                 "to_plan": r.new_plan_id, "changes": r.changes} for r in replans]}

    def list_deployments(self, graph_id: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            self._graph_row(s, graph_id)
            ids = s.scalars(select(DeploymentRow.id).where(DeploymentRow.graph_id == graph_id)
                            .order_by(DeploymentRow.created_at)).all()
        return [self.get_deployment(graph_id, i) for i in ids]

    def delete_deployment(self, graph_id: str, dep_id: str, drain_timeout_s: float = 60.0) -> dict[str, Any]:
        """Drain (stop taking runs, wait for those in flight) and stop the replica pools."""
        self.get_deployment(graph_id, dep_id)
        with self.sessions() as s:
            name = s.get(GraphRow, graph_id).name
        self._set_deployment(dep_id, "draining", "waiting for runs in flight")
        live = self.live.pop(dep_id, None)
        if live is not None:
            end = time.monotonic() + drain_timeout_s
            while live.in_flight and time.monotonic() < end:
                time.sleep(0.05)
            live.runner.shutdown()
        self.metrics.clear_deployment(name)
        self._set_deployment(dep_id, "stopped", "")
        return self.get_deployment(graph_id, dep_id)

    def _ready_deployment(self, graph_id: str) -> tuple[str, _Live]:
        for dep_id, live in list(self.live.items()):  # the hot path: no database read
            if live.graph_id == graph_id and live.runner is not None:
                return dep_id, live
        with self.sessions() as s:
            self._graph_row(s, graph_id)
            dep = s.scalars(select(DeploymentRow).where(DeploymentRow.graph_id == graph_id,
                                                        DeploymentRow.state.in_(("starting", "ready")))).first()
        if dep is None:
            raise ServiceError(409, "graph not deployed", "POST /v1/graphs/{id}/deployments first")
        live = self.live.get(dep.id)
        if dep.state != "ready" or live is None:
            raise ServiceError(409, "deployment not ready", f"deployment {dep.id} is {dep.state}", retry_after_s=5)
        return dep.id, live

    # ------------------------------------------------------------------ runs
    def create_run(self, graph_id: str, inputs: dict[str, Any]) -> tuple[str, _RunLive]:
        """Start a run: its id, and the in-memory handle to wait on (``wait_run``)."""
        from workers.executor import InputError, check_inputs

        dep_id, live = self._ready_deployment(graph_id)
        try:
            check_inputs(live.runner.graph, inputs)
        except InputError as exc:
            raise ServiceError(422, "invalid run inputs", str(exc)) from None
        run_id = new_id("r")
        head = {"id": run_id, "graph_id": graph_id, "deployment_id": dep_id, "inputs": inputs, "created_at": utcnow()}
        self.writer.write((RUN_INSERT, {**head, "status": "running", "notes": [], "events": []}))
        self.runs_live[run_id] = rl = _RunLive(head=head)
        with live.lock:
            live.arrivals.append(time.monotonic())
            live.in_flight += 1
        self._pool.submit(self._execute, run_id, live, rl, inputs)
        return run_id, rl

    def _execute(self, run_id: str, live: _Live, rl: _RunLive, inputs: dict[str, Any]) -> None:
        from workers.executor import RunError

        runner = live.runner

        def on_event(kind: str, node: str, data: dict) -> None:
            with rl.cond:
                rl.events.append({"event": kind, "node": node, "data": data, "t": time.time()})
                rl.cond.notify_all()

        status, error, result = "succeeded", None, None
        try:
            result = runner.run(inputs, on_event=on_event, cancel=rl.cancel)
        except RunError as exc:
            status, error = ("cancelled" if exc.cause == "cancelled" else "failed"), str(exc)
        except Exception as exc:  # noqa: BLE001 - a run must end in a state, whatever happened
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            with live.lock:
                live.in_flight -= 1
        records = [asdict(r) for r in result.records] if result else []
        end = {"event": "end", "node": "", "data": {"status": status}, "t": time.time()}
        fields: dict[str, Any] = {"status": status, "error": error, "finished_at": utcnow(), "events": [*rl.events, end],
                                  "outputs": None, "e2e_ms": None, "notes": []}
        if result is not None:
            fields.update(outputs=_jsonable(result.outputs), e2e_ms=result.e2e_ms, notes=result.notes)
            with live.lock:
                live.latencies.append((time.monotonic(), result.e2e_ms))
        records = [_jsonable(r) for r in records]

        self.writer.write((RUN_FINISH, {f"b_{k}": v for k, v in {"id": run_id, **fields}.items()}),
                          *[(OP_RECORD_INSERT, {"run_id": run_id, "node": r["node"], "device": r["device"], "record": r})
                            for r in records])
        final = self._run_json(RunRow(**rl.head, **fields), records)
        self.metrics.observe_run(runner.graph.metadata.name, status, result.e2e_ms if result else None,
                                 runner.graph.spec.sla.e2e_ms, records)
        if status == "succeeded":
            from costmodels.online import observations_from_records

            self.observations.extend(observations_from_records(records))
        with rl.cond:
            rl.events.append(end)
            rl.result = final
            rl.done = True
            rl.cond.notify_all()
        self.runs_live.pop(run_id, None)  # waiters hold it; later readers use the database

    def _update_run(self, run_id: str, **fields: Any) -> None:
        with self.sessions.begin() as s:
            row = s.get(RunRow, run_id)
            for k, v in fields.items():
                setattr(row, k, v)

    @staticmethod
    def _run_json(row: RunRow, records: list[dict]) -> dict[str, Any]:
        return {"id": row.id, "graph_id": row.graph_id, "deployment_id": row.deployment_id, "status": row.status,
                "inputs": row.inputs, "outputs": row.outputs, "error": row.error, "e2e_ms": row.e2e_ms,
                "notes": row.notes, "created_at": row.created_at.isoformat(),
                "finished_at": row.finished_at.isoformat() if row.finished_at else None, "records": records}

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise not_found("run", run_id)
            records = s.scalars(select(OpRecordRow).where(OpRecordRow.run_id == run_id).order_by(OpRecordRow.id)).all()
            return self._run_json(row, [r.record for r in records])

    def wait_run(self, run_id: str, timeout_s: float, live: _RunLive | None = None) -> dict[str, Any]:
        rl = live or self.runs_live.get(run_id)
        if rl is not None:
            with rl.cond:
                rl.cond.wait_for(lambda: rl.done, timeout=timeout_s)
                if rl.result is not None:
                    return rl.result
        return self.get_run(run_id)

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        rl = self.runs_live.get(run_id)
        if rl is None:
            run = self.get_run(run_id)
            raise ServiceError(409, "run already finished", f"run {run_id} is {run['status']}")
        rl.cancel.set()
        return self.wait_run(run_id, 30.0, rl)

    def run_events(self, run_id: str, after: int, timeout_s: float) -> tuple[list[dict], bool]:
        """Events after index ``after`` (waiting up to ``timeout_s`` for new ones) and whether the run ended."""
        rl = self.runs_live.get(run_id)
        if rl is None:  # finished before this daemon started, or unknown
            run = self.get_run(run_id)
            with self.sessions() as s:
                events = s.get(RunRow, run_id).events or []
            return events[after:], run["status"] in FINAL_RUN_STATES
        with rl.cond:
            rl.cond.wait_for(lambda: len(rl.events) > after or rl.done, timeout=timeout_s)
            return rl.events[after:], rl.done

    # ------------------------------------------------------------------ control loop
    def calibrate(self) -> dict[str, float]:
        """Refit device efficiencies from the observations gathered since the last refit; later plans
        (re-plans included) use the refitted catalog. Returns the factor applied per device."""
        from costmodels.online import refit

        catalog, applied = refit(self.catalog, list(self.observations))
        if applied:
            self.catalog = catalog
            self.observations.clear()  # they were measured against the old predictions
            for device, scale in applied.items():
                eff = catalog.hardware[device].efficiency
                self.metrics.efficiency.labels(device, "compute").set(eff.compute)
                self.metrics.efficiency.labels(device, "memory").set(eff.memory)
                self.calibrations.append({"at": utcnow().isoformat(), "device": device, "slowdown": scale,
                                          "compute": eff.compute, "memory": eff.memory})
        return applied

    def _control_loop(self) -> None:
        while not self._stop.wait(self.settings.control_interval_s):
            try:
                self.calibrate()
            except Exception:  # noqa: BLE001 - calibration must never stop the loop
                pass
            for dep_id in list(self.live):
                try:
                    self.control_step(dep_id)
                except Exception as exc:  # noqa: BLE001 - the loop must survive one bad deployment
                    self._record_note(dep_id, f"control step failed: {type(exc).__name__}: {exc}")

    def _record_note(self, dep_id: str, note: str) -> None:
        with self.sessions.begin() as s:
            dep = s.get(DeploymentRow, dep_id)
            if dep is not None:
                dep.detail = note

    def measured_rate(self, live: _Live, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        window = self.policy.window_s
        with live.lock:
            n = sum(1 for t in live.arrivals if now - t <= window)
        return n / window

    def control_step(self, dep_id: str, now: float | None = None) -> dict[str, Any] | None:
        """One decision for one deployment; returns the re-plan it made, if any."""
        now = time.monotonic() if now is None else now
        live = self.live.get(dep_id)
        if live is None:
            return None
        with self.sessions() as s:
            dep = s.get(DeploymentRow, dep_id)
            plan_row = s.get(PlanRow, dep.plan_id)
            graph_name = s.get(GraphRow, dep.graph_id).name
            graph_id = dep.graph_id
        plan = plan_row.plan
        rate = self.measured_rate(live, now)
        self.metrics.arrival_rate.labels(graph_name).set(rate)
        if now - live.last_change < self.policy.min_dwell_s:
            return None
        planned = plan["rate_per_s"]
        reason = None
        if rate > planned * (1 + self.policy.band):
            reason = f"rate {rate:.3g}/s above the planned {planned:.3g}/s (+{self.policy.band:.0%} band)"
        elif rate < planned / (1 + self.policy.band) and planned > self.policy.min_rate_per_s * self.policy.headroom:
            reason = f"rate {rate:.3g}/s below the planned {planned:.3g}/s (-{self.policy.band:.0%} band)"
        else:
            with live.lock:
                recent = sorted(ms for t, ms in live.latencies if now - t <= self.policy.window_s)
            if len(recent) >= self.policy.min_runs_for_latency:
                p = recent[min(len(recent) - 1, int(0.99 * len(recent)))]
                if p > plan["sla_ms"]:
                    reason = f"p99 latency {p:.0f} ms above the SLA {plan['sla_ms']:.0f} ms"
        if reason is None:
            return None
        new_rate = max(self.policy.min_rate_per_s, rate * self.policy.headroom)
        request = dict(plan_row.request)
        new = self.create_plan(graph_id, request.get("sla_ms"), new_rate, None, request.get("ttft_ms"))
        cap = new["plan"].get("max_rate_per_s")
        if not new["plan"]["feasible"] and cap and cap > planned:
            # more load than the inventory sustains: scale to the most it can carry, and say so
            reason += f"; capped at the inventory's highest sustainable rate, {cap:.3g}/s"
            new = self.create_plan(graph_id, request.get("sla_ms"), cap * 0.99, None, request.get("ttft_ms"))
        if not new["plan"]["feasible"]:
            self._record_note(dep_id, f"re-plan at {new_rate:.3g}/s infeasible: {new['plan'].get('reason')}")
            live.last_change = now
            return None
        changes = plan_diff(plan, new["plan"])
        from planner.plan import Plan

        if not live.runner.scale_to(Plan.model_validate(new["plan"])):
            changes["applied"] = "placement changed: pools rebuilt"
            self._rebuild(dep_id, live, new["plan"])
        with self.sessions.begin() as s:
            s.add(ReplanRow(deployment_id=dep_id, reason=reason, old_plan_id=plan_row.id, new_plan_id=new["id"],
                            changes=changes))
            d = s.get(DeploymentRow, dep_id)
            d.plan_id, d.pools, d.updated_at = new["id"], _pools_json(live.runner), utcnow()
        self.metrics.replans.labels(graph_name, reason.split()[0] if reason.startswith("rate") else "sla").inc()
        self.metrics.set_deployment(graph_name, new["plan"])
        live.last_change = now
        return {"reason": reason, "plan_id": new["id"], "changes": changes}

    def _rebuild(self, dep_id: str, live: _Live, plan_doc: dict) -> None:
        """Start pools for the new placement, switch new runs to them, then stop the old ones."""
        from planner.plan import Plan
        from workers.executor import GraphRunner

        old = live.runner
        new = GraphRunner(old.graph, Plan.model_validate(plan_doc), data_dir=old.data_dir, model_dir=old.model_dir,
                          index_dirs=old.index_dirs)
        new.start()
        live.runner = new  # new runs use the new pools from here on
        end = time.monotonic() + 60.0
        while any(sum(u.in_flight) for u in old.pools.values()) and time.monotonic() < end:
            time.sleep(0.05)  # runs already on the old pools finish there
        old.shutdown()


class GroupCommitWriter:
    """One thread applies queued writes in shared transactions (group commit): under load, one commit
    (and one ``executemany`` per statement) covers many runs instead of one each. ``write`` returns
    once its rows are committed, so nothing acknowledged to a client can be lost."""

    def __init__(self, engine: Any, max_batch: int = 512):
        import queue

        self.engine, self.max_batch = engine, max_batch
        self._q: Any = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="db-writer", daemon=True)
        self._thread.start()

    def write(self, *rows: tuple[Any, dict]) -> None:
        """Commit ``(statement, parameters)`` pairs; statements should be shared objects so they batch."""
        item = [rows, threading.Event(), None]
        self._q.put(item)
        item[1].wait()
        if item[2] is not None:
            raise item[2]

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)

    def _apply(self, items: list) -> None:
        groups: dict[int, tuple[Any, list[dict]]] = {}
        for item in items:
            for stmt, params in item[0]:
                groups.setdefault(id(stmt), (stmt, []))[1].append(params)
        with self.engine.begin() as conn:  # insertion order of groups keeps inserts before updates
            for stmt, params in groups.values():
                conn.execute(stmt, params)

    def _loop(self) -> None:
        import queue

        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                batch.append(nxt)
            try:
                self._apply(batch)
            except Exception:  # noqa: BLE001 - retry one by one so one bad write fails alone
                for item in batch:
                    try:
                        self._apply([item])
                    except Exception as exc:  # noqa: BLE001
                        item[2] = exc
            for item in batch:
                item[1].set()


_RUNS = RunRow.__table__
RUN_INSERT = insert(_RUNS)
RUN_FINISH = update(_RUNS).where(_RUNS.c.id == bindparam("b_id")).values(
    status=bindparam("b_status"), error=bindparam("b_error"), finished_at=bindparam("b_finished_at"),
    events=bindparam("b_events"), outputs=bindparam("b_outputs"), e2e_ms=bindparam("b_e2e_ms"),
    notes=bindparam("b_notes"))
OP_RECORD_INSERT = insert(OpRecordRow.__table__)


def _pools_json(runner: Any) -> dict[str, Any]:
    return {uid: {"nodes": u.nodes, "device": u.device, "replicas": len(u.actors), "llm": u.llm}
            for uid, u in runner.pools.items()}


def plan_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What changes from plan ``a`` to plan ``b``: ops moved or rescaled, TCO and latency deltas."""
    ops_a = {o["name"]: o for o in a.get("ops", [])}
    ops_b = {o["name"]: o for o in b.get("ops", [])}
    ops = []
    for name in sorted(set(ops_a) | set(ops_b)):
        x, y = ops_a.get(name), ops_b.get(name)
        if x is None or y is None:
            ops.append({"op": name, "change": "added" if x is None else "removed"})
            continue
        delta = {k: [x.get(k), y.get(k)] for k in ("device", "replicas", "tensor_parallel", "batch") if x.get(k) != y.get(k)}
        if delta:
            ops.append({"op": name, **delta})

    def d(key: str) -> list:
        return [a.get(key), b.get(key)]

    return {"ops": ops, "rate_per_s": d("rate_per_s"), "sla_ms": d("sla_ms"), "tco_usd_per_hour": d("tco_usd_per_hour"),
            "predicted_e2e_ms": d("predicted_e2e_ms"), "feasible": d("feasible")}


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))
