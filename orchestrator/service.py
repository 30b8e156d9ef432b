"""What the API's routers call: graphs, plans, deployments (replica pools on Ray) and runs, with the
rules that turn a request into a stored change or a refusal (``ServiceError``, an RFC 9457 problem).

Why this layer: it composes the store (orchestrator.store: every row and write) and the controller
(orchestrator.control: the loop that re-plans deployments and refits the catalog) into the
operations a client sees, and it owns the work that outlives a request: bringing pools up on a
thread pool and executing runs. Whatever fails there still ends in a state a client can read: a
deployment whose bring-up raises is ``failed`` with the error; a run whose result cannot be stored
wakes its waiters with a 503 at once.

Everything durable goes through the database first; in-memory state (runners, live run events)
is rebuilt from it on start: deployments that were up are started again, runs that were in flight
are marked ``interrupted``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.control import Controller, ControlPolicy, LiveDeployment, plan_diff, pools_json
from orchestrator.db import new_id, utcnow
from orchestrator.leader import LEADER, Leadership, new_replica_id
from orchestrator.metrics import EngineMetricsCollector, Metrics
from orchestrator.settings import Settings
from orchestrator.store import FINAL_RUN_STATES, STORAGE_RETRY_AFTER_S, DeploymentContext, StorageError, Store, run_json

if TYPE_CHECKING:
    from costmodels.catalog import Catalog

log = logging.getLogger("hetagent.service")

MAX_UNSTORED_RUNS = 1000  # outcomes kept in memory when the database refused them
RAY_CHECK_INTERVAL_S = 1.0  # how often the daemon checks that its Ray cluster still answers
RAY_RETRY_AFTER_S = 5  # Retry-After of the 503s while Ray is reconnecting


class ServiceError(Exception):
    """A request the daemon refuses: becomes an RFC 9457 problem (status, title, detail)."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def not_found(what: str, ident: str) -> ServiceError:
    """The 404 every lookup answers, worded the same everywhere."""
    return ServiceError(404, f"{what} not found", f"no {what} with id {ident!r}")


@dataclass
class RunHandle:
    """A run in flight: its events as they happen, and what its waiters are woken with."""

    head: dict[str, Any]  # id, graph_id, deployment_id, inputs, created_at
    events: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    cancel: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: dict[str, Any] | None = None
    failure: str | None = None  # set when the outcome could not be stored: waiters get a 503


class Service:
    """The daemon: one per process, created by the app's lifespan (or by tests, without HTTP)."""

    def __init__(self, settings: Settings, policy: ControlPolicy | None = None):
        from costmodels.catalog import load_catalog, load_cluster

        self.settings = settings
        policy = policy or ControlPolicy(
            window_s=settings.control_window_s, min_dwell_s=settings.control_dwell_s, band=settings.control_band
        )
        self.store = Store(settings.db_url(), new_replica_id())
        if settings.api_keys_file is not None:
            from orchestrator.auth import import_keys_file

            added = import_keys_file(self.store.sessions, settings.api_keys_file)
            log.info("API keys file %s: %d key(s) added", settings.api_keys_file, added)
        catalog = load_catalog()
        self.cluster = load_cluster(settings.cluster, catalog)
        self.metrics = Metrics()
        self.metrics.registry.register(EngineMetricsCollector(self._engine_handles))
        self.live: dict[str, LiveDeployment] = {}  # deployment id -> live state
        self.control = Controller(self.store, self.metrics, catalog, policy, self.live, self._replan)
        self.leadership = Leadership(self.store, self._sync)
        self.control.leading = lambda: self.leadership.leader
        self.control.rate_from_db = self.leadership.shared
        self.control.fence_lease = LEADER if self.leadership.shared else None
        self._starting: set[str] = set()  # deployments whose pools this replica is starting (or stopping)
        self.runs_live: dict[str, RunHandle] = {}
        self._unstored: deque[str] = deque()  # runs kept in runs_live because their outcome was not stored
        self._unstored_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=settings.max_runs_in_flight, thread_name_prefix="run")
        self._deploy_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="deploy")
        self.ready = threading.Event()
        self.ray_up = threading.Event()  # cleared while the Ray cluster is lost and being reconnected
        self.ray_up.set()
        self.ray_problem = ""  # why Ray is not up (the 503s' detail)
        self._uses_ray = False  # set once this service connected to Ray (a deployment's pools): then it is watched
        self._stopping = threading.Event()

    @property
    def catalog(self) -> Catalog:
        """The hardware catalog as online calibration last refitted it (plans use this one)."""
        return self.control.catalog

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Join the replicas (SQLite: refuse when another process has the file, see orchestrator.leader)
        and recover from the database: runs left in flight by a stopped daemon become interrupted, and
        deployments that were up are started again."""
        self.leadership.start()
        if self.settings.control_enabled:
            self.control.start(self.settings.control_interval_s)
        threading.Thread(target=self._watch_ray, name="ray-watch", daemon=True).start()
        self.ready.set()

    def stop(self) -> None:
        """Stop the loop and the writer, and the pools this process started."""
        self._stopping.set()
        self.control.stop()
        self.leadership.stop()
        self.store.close()
        for live in list(self.live.values()):
            if live.runner is not None:
                with contextlib.suppress(Exception):  # Ray may already be gone at exit
                    live.runner.shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._deploy_pool.shutdown(wait=False, cancel_futures=True)

    def _sync(self, leader: bool, became: bool) -> None:
        """After each lease renewal (orchestrator.leader): the single daemon recovers when it starts;
        the leader brings up deployments still ``starting``; every replica starts its own pools for
        each ``ready`` deployment, follows the plan the leader moved it to, and stops pools of a
        deployment no longer up (deleted on another replica)."""
        if became and not self.leadership.shared:
            self.store.recover()  # one process: nothing of the last one is still running
        wanted = self.store.deployment_states()
        for dep_id, (state, plan_id) in wanted.items():
            live = self.live.get(dep_id)
            if dep_id in self._starting:
                continue
            if live is None and (state == "ready" or leader) and self.ray_up.is_set():
                self._starting.add(dep_id)
                self._deploy_pool.submit(self._bring_up if state == "starting" else self._attach, dep_id)
            elif live is not None and not leader and state == "ready" and live.plan_id != plan_id:
                self._starting.add(dep_id)
                self._deploy_pool.submit(self._follow_replan, dep_id, plan_id)
        for dep_id in [d for d in list(self.live) if d not in wanted and d not in self._starting]:
            live = self.live.pop(dep_id, None)
            if live is not None:
                self._deploy_pool.submit(self._drain, live)

    def _watch_ray(self) -> None:
        """Notice that the Ray cluster is gone (its head died: every pool with it) and reconnect."""
        from workers.executor import ray_lost

        while not self._stopping.wait(RAY_CHECK_INTERVAL_S):
            try:
                lost = ray_lost() if self._uses_ray else None
                if lost:
                    self._reconnect_ray(lost)
            except Exception:  # noqa: BLE001 - the watch must go on
                log.exception("watching the Ray cluster failed")

    def _reconnect_ray(self, why: str) -> None:
        """Not ready (503s naming Ray) until the daemon is back on a new Ray by itself: this replica's
        deployments' pools are forgotten (their runs in flight fail naming Ray, see workers.executor), the dead
        connection is shut down, ``ensure_ray`` connects again — to ``ray_address``, or starts a new local Ray —
        retried with backoff, and the deployments are attached again from their stored plans, as after a
        restart (``_attach``): same ids, so clients keep theirs."""
        import ray

        from workers.executor import ensure_ray

        t0 = time.monotonic()
        self.ray_problem = f"{why}; reconnecting"
        self.ray_up.clear()
        log.error("%s: reconnecting", why)
        lost = {}
        for dep_id in list(self.live):
            self._starting.add(dep_id)  # the renewal thread's sync leaves them to this
            live = self.live.pop(dep_id, None)
            if live is not None:
                lost[dep_id] = live
        end = time.monotonic() + 30.0
        while any(live.in_flight for live in lost.values()) and time.monotonic() < end:
            time.sleep(0.1)
        delay_s = 1.0
        t_drain = t_connect = time.monotonic()
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):
                ray.shutdown()
            try:
                ensure_ray(self.settings.ray_address, [p.type for p in self.cluster.devices])
                t_connect = time.monotonic()
                break
            except Exception as exc:  # noqa: BLE001 - the head may take a while to come back: try again
                self.ray_problem = f"{why}; reconnecting failed ({type(exc).__name__}: {exc}), again in {delay_s:g} s"
                log.error("%s", self.ray_problem)
                self._stopping.wait(delay_s)
                delay_s = min(2 * delay_s, 30.0)
        if self._stopping.is_set():
            return
        for attached in [self._deploy_pool.submit(self._attach, dep_id) for dep_id in lost]:
            attached.result()  # _attach notes its own failure on the deployment; the renewal tries again
        self.ray_up.set()
        t_end = time.monotonic()
        log.warning(
            "Ray is back after %.1f s (runs in flight ended: %.1f s, reconnected: %.1f s, %d deployment(s) up: %.1f s)",
            t_end - t0,
            t_drain - t0,
            t_connect - t_drain,
            len(lost),
            t_end - t_connect,
        )

    def _need_ray(self) -> None:
        """Refuse work that needs Ray while it is being reconnected: a 503 naming Ray, with Retry-After."""
        if not self.ray_up.is_set():
            raise ServiceError(503, "Ray unavailable", self.ray_problem, retry_after_s=RAY_RETRY_AFTER_S)

    def _attach(self, dep_id: str) -> None:
        """Start this replica's pools for a deployment that is ``ready`` (up on another replica, or
        before a restart), from its stored plan. A failure is logged and noted on the deployment,
        and retried at a later renewal; the deployment's state is the leader's."""
        runner = None
        try:
            ctx = self.store.deployment_context(dep_id)
            runner = self._start_runner(ctx)
            if self.store.deployment_states().get(dep_id, ("",))[0] != "ready":
                runner.shutdown()  # deleted while its pools were starting here
                return
            self.live[dep_id] = LiveDeployment(runner=runner, graph_id=ctx.graph_id, plan_id=ctx.plan_id)
            self.metrics.set_deployment(ctx.graph_name, ctx.plan, runner.graph.spec.sla)
        except Exception as exc:  # noqa: BLE001 - on a thread pool: the log and the detail are what remain
            log.exception("replica %s could not start pools for deployment %s", self.store.replica_id, dep_id)
            with contextlib.suppress(Exception):
                self.store.note_deployment(
                    dep_id, f"replica {self.store.replica_id} could not start its pools: {type(exc).__name__}: {exc}"
                )
            if runner is not None:
                with contextlib.suppress(Exception):
                    runner.shutdown()
        finally:
            self._starting.discard(dep_id)

    def _follow_replan(self, dep_id: str, plan_id: str) -> None:
        """Apply to this replica's pools the plan the leader moved the deployment to."""
        from planner.plan import Plan

        try:
            ctx = self.store.deployment_context(dep_id)
            live = self.live.get(dep_id)
            if live is None or ctx.plan_id != plan_id:
                return
            if not live.runner.scale_to(Plan.model_validate(ctx.plan)):
                self.control.rebuild(dep_id, ctx.plan)
            live.plan_id = plan_id
            self.metrics.set_deployment(ctx.graph_name, ctx.plan, live.runner.graph.spec.sla)
        except Exception:  # noqa: BLE001 - retried at the next renewal
            log.exception("following the re-plan of deployment %s failed", dep_id)
        finally:
            self._starting.discard(dep_id)

    def _drain(self, live: LiveDeployment, timeout_s: float = 60.0) -> None:
        """Stop this replica's pools of a deployment stopped elsewhere, once its runs here finished."""
        end = time.monotonic() + timeout_s
        while live.in_flight and time.monotonic() < end:
            time.sleep(0.05)
        with contextlib.suppress(Exception):
            live.runner.shutdown()

    def _engine_handles(self) -> list[tuple[str, str, int, Any]]:
        out = []
        for live in list(self.live.values()):
            runner = live.runner
            if runner is None:
                continue
            for pool in runner.pools.values():  # an engine pool serves one or more LLM nodes
                if pool.llm:
                    out += [(runner.graph.metadata.name, "+".join(pool.nodes), i, a) for i, a in enumerate(pool.actors)]
        return out

    def hardware(self) -> list[dict[str, Any]]:
        """The catalog's device types with their current efficiencies and the refits that set them."""
        return [
            {**d.model_dump(mode="json"), "calibrations": self.control.calibration_history(name)}
            for name, d in self.catalog.hardware.items()
        ]

    # ------------------------------------------------------------------ graphs
    def create_graph(self, doc: Any) -> dict[str, Any]:
        """Validate and compile before storing, so a stored graph can always be planned."""
        from compiler.ir import compile_graph
        from compiler.spec import parse_graph
        from planner.pipeline import apply_model_overrides

        graph = parse_graph(doc, self.catalog)  # SpecError → 422
        allowed = self.settings.function_modules
        for node in graph.spec.nodes:  # a callable runs code in the workers: only modules the server allows
            function = getattr(node, "function", None) or ""
            module = function.split(":")[0]
            if module and not any(module == m or module.startswith(m + ".") for m in allowed):
                raise ServiceError(
                    422,
                    "callable not allowed",
                    f"node {node.name!r}: {function!r} is outside the modules graphs may call here "
                    f"({', '.join(allowed) or 'none'}); the server's function_modules (HETAGENT_FUNCTION_MODULES) "
                    "lists them",
                )
        if len(graph.spec.nodes) > self.settings.max_graph_nodes:
            raise ServiceError(
                413, "graph too large", f"{len(graph.spec.nodes)} nodes; the limit is {self.settings.max_graph_nodes}"
            )
        compile_graph(apply_model_overrides(graph, self.cluster, self.catalog), self.catalog)  # fails early
        return self.store.add_graph(graph.metadata.name, graph.model_dump(mode="json", exclude_none=True))

    def get_graph(self, graph_id: str) -> dict[str, Any]:
        """One graph with its spec; deleted graphs are gone for clients."""
        graph = self.store.get_graph(graph_id)
        if graph is None:
            raise not_found("graph", graph_id)
        return graph

    def list_graphs(self) -> list[dict[str, Any]]:
        """Summaries only: specs can be large."""
        return self.store.list_graphs()

    def delete_graph(self, graph_id: str) -> None:
        """Refused while deployed: runs would lose their graph."""
        with self.store.transaction() as s:
            row = self.store.graph_row(s, graph_id)
            if row is None:
                raise not_found("graph", graph_id)
            if self.store.live_deployment(s, graph_id) is not None:
                raise ServiceError(409, "graph is deployed", "delete its deployments first")
            self.store.mark_graph_deleted(s, row)

    def _parsed(self, spec: dict[str, Any]) -> Any:
        from compiler.spec import parse_graph

        return parse_graph(spec, self.catalog)

    # ------------------------------------------------------------------ plans
    def create_plan(
        self,
        graph_id: str,
        sla_ms: float | None,
        rate_per_s: float,
        cluster: str | None = None,
        ttft_ms: float | None = None,
        queueing: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Solve and store; an infeasible plan is stored too, since it says what the cluster can reach.

        ``queueing`` (arrivals, percentile, seed, simulation_runs; None each for the default) plans as
        `hetagent plan --arrivals/--percentile` does (orchestrator/queueing_plan.py); the plan carries its
        simulation."""
        from costmodels.catalog import list_clusters, load_cluster
        from planner.pipeline import plan_spec
        from planner.place import PlanOptions

        spec = self.get_graph(graph_id)["spec"]
        if cluster and cluster not in list_clusters():  # names only: a path would read the daemon's files
            raise ServiceError(422, "unknown cluster", f"{cluster!r}; known: {', '.join(list_clusters())}")
        catalog, slowdown = self.catalog, dict(self.control.slowdown)  # the refits this plan is made with
        inventory = load_cluster(cluster, catalog) if cluster else self.cluster
        opts = PlanOptions(rate_per_s=rate_per_s, sla_ms=sla_ms, ttft_ms=ttft_ms)
        request = {"sla_ms": sla_ms, "rate_per_s": rate_per_s, "ttft_ms": ttft_ms, "cluster": inventory.name}
        if queueing is None:
            plan = plan_spec(self._parsed(spec), inventory, opts, catalog)
        else:
            from orchestrator.queueing_plan import DEFAULT_RUNS, DEFAULT_SEED, plan_with_queueing

            q: dict[str, Any] = {
                "arrivals": "poisson",
                "percentile": None,
                "seed": DEFAULT_SEED,
                "simulation_runs": DEFAULT_RUNS,
            }
            q |= {k: v for k, v in queueing.items() if v is not None}
            plan = plan_with_queueing(
                self._parsed(spec),
                inventory,
                opts,
                catalog,
                arrivals=q["arrivals"],
                percentile=q["percentile"],
                seed=q["seed"],
                runs=q["simulation_runs"],
            )
            request |= q
        self.metrics.solve_seconds.observe(plan.solve_seconds)
        stored = self.store.add_plan(graph_id, request, plan.model_dump(mode="json"))
        self.control.plan_made(stored["id"], slowdown)
        return stored

    def _replan(self, graph_id: str, request: dict[str, Any], rate_per_s: float) -> dict[str, Any]:
        """The control loop's re-plan at a new rate, as the deployed plan was asked for: its cluster, SLA and
        TTFT, and its arrival process and percentile when it was planned under queueing (so a bursty plan stays
        checked by the simulator)."""
        keys = ("arrivals", "percentile", "seed", "simulation_runs")
        queueing = {k: request[k] for k in keys if k in request} or None
        cluster = request.get("cluster")
        cluster = None if cluster in (None, self.cluster.name) else cluster  # the daemon's own may be a path
        return self.create_plan(graph_id, request.get("sla_ms"), rate_per_s, cluster, request.get("ttft_ms"), queueing)

    def get_plan(self, graph_id: str, plan_id: str) -> dict[str, Any]:
        """A plan of this graph (another graph's plan id is a 404, not a leak)."""
        plan = self.store.get_plan(graph_id, plan_id)
        if plan is None:
            raise not_found("plan", plan_id)
        return plan

    def plan_simulation(self, plan_id: str) -> dict[str, Any]:
        """The plan with its ``simulation``. A feasible plan made without arrivals is simulated now (Poisson at
        its rate, the spec's percentile, the default seed: deterministic) and the result stored, so every
        later request reads the same one (its ``on_request`` says so)."""
        from costmodels.catalog import load_cluster
        from orchestrator.queueing_plan import DEFAULT_SEED, simulate_plan
        from planner.ilp import PlanningError
        from planner.plan import Plan

        found = self.store.find_plan(plan_id)
        if found is None:
            raise not_found("plan", plan_id)
        if found["plan"].get("simulation") is not None:
            return found
        plan = Plan.model_validate(found["plan"])
        if not plan.feasible:
            raise ServiceError(409, "nothing to simulate", f"plan {plan_id!r} is infeasible: {plan.reason}")
        graph = self._parsed(self.get_graph(found["graph_id"])["spec"])
        catalog = self.catalog
        inventory = self.cluster if plan.cluster == self.cluster.name else load_cluster(plan.cluster, catalog)
        try:
            check = simulate_plan(plan, graph, inventory, catalog, seed=DEFAULT_SEED)
        except PlanningError as exc:  # e.g. a plan that slices requests by size across device types
            raise ServiceError(409, "cannot simulate this plan", str(exc)) from None
        stored = check.model_copy(update={"on_request": True}).model_dump(mode="json")
        return self.store.set_plan_simulation(plan_id, stored)

    def list_plans(self, graph_id: str) -> list[dict[str, Any]]:
        """Summaries with TCO and latency, enough to pick one to deploy."""
        plans = self.store.list_plans(graph_id)
        if plans is None:
            raise not_found("graph", graph_id)
        return plans

    def diff_plans(self, graph_id: str, a: str, b: str) -> dict[str, Any]:
        """What a move from plan ``a`` to ``b`` would change, before deploying it."""
        return plan_diff(self.get_plan(graph_id, a)["plan"], self.get_plan(graph_id, b)["plan"]) | {"from": a, "to": b}

    # ------------------------------------------------------------------ deployments
    def create_deployment(self, graph_id: str, plan_id: str | None) -> dict[str, Any]:
        """Answer at once (``starting``); pools come up on a thread, then ``ready`` or ``failed``."""
        self._need_ray()
        with self.store.transaction() as s:
            if self.store.graph_row(s, graph_id) is None:
                raise not_found("graph", graph_id)
            if plan_id is None:
                plan = self.store.newest_feasible_plan(s, graph_id)
                if plan is None:
                    raise ServiceError(409, "no feasible plan", "create a feasible plan first (POST .../plans)")
            else:
                plan = self.store.plan_row(s, graph_id, plan_id)
                if plan is None:
                    raise not_found("plan", plan_id)
                if not plan.feasible:
                    raise ServiceError(409, "plan is infeasible", plan.plan.get("reason") or "infeasible plan")
            active = self.store.live_deployment(s, graph_id)
            if active is not None:
                raise ServiceError(
                    409, "graph already deployed", f"deployment {active.id} is {active.state}; delete it first"
                )
            dep_id = self.store.add_deployment(s, graph_id, plan.id)
            leader = self.leadership.leader
            if leader:  # before the commit: the renewal thread must not bring it up too
                self._starting.add(dep_id)
        if leader:  # else the leader brings it up at its next renewal
            self._deploy_pool.submit(self._bring_up, dep_id)
        return self.get_deployment(graph_id, dep_id)

    def _bring_up(self, dep_id: str) -> None:
        """Start a deployment's pools. Any exception ends it in ``failed`` with the error as its
        detail: this runs on a thread pool, where an escaping error would be lost and the deployment
        left ``starting`` forever."""
        from workers.executor import RunError

        runner, name = None, None
        try:
            ctx = self.store.deployment_context(dep_id)
            name = ctx.graph_name
            runner = self._start_runner(ctx)
            self.live[dep_id] = LiveDeployment(runner=runner, graph_id=ctx.graph_id, plan_id=ctx.plan_id)
            self.metrics.set_deployment(name, ctx.plan, runner.graph.spec.sla)
            if not self.store.set_deployment(dep_id, "ready", "", pools=pools_json(runner)):
                self._discard(dep_id, runner, name)  # deleted while it was starting
        except Exception as exc:  # noqa: BLE001 - see the docstring: the error becomes the state
            expected = isinstance(exc, (RunError, ValueError, OSError))  # user-side causes: say them plainly
            detail = str(exc) if expected and str(exc) else f"{type(exc).__name__}: {exc}"
            if not expected:
                log.exception("bringing up deployment %s failed", dep_id)
            self._discard(dep_id, runner, name)
            try:
                self.store.set_deployment(dep_id, "failed", detail)
            except Exception:  # noqa: BLE001 - the database is gone too: the log is all that is left
                log.exception("deployment %s failed (%s) and that could not be stored", dep_id, detail)
        finally:
            self._starting.discard(dep_id)

    def _start_runner(self, ctx: DeploymentContext) -> Any:
        from costmodels.tiny_model import build_tiny_model
        from planner.pipeline import apply_model_overrides
        from planner.plan import Plan
        from workers.executor import GraphRunner, ensure_ray

        graph = apply_model_overrides(self._parsed(ctx.spec), self.cluster, self.catalog)
        plan = Plan.model_validate(ctx.plan)
        model_dir = self.settings.model_dir
        if (
            model_dir is None
            and all(o.device_class == "cpu" for o in plan.ops)
            and any(n.kind == "llm" for n in graph.spec.nodes)
        ):
            model_dir = build_tiny_model(self.settings.data_dir / "models" / "tiny-llama")
        ensure_ray(self.settings.ray_address, [p.type for p in self.cluster.devices])
        self._uses_ray = True
        runner = GraphRunner(
            graph, plan, data_dir=self.settings.data_dir, model_dir=model_dir, egress=list(self.settings.tool_allow)
        )
        runner.start()
        return runner

    def _discard(self, dep_id: str, runner: Any, graph_name: str | None) -> None:
        """Forget a deployment that did not come up, and stop what it had started."""
        if self.live.get(dep_id) is not None and self.live[dep_id].runner is runner:
            self.live.pop(dep_id, None)
            if graph_name is not None:
                self.metrics.clear_deployment(graph_name)
        if runner is not None:
            try:
                runner.shutdown()
            except Exception:  # noqa: BLE001 - best effort: Ray may have lost the actors already
                log.exception("stopping the pools of deployment %s failed", dep_id)

    def get_deployment(self, graph_id: str, dep_id: str) -> dict[str, Any]:
        """State, pools and every re-plan with its reason."""
        dep = self.store.get_deployment(graph_id, dep_id)
        if dep is None:
            raise not_found("deployment", dep_id)
        return dep

    def list_deployments(self, graph_id: str) -> list[dict[str, Any]]:
        """All of a graph's deployments, stopped ones included (their re-plans are history)."""
        ids = self.store.deployment_ids(graph_id)
        if ids is None:
            raise not_found("graph", graph_id)
        return [self.get_deployment(graph_id, i) for i in ids]

    def delete_deployment(self, graph_id: str, dep_id: str, drain_timeout_s: float = 60.0) -> dict[str, Any]:
        """Drain (stop taking runs, wait for those in flight) and stop the replica pools."""
        self.get_deployment(graph_id, dep_id)
        name = self.store.graph_name(graph_id)
        self._starting.add(dep_id)  # the renewal thread's sync leaves it to this drain
        try:
            self.store.set_deployment(dep_id, "draining", "waiting for runs in flight")
            live = self.live.pop(dep_id, None)
        finally:
            self._starting.discard(dep_id)
        if live is not None:
            end = time.monotonic() + drain_timeout_s
            while live.in_flight and time.monotonic() < end:
                time.sleep(0.05)
            live.runner.shutdown()
        if name is not None:  # get_deployment above found the graph
            self.metrics.clear_deployment(name)
        self.store.set_deployment(dep_id, "stopped", "")
        return self.get_deployment(graph_id, dep_id)

    def _ready_deployment(self, graph_id: str) -> tuple[str, LiveDeployment]:
        self._need_ray()
        for dep_id, live in list(self.live.items()):  # the hot path: no database read
            if live.graph_id == graph_id and live.runner is not None:
                return dep_id, live
        with self.store.sessions() as s:
            if self.store.graph_row(s, graph_id) is None:
                raise not_found("graph", graph_id)
            dep = self.store.live_deployment(s, graph_id)
        if dep is None:
            raise ServiceError(409, "graph not deployed", "POST /v1/graphs/{id}/deployments first")
        ready = self.live.get(dep.id)
        if dep.state != "ready" or ready is None:
            state = dep.state if dep.state != "ready" else "ready; its pools on this replica are starting"
            raise ServiceError(409, "deployment not ready", f"deployment {dep.id} is {state}", retry_after_s=5)
        return dep.id, ready

    # ------------------------------------------------------------------ runs
    def create_run(self, graph_id: str, inputs: dict[str, Any]) -> tuple[str, RunHandle]:
        """Start a run: its id, and the in-memory handle to wait on (``wait_run``). The run is stored
        before it starts, so a crash leaves it ``interrupted``, never lost."""
        from workers.executor import InputError, check_inputs

        dep_id, live = self._ready_deployment(graph_id)
        try:
            check_inputs(live.runner.graph, inputs)
        except InputError as exc:
            raise ServiceError(422, "invalid run inputs", str(exc)) from None
        run_id = new_id("r")
        head = {"id": run_id, "graph_id": graph_id, "deployment_id": dep_id, "inputs": inputs, "created_at": utcnow()}
        self.store.insert_run(head)  # StorageError -> 503
        self.runs_live[run_id] = handle = RunHandle(head=head)
        live.arrived()
        self._pool.submit(self._execute, run_id, live, handle, inputs)
        return run_id, handle

    def _execute(self, run_id: str, live: LiveDeployment, handle: RunHandle, inputs: dict[str, Any]) -> None:
        """Run on the pool, store the outcome, then wake the waiters; they are woken whatever fails."""
        from workers.executor import RunError

        runner, plan_id = live.runner, live.plan_id  # the plan whose predictions the records carry

        def on_event(kind: str, node: str, data: dict) -> None:
            event = {"event": kind, "node": node, "data": data, "t": time.time()}
            with handle.cond:
                handle.events.append(event)
                self.store.add_event(run_id, len(handle.events) - 1, _jsonable(event))  # other replicas stream it
                handle.cond.notify_all()

        status, error, result = "succeeded", None, None
        try:
            result = runner.run(inputs, on_event=on_event, cancel=handle.cancel)
        except RunError as exc:
            status, error = ("cancelled" if exc.cause == "cancelled" else "failed"), str(exc)
        except Exception as exc:  # noqa: BLE001 - a run must end in a state, whatever happened
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            live.ended(result.e2e_ms if result else None)
        end = {"event": "end", "node": "", "data": {"status": status}, "t": time.time()}
        try:
            records = [_jsonable(asdict(r)) for r in result.records] if result else []
            fields: dict[str, Any] = {
                "status": status,
                "error": error,
                "finished_at": utcnow(),
                "events": [*handle.events, end],
                "outputs": None,
                "e2e_ms": None,
                "notes": [],
            }
            if result is not None:
                fields.update(outputs=_jsonable(result.outputs), e2e_ms=result.e2e_ms, notes=result.notes)
            final = run_json({**handle.head, **fields}, records)
            try:
                self.store.finish_run(run_id, fields, records)
            except StorageError as exc:
                final = self._unstored_outcome(run_id, handle, final, exc)
            self.metrics.observe_run(
                runner.graph.metadata.name,
                status,
                result.e2e_ms if result else None,
                runner.graph.spec.sla.e2e_ms,
                records,
            )
            if status == "succeeded":
                self.control.observe(records, plan_id)
        except Exception as exc:  # noqa: BLE001 - a bug past the run itself: still wake the waiters
            log.exception("finishing run %s failed", run_id)
            final, handle.failure = None, handle.failure or f"the outcome of run {run_id} was lost: {exc}"
        with handle.cond:
            handle.events.append(end)
            handle.result = final
            handle.done = True
            handle.cond.notify_all()
        if handle.failure is None:
            self.runs_live.pop(run_id, None)  # waiters hold it; later readers use the database

    def _unstored_outcome(
        self, run_id: str, handle: RunHandle, final: dict[str, Any], exc: StorageError
    ) -> dict[str, Any]:
        """The database refused a run's outcome: waiters get a 503, and the outcome stays readable
        from memory (GET, events) since the stored row still says ``running``."""
        self.metrics.storage_errors.labels("run_result").inc()
        log.error("the outcome of run %s (%s) could not be stored: %s", run_id, final["status"], exc)
        try:
            self.store.fail_run(run_id, f"the run ended ({final['status']}) but its result could not be stored: {exc}")
        except StorageError as again:
            log.error("marking run %s failed could not be stored either: %s", run_id, again)
        handle.failure = f"run {run_id} ended ({final['status']}) but its result could not be stored: {exc}"
        with self._unstored_lock:
            self._unstored.append(run_id)
            while len(self._unstored) > MAX_UNSTORED_RUNS:
                self.runs_live.pop(self._unstored.popleft(), None)
        return {**final, "notes": [*final["notes"], f"not stored: {exc}"]}

    def get_run(self, run_id: str) -> dict[str, Any]:
        """Status, outputs and per-op records; from memory for an outcome the database refused."""
        handle = self.runs_live.get(run_id)
        if handle is not None and handle.done and handle.result is not None:
            return handle.result
        run = self.store.get_run(run_id)
        if run is None:
            raise not_found("run", run_id)
        return run

    def wait_run(self, run_id: str, timeout_s: float, handle: RunHandle | None = None) -> dict[str, Any]:
        """The run once it ends, or as it stands after ``timeout_s``; a 503 when its outcome could not
        be stored (the client may retry the read)."""
        handle = handle or self.runs_live.get(run_id)
        if handle is not None:
            with handle.cond:
                handle.cond.wait_for(lambda: handle.done, timeout=timeout_s)
            if handle.failure is not None:
                raise ServiceError(
                    503, "storage unavailable", handle.failure, retry_after_s=STORAGE_RETRY_AFTER_S, run_id=run_id
                )
            if handle.result is not None:
                return handle.result
        return self.get_run(run_id)

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        """Ask a run in flight to stop; a finished run cannot be cancelled (409)."""
        handle = self.runs_live.get(run_id)
        if handle is None or handle.done:
            run = self.get_run(run_id)
            if run["status"] not in FINAL_RUN_STATES:  # executed by another replica: only that one can stop it
                raise ServiceError(
                    409, "run on another replica", f"run {run_id} is {run['status']} on another daemon replica"
                )
            raise ServiceError(409, "run already finished", f"run {run_id} is {run['status']}")
        handle.cancel.set()
        return self.wait_run(run_id, 30.0, handle)

    def run_events(self, run_id: str, after: int, timeout_s: float) -> tuple[list[dict], bool]:
        """Events after index ``after`` (waiting up to ``timeout_s`` for new ones) and whether the run ended."""
        handle = self.runs_live.get(run_id)
        if handle is None:  # run by another replica, finished before this one started, or unknown
            deadline = time.monotonic() + timeout_s
            while True:
                stored = self.store.run_events(run_id, after)
                if stored is None:
                    raise not_found("run", run_id)
                events, status = stored
                if events or status in FINAL_RUN_STATES or time.monotonic() >= deadline:
                    return events, status in FINAL_RUN_STATES
                time.sleep(0.2)  # polled: the replica running it writes its events as they happen
        with handle.cond:
            handle.cond.wait_for(lambda: len(handle.events) > after or handle.done, timeout=timeout_s)
            return handle.events[after:], handle.done


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))
