"""Several daemon replicas on one database: which one leads the control loop, and which runs died
with a replica.

Design (what a reader needs to know to operate it):

- **PostgreSQL: a lease row.** Table ``leases`` holds ``leader`` (the replica that runs the control
  loop, brings deployments up and applies re-plans) and one ``replica:<id>`` row per live daemon
  process (its heartbeat). Every ``every_s`` (2 s) each replica renews its heartbeat and tries
  ``UPDATE leases SET holder = me, expires_at = now() + ttl WHERE name = 'leader' AND (holder = me OR
  expires_at < now())`` (an ``INSERT … ON CONFLICT DO NOTHING`` when the row is missing); the one
  whose statement changes a row leads until its lease expires (``ttl_s``, 10 s). Times are the
  database's clock (``now()``), so replicas on hosts with skewed clocks agree. A killed leader is
  replaced within ``ttl_s + every_s`` (12 s); one stopped cleanly releases its rows at once. Leader
  writes are fenced: a re-plan is recorded only in a transaction that finds this replica's lease
  unexpired and locks its row (``Store.record_replan(fence_lease=…)``), so a leader stalled past its
  ttl cannot record a re-plan after a successor took over (``NotLeader``; its own pools then follow
  the stored plan back).
- **What every replica does, leader or not**: serves the whole API from the database; executes the
  runs it accepts on replica pools of its own, started from the deployment's stored plan (the
  runtime does not name its Ray actors, so pools are never re-attached across processes: a replica
  that takes over, or restarts, starts pools from the stored plan); follows the leader's re-plans
  (a changed ``plan_id``) and deletes (a deployment no longer ``ready``) — ``Service.sync``.
- **Runs of a dead replica**: each run row names the replica executing it. The leader marks
  ``interrupted`` every run still in flight whose replica's heartbeat has expired (or that names
  none), with an error that says so; runs on live replicas are left to finish. Events of runs are
  rows of ``events`` (written as they happen), so ``GET /v1/runs/{id}/events?after=N`` resumes on
  any replica.
- **SQLite: one process.** A SQLite file takes one daemon: the first holds an exclusive lock on
  ``<database>.lock`` (``flock``, released by the kernel when the process dies, even by SIGKILL)
  and is always the leader; a second ``hetagent serve`` on the same file is refused at start with
  ``ReplicaConflict``, which says to use PostgreSQL for several replicas.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import IO, Any

from sqlalchemy import delete, func, or_, select, update

from orchestrator.db import LeaseRow, RunRow, sqlite_path, utcnow
from orchestrator.store import ACTIVE_RUN_STATES, Store

log = logging.getLogger("hetagent.leader")

LEADER = "leader"
LEASE_TTL_S = float(os.environ.get("HETAGENT_LEASE_TTL_S", "10"))
LEASE_EVERY_S = float(os.environ.get("HETAGENT_LEASE_EVERY_S", "2"))
FORGET_REPLICA_S = 3600.0  # heartbeat rows of replicas gone this long are deleted


class ReplicaConflict(RuntimeError):
    """Another daemon process already uses this SQLite database."""


def new_replica_id() -> str:
    """Names one daemon process in leases, run rows and logs: host, pid and a random suffix."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def lock_sqlite(url: str) -> IO[bytes] | None:
    """Take the one-daemon lock of a SQLite database (held while the returned file stays open);
    raises ``ReplicaConflict`` when another process holds it."""
    import fcntl

    path = sqlite_path(url)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().decode(errors="replace").strip() or "another process"
        f.close()
        raise ReplicaConflict(
            f"the SQLite database {path} is in use by another hetagent daemon ({holder}); SQLite takes one "
            "daemon process: stop that one, use another --data-dir, or run several replicas on PostgreSQL "
            "(--database-url postgresql+psycopg://…)"
        ) from None
    f.truncate(0)
    f.write(f"{socket.gethostname()} pid {os.getpid()}".encode())
    f.flush()
    return f


class Leadership:
    """Renews this replica's heartbeat and leader lease on a thread; calls ``on_tick(leader, became)``
    after each renewal (``became``: leadership was gained by this renewal)."""

    def __init__(
        self,
        store: Store,
        on_tick: Callable[[bool, bool], None],
        ttl_s: float = LEASE_TTL_S,
        every_s: float = LEASE_EVERY_S,
    ):
        if every_s * 2 > ttl_s:
            raise ValueError(f"lease renewal every {every_s} s must be at most half its ttl ({ttl_s} s)")
        self.store, self.on_tick, self.ttl_s, self.every_s = store, on_tick, ttl_s, every_s
        self.replica_id = store.replica_id
        self.shared = store.url.startswith("postgresql")  # several replicas; else one process
        self.leader = not self.shared  # SQLite: the one process leads, started or not (tests drive it unstarted)
        self._stepped = False
        self.since: dt.datetime | None = None  # when this replica last became leader
        self._lock_file: IO[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Take the SQLite lock (or refuse), run the first renewal here (so a replica that leads has
        recovered before it says ready), then renew on a thread."""
        if not self.shared:
            self._lock_file = lock_sqlite(self.store.url)
        self.step()
        self._thread = threading.Thread(target=self._loop, name="leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and release this replica's rows, so another takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.every_s + 5)
        if self.shared:
            try:
                with self.store.sessions.begin() as s:
                    s.execute(delete(LeaseRow).where(LeaseRow.holder == self.replica_id))
            except Exception:  # noqa: BLE001 - the lease then expires by itself
                log.exception("releasing the leases of %s failed", self.replica_id)
        self.leader = False
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.step()

    def step(self) -> None:
        """One renewal. A database error makes this replica a follower until the next renewal that
        succeeds (it cannot know whether its lease still holds)."""
        was, self._stepped = self.leader and self._stepped, True
        if self.shared:
            try:
                self._renew(f"replica:{self.replica_id}")
                self.leader = self._renew(LEADER)
                if self.leader:
                    self.interrupt_orphans()
            except Exception:  # noqa: BLE001 - logged; the next renewal tries again
                log.exception("lease renewal failed; following until it succeeds")
                self.leader = False
        else:
            self.leader = True
        if self.leader and not was:
            self.since = utcnow()
            log.info("replica %s leads the control loop", self.replica_id)
        elif was and not self.leader:
            log.warning("replica %s lost the leader lease", self.replica_id)
        try:
            self.on_tick(self.leader, self.leader and not was)
        except Exception:  # noqa: BLE001 - the renewals must go on
            log.exception("replica sync failed")

    def _renew(self, name: str) -> bool:
        """Take or extend lease ``name`` for this replica; True when it holds it now."""
        from sqlalchemy.dialects.postgresql import insert

        ttl = dt.timedelta(seconds=self.ttl_s)
        with self.store.sessions.begin() as s:
            res: Any = s.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, or_(LeaseRow.holder == self.replica_id, LeaseRow.expires_at < func.now()))
                .values(holder=self.replica_id, expires_at=func.now() + ttl)
            )
            if res.rowcount == 1:
                return True
            res = s.execute(
                insert(LeaseRow)
                .values(name=name, holder=self.replica_id, expires_at=func.now() + ttl)
                .on_conflict_do_nothing(index_elements=["name"])
                .returning(LeaseRow.name)
            )
            return res.first() is not None

    def interrupt_orphans(self) -> int:
        """Runs in flight on replicas whose heartbeat expired become ``interrupted`` (the leader's
        job); returns how many."""
        alive = select(LeaseRow.holder).where(LeaseRow.name.like("replica:%"), LeaseRow.expires_at > func.now())
        with self.store.sessions.begin() as s:
            res: Any = s.execute(
                update(RunRow)
                .where(
                    RunRow.status.in_(ACTIVE_RUN_STATES),
                    or_(RunRow.replica.is_(None), RunRow.replica.not_in(alive)),
                )
                .values(
                    status="interrupted",
                    error="the daemon stopped while this run was in flight (its replica's heartbeat expired)",
                    finished_at=utcnow(),
                )
            )
            s.execute(
                delete(LeaseRow).where(
                    LeaseRow.name.like("replica:%"),
                    LeaseRow.expires_at < func.now() - dt.timedelta(seconds=FORGET_REPLICA_S),
                )
            )
        if res.rowcount:
            log.warning("%d runs of stopped replicas marked interrupted", res.rowcount)
        return int(res.rowcount)

    def status(self) -> dict[str, Any]:
        """What /readyz says about this replica."""
        return {"replica": self.replica_id, "leader": self.leader, "mode": "lease" if self.shared else "single"}
