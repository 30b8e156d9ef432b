"""Persistence of the daemon's state: every query and write the daemon makes, the group-commit writer
that batches run writes, and the JSON documents the API returns for stored rows.

Why a layer of its own: the request layer (orchestrator.service) and the control loop
(orchestrator.control) read and write the same rows; keeping the SQL here gives one place that
knows the schema (orchestrator.db) and the transaction boundaries, and one exception type,
``StorageError``, for a database that refuses or loses a write, so callers can answer 503 and
retry instead of failing with a 500 or hanging. The store knows nothing of HTTP: missing rows are
``None``, and what that means for a request is the service's decision.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from orchestrator.db import (
    DeploymentRow,
    EventRow,
    GraphRow,
    LeaseRow,
    OpRecordRow,
    PlanRow,
    ReplanRow,
    RunRow,
    new_id,
    open_database,
    sqlite_path,
    utcnow,
)

log = logging.getLogger("hetagent.store")

ACTIVE_RUN_STATES = ("queued", "running")
FINAL_RUN_STATES = ("succeeded", "failed", "cancelled", "interrupted")
LIVE_DEPLOYMENT_STATES = ("starting", "ready")  # a graph has at most one deployment in these
STOPPING_DEPLOYMENT_STATES = ("draining", "stopped")
STORAGE_RETRY_AFTER_S = 5  # what a 503 for a refused write tells the client to wait
OUTCOME_RETRY_EVERY_S = 1.0  # a run outcome the database refused is tried again this often ...
OUTCOME_RETRY_FOR_S = 3600.0  # ... for this long, then given up (logged): the row stays as it is

_RUNS = cast(Table, RunRow.__table__)  # typed FromClause; a declarative class's table is a Table
RUN_INSERT = insert(_RUNS)
RUN_FINISH = (
    update(_RUNS)
    .where(_RUNS.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        error=bindparam("b_error"),
        finished_at=bindparam("b_finished_at"),
        events=bindparam("b_events"),
        outputs=bindparam("b_outputs"),
        e2e_ms=bindparam("b_e2e_ms"),
        notes=bindparam("b_notes"),
    )
)
# only a run still in flight: never over an outcome stored meanwhile (``Store.store_unstored``); equalities,
# not IN, since an expanding IN cannot take the writer's executemany
RUN_FAIL = (
    update(_RUNS)
    .where(_RUNS.c.id == bindparam("b_id"), or_(*(_RUNS.c.status == s for s in ACTIVE_RUN_STATES)))
    .values(status="failed", error=bindparam("b_error"), finished_at=bindparam("b_finished_at"))
)
OP_RECORD_INSERT = insert(cast(Table, OpRecordRow.__table__))
EVENT_INSERT = insert(cast(Table, EventRow.__table__))


class StorageError(Exception):
    """The database refused or lost a write: the caller answers 503 (retry later), never a 500."""


class NotLeader(RuntimeError):
    """A leader-only write from a replica whose lease has passed to another (it stalled past its ttl)."""


class StorageFull(StorageError):
    """The disk holding the database is full (SQLite's SQLITE_FULL, PostgreSQL's disk_full, ENOSPC):
    the caller answers 507; writes succeed again once space is freed."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether a database error (or its DBAPI cause) says the disk is full."""
    cause = getattr(exc, "orig", None) or exc
    if getattr(cause, "sqlite_errorcode", None) == 13 or getattr(cause, "sqlstate", None) == "53100":
        return True  # SQLITE_FULL; PostgreSQL's disk_full
    text = str(cause).lower()
    return "database or disk is full" in text or "no space left on device" in text


def storage_error(exc: BaseException) -> StorageError:
    """A ``StorageError`` that names the database's own complaint, without SQLAlchemy's SQL dump."""
    cause = getattr(exc, "orig", None) or exc
    cls = StorageFull if isinstance(exc, StorageFull) or is_disk_full(exc) else StorageError
    return cls(f"{type(cause).__name__}: {cause}".strip())


class GroupCommitWriter:
    """One thread applies queued writes in shared transactions (group commit): under load, one commit
    (and one ``executemany`` per statement) covers many runs instead of one each. ``write`` returns
    once its rows are committed, so nothing acknowledged to a client can be lost; when the database
    refuses them, ``write`` raises ``StorageError`` at once rather than leaving its caller waiting."""

    def __init__(self, engine: Engine, max_batch: int = 512):
        self.engine, self.max_batch = engine, max_batch
        self._q: queue.Queue[_Write | None] = queue.Queue()
        self._lock = threading.Lock()  # orders `write` against `close`: nothing is queued behind the sentinel
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="db-writer", daemon=True)
        self._thread.start()

    def write(self, *rows: tuple[Any, dict]) -> None:
        """Commit ``(statement, parameters)`` pairs atomically; statements should be shared objects so
        they batch with other callers' rows. Raises ``StorageError`` when they are not committed."""
        item = _Write(rows)
        with self._lock:
            if self._closed:
                raise StorageError("the database writer is closed (the daemon is stopping)")
            self._q.put(item)
        item.done.wait()
        if item.error is not None:
            raise item.error

    def submit(self, *rows: tuple[Any, dict]) -> None:
        """Queue rows and return at once (a run's events as they happen: they batch with the next
        commit, and a refused one is logged, not raised; the run's outcome is written with ``write``)."""
        with self._lock:
            if not self._closed:
                self._q.put(_Write(rows))

    def close(self) -> None:
        """Commit what is queued, then stop; later writes fail with ``StorageError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._q.put(None)
        self._thread.join(timeout=10)

    def _apply(self, items: list[_Write]) -> None:
        groups: dict[int, tuple[Any, list[dict]]] = {}
        for item in items:
            for stmt, params in item.rows:
                groups.setdefault(id(stmt), (stmt, []))[1].append(params)
        with self.engine.begin() as conn:  # insertion order of groups keeps inserts before updates
            for stmt, batch_params in groups.values():
                conn.execute(stmt, batch_params)

    def _commit(self, batch: list[_Write]) -> None:
        try:
            self._apply(batch)
        except Exception:  # noqa: BLE001 - retry one by one so one bad write fails alone
            for item in batch:
                try:
                    self._apply([item])
                except Exception as exc:  # noqa: BLE001 - handed to the caller of `write`
                    item.error = storage_error(exc)
                    log.error("database write refused: %s", item.error)

    def _loop(self) -> None:
        try:
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
                    self._commit(batch)
                except BaseException:  # not a refused write (those are handled per item): the thread ends
                    for item in batch:
                        item.error = item.error or StorageError("the database writer stopped")
                    raise
                finally:
                    for item in batch:
                        item.done.set()
        finally:  # stopped (or died): refuse later writes, fail any still queued, so none waits forever
            with self._lock:
                self._closed = True
            while True:
                try:
                    left = self._q.get_nowait()
                except queue.Empty:
                    break
                if left is not None:
                    left.error = StorageError("the database writer stopped")
                    left.done.set()


class _Write:
    """One caller's rows, the event it waits on, and the error it gets if they are not committed."""

    __slots__ = ("rows", "done", "error")

    def __init__(self, rows: tuple[tuple[Any, dict], ...]):
        self.rows = rows
        self.done = threading.Event()
        self.error: StorageError | None = None


@dataclass(frozen=True)
class DeploymentContext:
    """What bringing up or re-planning a deployment needs, read in one go."""

    id: str
    graph_id: str
    graph_name: str
    spec: dict[str, Any]
    plan_id: str
    plan: dict[str, Any]
    request: dict[str, Any]


def graph_json(row: GraphRow) -> dict[str, Any]:
    """The API's graph document (``GraphOut``)."""
    return {
        "id": row.id,
        "name": row.name,
        "version": row.version,
        "created_at": row.created_at.isoformat(),
        "spec": row.spec,
    }


def plan_json(row: PlanRow) -> dict[str, Any]:
    """The API's plan document (``PlanOut``)."""
    return {
        "id": row.id,
        "graph_id": row.graph_id,
        "created_at": row.created_at.isoformat(),
        "request": row.request,
        "plan": row.plan,
    }


RUN_FIELDS = (
    "id",
    "graph_id",
    "deployment_id",
    "status",
    "inputs",
    "outputs",
    "error",
    "e2e_ms",
    "notes",
    "created_at",
    "finished_at",
)


def run_json(values: Mapping[str, Any], records: list[dict]) -> dict[str, Any]:
    """The API's run document (``RunOut``) from a run's column values, stored or not yet stored."""
    doc = {k: values.get(k) for k in RUN_FIELDS}
    doc["created_at"] = values["created_at"].isoformat()
    doc["finished_at"] = values["finished_at"].isoformat() if values.get("finished_at") else None
    doc["notes"] = list(values.get("notes") or [])
    return {**doc, "records": records}


class Store:
    """The daemon's database: one object per daemon, shared by the service and the control loop."""

    def __init__(self, url: str, replica_id: str = ""):
        self.url = url
        self.replica_id = replica_id  # this daemon process: written on the runs it executes
        self.sessions = open_database(url)
        self.writer = GroupCommitWriter(self.sessions.kw["bind"])
        # run outcomes the database refused (run id -> since, fields, records), stored once it takes writes
        self._unstored: dict[str, tuple[float, dict[str, Any], list[dict]]] = {}
        self._unstored_lock = threading.Lock()
        self._stop = threading.Event()
        self._retrier: threading.Thread | None = None

    def close(self) -> None:
        """Commit queued writes and stop the writer (the daemon is stopping); one last try for the run
        outcomes still unstored."""
        self._stop.set()
        if self._retrier is not None:
            self._retrier.join(timeout=10)
        self.store_unstored()
        self.writer.close()

    def location(self) -> str:
        """Where the data lives, for messages: the SQLite file, or the database server."""
        path = sqlite_path(self.url)
        if path is not None:
            return f"the database {path}"
        return "the database server" if "://" in self.url else "the database"

    def ping(self) -> None:
        """One round trip to the database (/readyz); raises SQLAlchemyError when it does not answer."""
        with self.sessions() as s:
            s.execute(select(1))

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One atomic unit over several of the ``s``-taking calls below (check, then insert)."""
        with self.sessions.begin() as s:
            yield s

    # ------------------------------------------------------------------ recovery
    def recover(self) -> list[str]:
        """After a restart of the only daemon (SQLite): runs left in flight become ``interrupted``
        (never lost, never left ``running``); deployments that were up go back to ``starting``. Returns
        those to bring up. Several replicas (PostgreSQL) use ``orchestrator.leader`` instead: only
        the runs of replicas whose heartbeat expired are interrupted."""
        with self.sessions.begin() as s:
            s.execute(
                update(RunRow)
                .where(RunRow.status.in_(ACTIVE_RUN_STATES))
                .values(
                    status="interrupted", error="the daemon stopped while this run was in flight", finished_at=utcnow()
                )
            )
            rows = s.scalars(select(DeploymentRow).where(DeploymentRow.state.in_(LIVE_DEPLOYMENT_STATES))).all()
            for d in rows:
                d.state, d.detail, d.updated_at = "starting", "restarting after a daemon restart", utcnow()
            return [d.id for d in rows]

    # ------------------------------------------------------------------ graphs
    def add_graph(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Store a graph as the next version of ``name``."""
        with self.sessions.begin() as s:
            version = 1 + (s.scalar(select(func.max(GraphRow.version)).where(GraphRow.name == name)) or 0)
            row = GraphRow(id=new_id("g"), name=name, version=version, spec=spec)
            s.add(row)
        return graph_json(row)

    @staticmethod
    def graph_row(s: Session, graph_id: str) -> GraphRow | None:
        """The graph, unless it is missing or deleted."""
        row = s.get(GraphRow, graph_id)
        return None if row is None or row.deleted else row

    def get_graph(self, graph_id: str) -> dict[str, Any] | None:
        """The graph document, or None when missing or deleted."""
        with self.sessions() as s:
            row = self.graph_row(s, graph_id)
            return graph_json(row) if row is not None else None

    def list_graphs(self) -> list[dict[str, Any]]:
        """Summaries (no spec) of the graphs not deleted, oldest first."""
        with self.sessions() as s:
            rows = s.scalars(select(GraphRow).where(GraphRow.deleted.is_(False)).order_by(GraphRow.created_at)).all()
            return [{k: v for k, v in graph_json(r).items() if k != "spec"} for r in rows]

    def graph_name(self, graph_id: str) -> str | None:
        """The graph's name, deleted or not (metrics are labelled by it)."""
        with self.sessions() as s:
            row = s.get(GraphRow, graph_id)
            return row.name if row is not None else None

    @staticmethod
    def mark_graph_deleted(s: Session, row: GraphRow) -> None:
        """Soft delete: plans, runs and re-plans keep referring to the row."""
        row.deleted = True

    # ------------------------------------------------------------------ plans
    def add_plan(self, graph_id: str, request: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
        """Store a plan document, feasible or not (an infeasible plan says why)."""
        with self.sessions.begin() as s:
            row = PlanRow(id=new_id("p"), graph_id=graph_id, request=request, plan=plan, feasible=plan["feasible"])
            s.add(row)
        return plan_json(row)

    @staticmethod
    def plan_row(s: Session, graph_id: str, plan_id: str) -> PlanRow | None:
        """The plan, if it exists and belongs to ``graph_id``."""
        row = s.get(PlanRow, plan_id)
        return row if row is not None and row.graph_id == graph_id else None

    @staticmethod
    def newest_feasible_plan(s: Session, graph_id: str) -> PlanRow | None:
        """The plan a deployment applies when none is named."""
        return s.scalars(
            select(PlanRow)
            .where(PlanRow.graph_id == graph_id, PlanRow.feasible.is_(True))
            .order_by(PlanRow.created_at.desc())
        ).first()

    def get_plan(self, graph_id: str, plan_id: str) -> dict[str, Any] | None:
        """The plan document, or None."""
        with self.sessions() as s:
            row = self.plan_row(s, graph_id, plan_id)
            return plan_json(row) if row is not None else None

    def find_plan(self, plan_id: str) -> dict[str, Any] | None:
        """A plan by its id alone (routes under /v1/plans/{id}), or None."""
        with self.sessions() as s:
            row = s.get(PlanRow, plan_id)
            return plan_json(row) if row is not None else None

    def set_plan_simulation(self, plan_id: str, simulation: dict[str, Any]) -> dict[str, Any]:
        """Add a simulation to a plan made without one. If another request (or daemon replica) stored one
        first, that one stays: every reader sees the same simulation."""
        with self.sessions.begin() as s:
            row = s.get(PlanRow, plan_id, with_for_update=True)
            if row is None:
                raise StorageError(f"plan {plan_id} vanished")  # plans are never deleted
            if row.plan.get("simulation") is None:
                row.plan = {**row.plan, "simulation": simulation}  # a new dict: JSON columns track assignment
            return plan_json(row)

    def list_plans(self, graph_id: str) -> list[dict[str, Any]] | None:
        """Summaries of the graph's plans, oldest first; None when the graph is missing."""
        with self.sessions() as s:
            if self.graph_row(s, graph_id) is None:
                return None
            rows = s.scalars(select(PlanRow).where(PlanRow.graph_id == graph_id).order_by(PlanRow.created_at)).all()
            return [
                {
                    "id": r.id,
                    "created_at": r.created_at.isoformat(),
                    "request": r.request,
                    "feasible": r.feasible,
                    "tco_usd_per_hour": r.plan.get("tco_usd_per_hour"),
                    "predicted_e2e_ms": r.plan.get("predicted_e2e_ms"),
                }
                for r in rows
            ]

    # ------------------------------------------------------------------ deployments
    @staticmethod
    def live_deployment(s: Session, graph_id: str) -> DeploymentRow | None:
        """The graph's deployment that is starting or ready, if any."""
        return s.scalars(
            select(DeploymentRow).where(
                DeploymentRow.graph_id == graph_id, DeploymentRow.state.in_(LIVE_DEPLOYMENT_STATES)
            )
        ).first()

    def deployment_states(self) -> dict[str, tuple[str, str]]:
        """Deployment id -> (state, plan id) of every deployment starting or ready: what each replica
        serves (``Service.sync``)."""
        with self.sessions() as s:
            rows = s.execute(
                select(DeploymentRow.id, DeploymentRow.state, DeploymentRow.plan_id).where(
                    DeploymentRow.state.in_(LIVE_DEPLOYMENT_STATES)
                )
            ).all()
            return {r.id: (r.state, r.plan_id) for r in rows}

    @staticmethod
    def add_deployment(s: Session, graph_id: str, plan_id: str) -> str:
        """A new deployment in state ``starting``; its id."""
        row = DeploymentRow(id=new_id("d"), graph_id=graph_id, plan_id=plan_id, state="starting", detail="", pools={})
        s.add(row)
        return row.id

    def deployment_context(self, dep_id: str) -> DeploymentContext:
        """The deployment with its graph and current plan."""
        with self.sessions() as s:
            dep = s.get(DeploymentRow, dep_id)
            if dep is None:
                raise LookupError(f"no deployment {dep_id!r}")
            plan, graph = s.get(PlanRow, dep.plan_id), s.get(GraphRow, dep.graph_id)
            return DeploymentContext(dep.id, graph.id, graph.name, graph.spec, plan.id, plan.plan, plan.request)

    def set_deployment(self, dep_id: str, state: str, detail: str, **fields: Any) -> bool:
        """Move a deployment to ``state``. False (nothing written) when it was deleted meanwhile and
        ``state`` would bring it back. Raises ``StorageError`` when the database refuses."""
        try:
            with self.sessions.begin() as s:
                dep = s.get(DeploymentRow, dep_id)
                if dep is None:
                    return False
                if dep.state in STOPPING_DEPLOYMENT_STATES and state not in STOPPING_DEPLOYMENT_STATES:
                    return False
                dep.state, dep.detail, dep.updated_at = state, detail, utcnow()
                for k, v in fields.items():
                    setattr(dep, k, v)
                return True
        except SQLAlchemyError as exc:
            raise storage_error(exc) from exc

    def note_deployment(self, dep_id: str, note: str) -> None:
        """Say something about a deployment (its ``detail``) without changing its state."""
        with self.sessions.begin() as s:
            dep = s.get(DeploymentRow, dep_id)
            if dep is not None:
                dep.detail = note

    def get_deployment(self, graph_id: str, dep_id: str) -> dict[str, Any] | None:
        """The deployment document with every re-plan (``DeploymentOut``), or None."""
        with self.sessions() as s:
            row = s.get(DeploymentRow, dep_id)
            if row is None or row.graph_id != graph_id:
                return None
            replans = s.scalars(select(ReplanRow).where(ReplanRow.deployment_id == dep_id).order_by(ReplanRow.id)).all()
            return {
                "id": row.id,
                "graph_id": row.graph_id,
                "plan_id": row.plan_id,
                "state": row.state,
                "detail": row.detail,
                "pools": row.pools,
                "created_at": row.created_at.isoformat(),
                "updated_at": row.updated_at.isoformat(),
                "replans": [
                    {
                        "at": r.created_at.isoformat(),
                        "reason": r.reason,
                        "from_plan": r.old_plan_id,
                        "to_plan": r.new_plan_id,
                        "changes": r.changes,
                    }
                    for r in replans
                ],
            }

    def deployment_ids(self, graph_id: str) -> list[str] | None:
        """The graph's deployments, oldest first; None when the graph is missing."""
        with self.sessions() as s:
            if self.graph_row(s, graph_id) is None:
                return None
            return list(
                s.scalars(
                    select(DeploymentRow.id)
                    .where(DeploymentRow.graph_id == graph_id)
                    .order_by(DeploymentRow.created_at)
                ).all()
            )

    def record_replan(
        self,
        dep_id: str,
        reason: str,
        old_plan_id: str,
        new_plan_id: str,
        changes: dict[str, Any],
        pools: dict[str, Any],
        fence_lease: str | None = None,
    ) -> None:
        """A re-plan and the deployment's new plan and pools, in one transaction. With ``fence_lease``, only
        while this replica holds that lease: the row is read ``FOR UPDATE``, so a successor cannot take the
        lease between the check and the commit; NotLeader (nothing written) when it is another's or expired."""
        with self.sessions.begin() as s:
            if fence_lease is not None:
                held = s.execute(
                    select(LeaseRow.holder)
                    .where(
                        LeaseRow.name == fence_lease,
                        LeaseRow.holder == self.replica_id,
                        LeaseRow.expires_at > func.now(),
                    )
                    .with_for_update()
                ).first()
                if held is None:
                    raise NotLeader(
                        f"replica {self.replica_id} no longer holds the {fence_lease!r} lease: re-plan of "
                        f"deployment {dep_id} not recorded"
                    )
            s.add(
                ReplanRow(
                    deployment_id=dep_id,
                    reason=reason,
                    old_plan_id=old_plan_id,
                    new_plan_id=new_plan_id,
                    changes=changes,
                )
            )
            d = s.get(DeploymentRow, dep_id)
            d.plan_id, d.pools, d.updated_at = new_plan_id, pools, utcnow()

    # ------------------------------------------------------------------ runs
    def insert_run(self, head: dict[str, Any]) -> None:
        """Record a run as ``running`` before it starts (a crash then marks it ``interrupted``)."""
        self.writer.write(
            (RUN_INSERT, {**head, "status": "running", "notes": [], "events": [], "replica": self.replica_id})
        )

    def add_event(self, run_id: str, seq: int, doc: dict[str, Any]) -> None:
        """A run's event as it happens (not waited for): other replicas stream it from the table."""
        self.writer.submit((EVENT_INSERT, {"run_id": run_id, "seq": seq, "doc": doc}))

    def finish_run(self, run_id: str, fields: dict[str, Any], records: list[dict]) -> None:
        """A run's outcome, its per-op records and its last event (``end``), committed together before
        anyone is answered. When the database refuses them (``StorageError``), they are kept and tried
        again every ``OUTCOME_RETRY_EVERY_S`` until it takes them (an outage, a full disk), so a run
        accepted before the fault does not stay ``running`` once the database is back."""
        events = fields.get("events") or []
        last = [(EVENT_INSERT, {"run_id": run_id, "seq": len(events) - 1, "doc": events[-1]})] if events else []
        try:
            self.writer.write(
                (RUN_FINISH, {f"b_{k}": v for k, v in {"id": run_id, **fields}.items()}),
                *last,
                *[
                    (OP_RECORD_INSERT, {"run_id": run_id, "node": r["node"], "device": r["device"], "record": r})
                    for r in records
                ],
            )
        except StorageError:
            self._keep_unstored(run_id, fields, records)
            raise

    def _keep_unstored(self, run_id: str, fields: dict[str, Any], records: list[dict]) -> None:
        with self._unstored_lock:
            self._unstored[run_id] = (time.monotonic(), fields, records)
            if self._retrier is None and not self._stop.is_set():
                self._retrier = threading.Thread(target=self._retry_loop, name="db-outcome-retry", daemon=True)
                self._retrier.start()

    def _retry_loop(self) -> None:
        while not self._stop.wait(OUTCOME_RETRY_EVERY_S):
            self.store_unstored()

    def store_unstored(self) -> int:
        """Try again to store the run outcomes the database refused; how many were stored. Stops at
        the first refusal (the database is still down); gives up on one after ``OUTCOME_RETRY_FOR_S``."""
        stored = 0
        with self._unstored_lock:
            pending = list(self._unstored.items())
        for run_id, (since, fields, records) in pending:
            try:
                self._store_outcome(run_id, fields, records)
            except SQLAlchemyError as exc:
                if time.monotonic() - since > OUTCOME_RETRY_FOR_S:
                    log.error("gave up storing the outcome of run %s: %s", run_id, storage_error(exc))
                    with self._unstored_lock:
                        self._unstored.pop(run_id, None)
                    continue
                break
            except Exception:  # noqa: BLE001 - not the database's state (a value it cannot take): will not pass
                log.exception("gave up storing the outcome of run %s", run_id)
                with self._unstored_lock:
                    self._unstored.pop(run_id, None)
                continue
            with self._unstored_lock:
                self._unstored.pop(run_id, None)
            stored += 1
            log.warning("the outcome of run %s (%s) is stored now", run_id, fields.get("status"))
        return stored

    def _store_outcome(self, run_id: str, fields: dict[str, Any], records: list[dict]) -> None:
        """A refused outcome, in one transaction: the run's row, the events the writer could not add
        meanwhile, and its op records unless a write whose answer was lost already stored them."""
        with self.sessions.begin() as s:
            s.execute(RUN_FINISH, {f"b_{k}": v for k, v in {"id": run_id, **fields}.items()})
            have = set(s.scalars(select(EventRow.seq).where(EventRow.run_id == run_id)).all())
            events = fields.get("events") or []
            missing = [{"run_id": run_id, "seq": i, "doc": e} for i, e in enumerate(events) if i not in have]
            if missing:
                s.execute(EVENT_INSERT, missing)
            stored = s.scalar(select(func.count()).select_from(OpRecordRow).where(OpRecordRow.run_id == run_id))
            if records and not stored:
                s.execute(
                    OP_RECORD_INSERT,
                    [{"run_id": run_id, "node": r["node"], "device": r["device"], "record": r} for r in records],
                )

    def fail_run(self, run_id: str, error: str) -> None:
        """The smallest write that ends a run (after its full outcome could not be stored)."""
        self.writer.write((RUN_FAIL, {"b_id": run_id, "b_error": error, "b_finished_at": utcnow()}))

    def runs_since(self, dep_id: str, since: Any) -> int:
        """How many runs of the deployment were created at or after ``since`` (by any replica)."""
        with self.sessions() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(RunRow)
                    .where(RunRow.deployment_id == dep_id, RunRow.created_at >= since)
                )
                or 0
            )

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run document with its per-op records, or None."""
        with self.sessions() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                return None
            records = s.scalars(select(OpRecordRow).where(OpRecordRow.run_id == run_id).order_by(OpRecordRow.id)).all()
            return run_json({k: getattr(row, k) for k in RUN_FIELDS}, [r.record for r in records])

    def run_events(self, run_id: str, after: int = 0) -> tuple[list[dict], str] | None:
        """A stored run's events from index ``after`` on, and its status; None when there is no such
        run. Events are read from the events table (written as they happen, by whichever replica runs
        it); a run finished before that table existed has them only in its row."""
        with self.sessions() as s:
            status = s.scalar(select(RunRow.status).where(RunRow.id == run_id))
            if status is None:
                return None
            docs = list(
                s.scalars(
                    select(EventRow.doc).where(EventRow.run_id == run_id, EventRow.seq >= after).order_by(EventRow.seq)
                ).all()
            )
            if not docs and status in FINAL_RUN_STATES:
                stored = s.scalar(select(RunRow.events).where(RunRow.id == run_id)) or []
                docs = list(stored[after:])
            return docs, status
