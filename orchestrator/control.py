"""The daemon's feedback loop: it watches each running deployment and re-plans it as load moves, and
it refits the cost model from measured op latencies (online calibration).

Owns: the re-planning policy (``ControlPolicy``), the in-memory side of a running deployment
(``LiveDeployment``: its Ray runner, arrivals, latencies, runs in flight), the loop thread, applying
a re-plan (scale pools in place or rebuild them), re-plan diffs, and the refitted catalog with its
history.

Why a module of its own: the loop runs on its own thread and clock, acts on measurements rather
than requests, and must outlive any single failure (one deployment whose step raises, one
calibration pass that raises): each is logged, counted or noted on the deployment, and the loop goes
on. It plans through a function the service hands it and persists through the store, so it never
imports the request layer.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.db import utcnow
from orchestrator.metrics import Metrics
from orchestrator.store import NotLeader, Store

if TYPE_CHECKING:
    from costmodels.catalog import Catalog
    from costmodels.online import Observation
    from workers.executor import GraphRunner

log = logging.getLogger("hetagent.control")

# (graph id, sla_ms, rate_per_s, ttft_ms) -> the stored plan document, as POST .../plans answers it
MAX_PLAN_SLOWDOWNS = 10_000  # plans whose refits-at-planning are remembered (a dict per plan made otherwise grows)
# (graph id, the deployed plan's stored request — SLA, TTFT, and arrivals/percentile if it was planned under
# queueing — and the new rate) -> the stored new plan
PlanFn = Callable[[str, dict[str, Any], float], dict[str, Any]]


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
class LiveDeployment:
    """In-memory side of a ready deployment: what runs it and what the control loop measures on it."""

    runner: GraphRunner
    graph_id: str = ""
    plan_id: str = ""  # the plan its pools run (a replica that does not lead follows the stored one)
    arrivals: deque = field(default_factory=lambda: deque(maxlen=100_000))  # monotonic times
    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))  # (monotonic time, e2e_ms)
    last_change: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arrived(self) -> None:
        """A run starts: it counts toward the measured rate and the runs to drain."""
        with self.lock:
            self.arrivals.append(time.monotonic())
            self.in_flight += 1

    def ended(self, e2e_ms: float | None) -> None:
        """A run ends (``e2e_ms`` when it produced a result): it counts toward the latency check."""
        with self.lock:
            self.in_flight -= 1
            if e2e_ms is not None:
                self.latencies.append((time.monotonic(), e2e_ms))


def pools_json(runner: Any) -> dict[str, Any]:
    """The deployment's ``pools`` document: each replica pool's nodes, device and size."""
    return {
        uid: {"nodes": u.nodes, "device": u.device, "replicas": len(u.actors), "llm": u.llm}
        for uid, u in runner.pools.items()
    }


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
        delta = {
            k: [x.get(k), y.get(k)] for k in ("device", "replicas", "tensor_parallel", "batch") if x.get(k) != y.get(k)
        }
        if delta:
            ops.append({"op": name, **delta})

    def d(key: str) -> list:
        return [a.get(key), b.get(key)]

    return {
        "ops": ops,
        "rate_per_s": d("rate_per_s"),
        "sla_ms": d("sla_ms"),
        "tco_usd_per_hour": d("tco_usd_per_hour"),
        "predicted_e2e_ms": d("predicted_e2e_ms"),
        "feasible": d("feasible"),
    }


class Controller:
    """Re-plans deployments and refits the catalog; ``tick`` is one pass, the loop calls it."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        catalog: Catalog,
        policy: ControlPolicy,
        live: dict[str, LiveDeployment],
        plan: PlanFn,
    ):
        self.store, self.metrics, self.policy = store, metrics, policy
        self.catalog = catalog  # refitted by `calibrate`; later plans (re-plans included) use it
        self.live = live  # shared with the service: deployment id -> its live side
        self._plan = plan
        self.observations: deque[Observation] = deque(maxlen=5000)  # measured vs predicted op latencies
        self.calibrations: deque[dict[str, Any]] = deque(maxlen=1000)  # every refit applied, for GET /v1/hardware
        # refits applied per device since start, multiplied; and that product when each plan was made
        # (plans not listed were made before any refit of this process: the shipped catalog)
        self.slowdown: dict[str, float] = {}
        self.plan_slowdown: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leading: Callable[[], bool] = lambda: True  # only the leader's loop acts (orchestrator.leader)
        self.rate_from_db = False  # several replicas: count every replica's runs, not this one's arrivals
        self.fence_lease: str | None = None  # several replicas: re-plans are recorded only under this lease

    # ------------------------------------------------------------------ the loop
    def start(self, interval_s: float) -> None:
        """Run ``tick`` every ``interval_s`` on a daemon thread until ``stop``."""
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the loop after its current pass."""
        self._stop.set()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            if self.leading():
                self.tick()

    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """One pass: refit the catalog, then one decision per deployment. A failure of either is
        logged and recorded, never raised, so one bad pass cannot stop the loop. Returns the re-plans."""
        try:
            self.calibrate()
        except Exception:  # noqa: BLE001 - logged and counted; the loop goes on
            dropped = len(self.observations)
            self.observations.clear()  # the samples that broke this pass would break every later one
            log.exception("online calibration failed; its %d observations are dropped", dropped)
            self.metrics.calibration_failures.inc()
        replans = []
        for dep_id in list(self.live):
            try:
                replan = self.control_step(dep_id, now)
            except Exception as exc:  # noqa: BLE001 - the loop must survive one bad deployment
                log.exception("control step of deployment %s failed", dep_id)
                self.store.note_deployment(dep_id, f"control step failed: {type(exc).__name__}: {exc}")
                continue
            if replan is not None:
                replans.append(replan)
        return replans

    # ------------------------------------------------------------------ online calibration
    def plan_made(self, plan_id: str, slowdown: dict[str, float]) -> None:
        """Remember the refits in effect when a plan was made (``slowdown``, taken before planning), so
        its runs' records are compared with what the current catalog predicts, not the plan's old figure."""
        if slowdown:
            self.plan_slowdown[plan_id] = dict(slowdown)
            while len(self.plan_slowdown) > MAX_PLAN_SLOWDOWNS:  # the oldest plans' runs: compared as made first
                del self.plan_slowdown[next(iter(self.plan_slowdown))]

    def observe(self, records: Iterable[dict[str, Any]], plan_id: str | None = None) -> None:
        """Keep a succeeded run's op records (of the plan ``plan_id``) as evidence for the next refit."""
        from costmodels.online import observations_from_records

        made_with = self.plan_slowdown.get(plan_id or "", {})
        scale = {d: s / made_with.get(d, 1.0) for d, s in self.slowdown.items()}
        try:
            self.observations.extend(observations_from_records(records, scale))
        except Exception:  # noqa: BLE001 - a record we cannot read is no evidence; the run itself is fine
            log.exception("op records unusable for online calibration")
            self.metrics.calibration_failures.inc()

    def calibrate(self) -> dict[str, float]:
        """Refit device efficiencies from the observations gathered since the last refit; later plans
        (re-plans included) use the refitted catalog. Returns the factor applied per device."""
        from costmodels.online import refit

        catalog, applied = refit(self.catalog, list(self.observations))
        if applied:
            self.catalog = catalog
            self.observations.clear()  # they were measured against the old predictions
            for device, scale in applied.items():
                self.slowdown[device] = self.slowdown.get(device, 1.0) * scale
                eff = catalog.hardware[device].efficiency
                self.metrics.efficiency.labels(device, "compute").set(eff.compute)
                self.metrics.efficiency.labels(device, "memory").set(eff.memory)
                self.calibrations.append(
                    {
                        "at": utcnow().isoformat(),
                        "device": device,
                        "slowdown": scale,
                        "compute": eff.compute,
                        "memory": eff.memory,
                    }
                )
        return applied

    def calibration_history(self, device: str) -> list[dict[str, Any]]:
        """The refits applied to ``device`` since the daemon started: why its efficiencies differ
        from the shipped catalog."""
        return [{k: v for k, v in c.items() if k != "device"} for c in list(self.calibrations) if c["device"] == device]

    # ------------------------------------------------------------------ re-planning
    def measured_rate(self, live: LiveDeployment, now: float | None = None) -> float:
        """Arrivals per second over the policy's window."""
        now = time.monotonic() if now is None else now
        window = self.policy.window_s
        with live.lock:
            n = sum(1 for t in live.arrivals if now - t <= window)
        return n / window

    def stored_rate(self, dep_id: str) -> float:
        """Runs per second created over the policy's window on any replica (from the database)."""
        window = self.policy.window_s
        return self.store.runs_since(dep_id, utcnow() - dt.timedelta(seconds=window)) / window

    def control_step(self, dep_id: str, now: float | None = None) -> dict[str, Any] | None:
        """One decision for one deployment; returns the re-plan it made, if any. The dwell time runs
        from when a change was applied, so a slow scale-out does not eat into it."""
        from planner.plan import Plan

        at = time.monotonic() if now is None else now
        live = self.live.get(dep_id)
        if live is None or live.runner is None:
            return None
        ctx = self.store.deployment_context(dep_id)
        plan = ctx.plan
        rate = self.stored_rate(dep_id) if self.rate_from_db else self.measured_rate(live, at)
        self.metrics.arrival_rate.labels(ctx.graph_name).set(rate)
        if at - live.last_change < self.policy.min_dwell_s:
            return None
        reason = self._reason(live, plan, rate, at)
        if reason is None:
            return None
        planned = plan["rate_per_s"]
        new_rate = max(self.policy.min_rate_per_s, rate * self.policy.headroom)
        request = dict(ctx.request)
        new = self._plan(ctx.graph_id, request, new_rate)
        cap = new["plan"].get("max_rate_per_s")
        if not new["plan"]["feasible"] and cap and cap > planned:
            # more load than the inventory sustains: scale to the most it can carry, and say so
            reason += f"; capped at the inventory's highest sustainable rate, {cap:.3g}/s"
            new = self._plan(ctx.graph_id, request, cap * 0.99)
        if not new["plan"]["feasible"]:
            self.store.note_deployment(dep_id, f"re-plan at {new_rate:.3g}/s infeasible: {new['plan'].get('reason')}")
            live.last_change = at
            return None
        changes = plan_diff(plan, new["plan"])
        if not live.runner.scale_to(Plan.model_validate(new["plan"])):
            changes["applied"] = "placement changed: pools rebuilt"
            self.rebuild(dep_id, new["plan"])
        live.plan_id = new["id"]  # if the record is refused, the stored plan differs and sync follows it back
        try:
            self.store.record_replan(
                dep_id, reason, ctx.plan_id, new["id"], changes, pools_json(live.runner), self.fence_lease
            )
        except NotLeader as exc:  # stalled past the lease's ttl: the successor's decisions stand
            log.warning("%s", exc)
            return None
        self.metrics.replans.labels(ctx.graph_name, reason.split()[0] if reason.startswith("rate") else "sla").inc()
        self.metrics.set_deployment(ctx.graph_name, new["plan"], live.runner.graph.spec.sla)
        live.last_change = time.monotonic() if now is None else now
        return {"reason": reason, "plan_id": new["id"], "changes": changes}

    def _reason(self, live: LiveDeployment, plan: dict[str, Any], rate: float, now: float) -> str | None:
        """Why the deployment should be re-planned now, or None: rate out of the band, else p99 over the SLA."""
        planned, band = plan["rate_per_s"], self.policy.band
        if rate > planned * (1 + band):
            return f"rate {rate:.3g}/s above the planned {planned:.3g}/s (+{band:.0%} band)"
        if rate < planned / (1 + band) and planned > self.policy.min_rate_per_s * self.policy.headroom:
            return f"rate {rate:.3g}/s below the planned {planned:.3g}/s (-{band:.0%} band)"
        with live.lock:
            recent = sorted(ms for t, ms in live.latencies if now - t <= self.policy.window_s)
        if len(recent) >= self.policy.min_runs_for_latency:
            p = recent[min(len(recent) - 1, int(0.99 * len(recent)))]
            if p > plan["sla_ms"]:
                return f"p99 latency {p:.0f} ms above the SLA {plan['sla_ms']:.0f} ms"
        return None

    def rebuild(self, dep_id: str, plan_doc: dict[str, Any], drain_timeout_s: float = 60.0) -> None:
        """Apply a plan whose placement differs: start pools for it, switch new runs to them, then
        stop the old ones once the runs already on them have finished."""
        from planner.plan import Plan
        from workers.executor import GraphRunner

        live = self.live[dep_id]
        old = live.runner
        new = GraphRunner(
            old.graph,
            Plan.model_validate(plan_doc),
            data_dir=old.data_dir,
            model_dir=old.model_dir,
            index_dirs=old.index_dirs,
            egress=old.egress,
        )
        new.start()
        live.runner = new  # new runs use the new pools from here on
        end = time.monotonic() + drain_timeout_s
        while any(sum(u.in_flight) for u in old.pools.values()) and time.monotonic() < end:
            time.sleep(0.05)  # runs already on the old pools finish there
        old.shutdown()
