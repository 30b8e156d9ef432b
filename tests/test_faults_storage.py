"""Storage faults under a real `hetagent serve` (tests/support/daemon.py), with real processes and real
failures, no mocks:

- the daemon is SIGKILLed while many clients write (the group-commit writer batching their rows):
  on disk no run is half written, and every write a client was acknowledged (2xx) is there after a
  restart on the same data dir;
- its PostgreSQL stops for 10 s (``pg_ctl stop``, then ``start``): requests get 503 problem+json with
  Retry-After, nothing acknowledged is lost, runs that ended during the outage are stored once the
  database is back, and the daemon serves again without a restart;
- its data dir (SQLite) runs out of space (a small tmpfs mounted on it, filled by a file): writes get a
  507 problem+json naming the disk, reads go on, ``PRAGMA integrity_check`` is ok, and once space is
  freed writes succeed again.

Each test prints its figures (acknowledged vs found, 503s, time to resume) for docs/reliability.md;
pass/fail never depends on a timing beyond generous deadlines.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemon import Daemon, deploy, wait_until as _until
from tests.support.postgres import PostgresServer, postgres_server  # noqa: F401  (a pytest fixture)
from tests.test_daemon import SLOW_GRAPH

FINAL = {"succeeded", "failed", "cancelled", "interrupted"}
ENV = {"HETAGENT_RATE_LIMIT_PER_S": "0", "HETAGENT_CONTROL_BAND": "1e9", "HETAGENT_CONTROL_DWELL_S": "1e9"}


def _graph(name: str) -> str:
    """Two transform nodes: ``wait`` sleeps ``inputs.seconds``, ``redact`` masks e-mail addresses."""
    return SLOW_GRAPH.replace("name: slow", f"name: {name}")


def _deploy(c: httpx.Client, name: str) -> str:
    return deploy(c, _graph(name))[0]


def _is_problem(r: httpx.Response) -> bool:
    return r.headers.get("content-type", "").startswith("application/problem+json")


# ----------------------------------------------------------------------------- load with a ledger


@dataclass
class Ledger:
    """What the clients were told: acknowledged graphs and runs, and every other answer."""

    graphs: dict[str, dict] = field(default_factory=dict)  # id -> spec name/version as answered
    runs_done: dict[str, dict] = field(default_factory=dict)  # sync runs answered 200: id -> run document
    runs_accepted: set[str] = field(default_factory=set)  # runs answered 2xx (sync or async)
    answers: list[tuple[float, str, int, dict[str, str], Any]] = field(default_factory=list)  # (t, what, code, ...)
    errors: list[tuple[float, str, str]] = field(default_factory=list)  # transport errors: (t, what, error)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Load:
    """``clients`` threads writing as fast as they can: new graphs, sync runs, async runs (each answer
    recorded in a ``Ledger``), until ``stop()``."""

    def __init__(self, d: Daemon, gid: str, clients: int, seconds: str = "0", seed: int = 0):
        self.d, self.gid, self.seconds = d, gid, seconds
        self.ledger = Ledger()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(seed + i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(60)

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        with self.d.client(timeout_s=30, limits=httpx.Limits(max_connections=1)) as c:
            n = 0
            while not self.stopped.is_set():
                n += 1
                what = rng.choices(["graph", "sync", "async"], weights=[1, 3, 2])[0]
                t = time.monotonic()
                try:
                    if what == "graph":
                        r = c.post(
                            "/v1/graphs",
                            content=_graph(f"acked-{seed}-{n}"),
                            headers={"Content-Type": "application/yaml"},
                        )
                    else:
                        text = f"client {seed} run {n}: mail c{seed}n{n}@example.com"
                        r = c.post(
                            f"/v1/graphs/{self.gid}/runs",
                            json={"inputs": {"text": text, "seconds": self.seconds}, "mode": what, "timeout_s": 60},
                        )
                except httpx.HTTPError as exc:
                    with self.ledger.lock:
                        self.ledger.errors.append((t, what, f"{type(exc).__name__}: {exc}"))
                    time.sleep(0.05)  # the daemon is gone or restarting
                    continue
                body: Any = r.json() if r.headers.get("content-type", "").endswith("json") else r.text
                with self.ledger.lock:
                    self.ledger.answers.append((t, what, r.status_code, dict(r.headers), body))
                    if r.status_code == 201 and what == "graph":
                        self.ledger.graphs[body["id"]] = {"name": body["spec"]["metadata"]["name"]}
                    elif r.status_code in (200, 202) and what != "graph":
                        self.ledger.runs_accepted.add(body["id"])
                        if r.status_code == 200:
                            self.ledger.runs_done[body["id"]] = body
                if r.status_code >= 500:
                    time.sleep(0.05)


# ----------------------------------------------------------------------------- SQLite on disk


def _rows(db: Path, sql: str, *args: Any) -> list[tuple]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _check_runs_whole(db: Path, nodes: int) -> dict[str, int]:
    """Every run row is whole: one in flight has no outcome, no per-op record and no ``end`` event;
    one that succeeded has its outputs, finish time, one record per node and its ``end`` event; one
    that ended otherwise has its error. Returns the count of rows by status."""
    (ok,) = _rows(db, "PRAGMA integrity_check")[0]
    assert ok == "ok", ok
    records = dict(_rows(db, "SELECT run_id, count(*) FROM op_records GROUP BY run_id"))
    ends = {r for (r,) in _rows(db, "SELECT run_id FROM events WHERE json_extract(doc, '$.event') = 'end'")}
    orphans = _rows(db, "SELECT count(*) FROM op_records WHERE run_id NOT IN (SELECT id FROM runs)")[0][0]
    orphans += _rows(db, "SELECT count(*) FROM events WHERE run_id NOT IN (SELECT id FROM runs)")[0][0]
    assert orphans == 0, f"{orphans} records or events of runs that are not stored"
    counts: dict[str, int] = {}
    for run_id, status, outputs, error, finished, e2e in _rows(
        db, "SELECT id, status, outputs, error, finished_at, e2e_ms FROM runs"
    ):
        counts[status] = counts.get(status, 0) + 1
        where = f"run {run_id} ({status})"
        if status in ("queued", "running"):
            assert outputs is None and finished is None and e2e is None, where
            assert run_id not in records and run_id not in ends, f"{where}: half of its outcome is stored"
        elif status == "succeeded":
            assert outputs is not None and json.loads(outputs) and finished is not None and e2e is not None, where
            assert records.get(run_id) == nodes, f"{where}: {records.get(run_id, 0)} of {nodes} op records"
            assert run_id in ends, f"{where}: no end event"
        else:
            assert status in FINAL and error and finished is not None, where
    return counts


def _run_ok(c: httpx.Client, gid: str, timeout_s: float = 240) -> dict:
    """A sync run that succeeds, retried while the deployment comes back (409, 503) after a restart."""

    answers: list[httpx.Response] = []

    def attempt() -> dict | None:
        answers.append(c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "x@y.org", "seconds": "0"}}))
        return answers[-1].json() if answers[-1].status_code == 200 else None

    try:
        run = _until(attempt, timeout_s, 0.5)
    except AssertionError as exc:
        last = f"{answers[-1].status_code} {answers[-1].text[:1000]}" if answers else "none"
        raise AssertionError(f"{exc}; the last answer: {last}") from None
    assert run["status"] == "succeeded" and run["outputs"] == {"clean": "[EMAIL]"}, run
    return run


def _kill_at_a_commit(d: Daemon, timeout_s: float = 10.0) -> float:
    """SIGKILL the daemon the moment its SQLite write-ahead log changes (the writer is committing a
    batch: a commit appends its pages there); the milliseconds from seeing the change to the kill."""
    assert d.proc is not None
    wal = d.sqlite_path().with_name(d.sqlite_path().name + "-wal")
    last, deadline = os.stat(wal).st_mtime_ns, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = os.stat(wal).st_mtime_ns
        if now != last:
            seen = time.perf_counter()
            os.killpg(d.proc.pid, signal.SIGKILL)  # the daemon and its local Ray, as Daemon.kill does
            sent_ms = (time.perf_counter() - seen) * 1000
            d.kill()  # reaps it
            return sent_ms
    raise AssertionError(f"no write to {wal} in {timeout_s} s")


def test_sigkill_during_group_commits_keeps_every_acknowledged_write(tmp_path):
    """SIGKILL at a random moment under 12 writing clients (HETAGENT_FAULT_ROUNDS times, default 1),
    then a restart on the same data dir."""
    seed = int(os.environ.get("HETAGENT_FAULT_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    figures = [f"seed {seed}"]
    with Daemon(tmp_path / "data", env=ENV) as d:
        db = d.sqlite_path()
        with d.client() as c:
            gid = _deploy(c, "killed")
        for round_ in range(1, int(os.environ.get("HETAGENT_FAULT_ROUNDS", "1")) + 1):
            with Load(d, gid, clients=12, seconds="0.05", seed=100 * round_) as load:
                _until(lambda: len(load.ledger.runs_done) >= 20, 60, 0.05)  # the writer is busy
                time.sleep(rng.uniform(0.0, 1.5))
                since_write_ms = _kill_at_a_commit(d)
                killed_at = time.monotonic()
            ledger = load.ledger
            assert not [a for a in ledger.answers if a[2] >= 300], "a write refused before the kill"
            assert not [a for a in ledger.answers if a[0] > killed_at], "an answer from a killed daemon"
            # on disk, before any recovery: whole rows only, and every acknowledged write
            counts = _check_runs_whole(db, nodes=2)
            stored_graphs = {r for (r,) in _rows(db, "SELECT id FROM graphs")}
            stored_runs = dict(_rows(db, "SELECT id, status FROM runs"))
            assert set(ledger.graphs) <= stored_graphs, set(ledger.graphs) - stored_graphs
            assert ledger.runs_accepted <= set(stored_runs), ledger.runs_accepted - set(stored_runs)
            for run_id, run in ledger.runs_done.items():
                assert stored_runs[run_id] == run["status"], (run_id, stored_runs[run_id], run["status"])
            ready_s = d.restart(kill=True)
            # after the restart: finished runs as they were answered, the ones in flight `interrupted`
            with d.client() as c:
                for run_id, run in ledger.runs_done.items():
                    got = c.get(f"/v1/runs/{run_id}").json()
                    assert (got["status"], got["outputs"], len(got["records"])) == (
                        run["status"],
                        run["outputs"],
                        len(run["records"]),
                    ), run_id
                for graph_id, g in ledger.graphs.items():
                    assert c.get(f"/v1/graphs/{graph_id}").json()["spec"]["metadata"]["name"] == g["name"]
                statuses = [c.get(f"/v1/runs/{run_id}").json()["status"] for run_id in ledger.runs_accepted]
                assert set(statuses) <= FINAL, set(statuses)
                _run_ok(c, gid)  # the deployment came back by itself
            figures.append(
                f"round {round_}: acknowledged {len(ledger.graphs)} graphs and {len(ledger.runs_accepted)} runs "
                f"({len(ledger.runs_done)} answered finished): all found after the kill; run rows on disk at the "
                f"kill {counts}; killed {since_write_ms:.2f} ms after a write to the WAL was seen; after the restart "
                f"{statuses.count('interrupted')} interrupted; ready again in {ready_s:.1f} s"
            )
        assert "running" not in _check_runs_whole(db, nodes=2)
    print("\n" + "\n".join(figures))


# ----------------------------------------------------------------------------- PostgreSQL outage

OUTAGE_S = 10.0


def test_database_outage_503s_then_resumes_without_restart(tmp_path, postgres_server: PostgresServer):  # noqa: F811
    import psycopg

    dsn = postgres_server.url.replace("postgresql+psycopg", "postgresql")
    with Daemon(tmp_path / "data", database_url=postgres_server.url, env=ENV) as d, d.client() as c:
        gid = _deploy(c, "outage")
        with Load(d, gid, clients=6, seconds="0.3") as load:
            _until(lambda: len(load.ledger.runs_done) >= 5, 60, 0.05)
            down_at = time.monotonic()
            postgres_server.stop("fast")
            time.sleep(OUTAGE_S / 2)
            readyz_down = httpx.get(f"{d.url}/readyz", timeout=30)  # a load balancer routes away meanwhile
            time.sleep(OUTAGE_S / 2)
            postgres_server.start()
            up_at = time.monotonic()

            def answered_after(what: str) -> bool:
                return any(a[0] > up_at and a[1] == what and a[2] < 300 for a in list(load.ledger.answers))

            _until(lambda: all(answered_after(w) for w in ("graph", "sync", "async")), 120, 0.1)
            resumed_s = time.monotonic() - up_at
            time.sleep(1.0)
            assert httpx.get(f"{d.url}/readyz", timeout=30).status_code == 200
        assert readyz_down.status_code == 503 and int(readyz_down.headers["retry-after"]) > 0, readyz_down.text
        assert readyz_down.json()["detail"] == "the database does not answer", readyz_down.text
        ledger, answers = load.ledger, load.ledger.answers
        assert ledger.errors == [], ledger.errors[:3]  # no reset connection, no timeout: an answer to each
        during = [a for a in answers if down_at <= a[0] < up_at]
        assert any(a[2] == 503 for a in during), "no 503 while the database was down"
        for _, what, code, headers, body in answers:
            if code >= 300:
                assert code == 503, (what, code, body)
                assert headers["content-type"].startswith("application/problem+json"), (what, body)
                assert int(headers["retry-after"]) > 0 and body["title"] == "storage unavailable", (what, body)
        unstored = [a for a in answers if a[2] == 503 and "could not be stored" in a[4]["detail"]]
        # nothing acknowledged is lost; runs that ended during the outage are stored once it is over
        for graph_id in ledger.graphs:
            assert c.get(f"/v1/graphs/{graph_id}").status_code == 200, graph_id
        for run_id, run in ledger.runs_done.items():
            got = c.get(f"/v1/runs/{run_id}").json()
            assert (got["status"], got["outputs"]) == (run["status"], run["outputs"]), run_id

        def stored_runs() -> dict[str, str]:
            with psycopg.connect(dsn) as con:
                return dict(con.execute("SELECT id, status FROM runs").fetchall())

        runs = _until(lambda: (r := stored_runs()) and not {"queued", "running"} & set(r.values()) and r, 60, 0.5)
        assert ledger.runs_accepted <= set(runs), ledger.runs_accepted - set(runs)
        assert {runs[a[4]["run_id"]] for a in unstored} <= {"succeeded"}, unstored[:3]
        _run_ok(c, gid)
        assert d.running() and d.starts == 1, "the daemon was restarted"
        first_ok_s = min(a[0] for a in answers if a[0] > up_at and a[2] < 300) - up_at
        print(
            f"\n{len(answers)} answers; while the database was down ({OUTAGE_S:.0f} s): {len(during)} answers, "
            f"{sum(a[2] == 503 for a in during)} of them 503 (every refusal a 503 problem+json with Retry-After); "
            f"{len(unstored)} runs ended during the outage (503 'could not be stored'), all stored as succeeded "
            f"after it; first 2xx {first_ok_s:.2f} s and every kind of write {resumed_s:.2f} s after the database "
            f"was back; acknowledged {len(ledger.graphs)} graphs and {len(ledger.runs_accepted)} runs, all found"
        )


# ----------------------------------------------------------------------------- disk full


@contextlib.contextmanager
def _small_disk(path: Path, size_mb: int) -> Iterator[None]:
    """A tmpfs of ``size_mb`` mounted on ``path``: a real file system that runs out of space (mounting
    needs root, which the test machine and CI have)."""
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True, text=True
    )
    if out.returncode != 0 and os.geteuid() != 0:
        pytest.skip(f"mounting a small tmpfs needs root: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> int:
    """Write ``path`` until its file system refuses (ENOSPC); the bytes written."""
    n, chunk = 0, b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        while chunk:
            try:
                n += f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk = chunk[: len(chunk) // 2]
    return n


def test_disk_full_answers_507_and_recovers_when_space_is_freed(tmp_path):
    data = tmp_path / "data"
    with _small_disk(data, 64):
        with Daemon(data, env=ENV, log_dir=tmp_path) as d, d.client() as c:
            db = d.sqlite_path()
            gid = _deploy(c, "full")
            before = _run_ok(c, gid)
            # a run in flight when the disk fills: it ends while nothing can be written
            caught = c.post(
                f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "e@f.io", "seconds": "3"}, "mode": "async"}
            ).json()["id"]
            filler = data / "filler"
            filled = _fill(filler)
            refused: list[httpx.Response] = []
            acked: list[str] = []
            for i in range(200):  # the WAL may have room left from earlier writes: write until the disk says no
                r = c.post("/v1/graphs", content=_graph(f"full-{i}"), headers={"Content-Type": "application/yaml"})
                if r.status_code == 201:
                    acked.append(r.json()["id"])
                elif len(refused := [*refused, r]) == 3:
                    break
            assert refused, "200 graphs stored on a full disk"
            run = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "x", "seconds": "0"}})
            for r in [*refused, run]:
                assert r.status_code == 507, (r.status_code, r.text)
                assert _is_problem(r) and int(r.headers["retry-after"]) > 0, r.headers
                problem = r.json()
                assert problem["title"] == "insufficient storage", problem
                assert "disk" in problem["detail"] and str(db) in problem["detail"], problem
            # reads go on, nothing stored is damaged, and the caught run's outcome is kept in memory
            assert c.get(f"/v1/runs/{before['id']}").json()["outputs"] == {"clean": "[EMAIL]"}
            assert all(c.get(f"/v1/graphs/{g}").status_code == 200 for g in acked)
            assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
            _until(lambda: c.get(f"/v1/runs/{caught}").json()["status"] in FINAL, 60)
            got = c.get(f"/v1/runs/{caught}").json()
            assert got["status"] == "succeeded" and any("not stored" in n for n in got["notes"]), got
            assert _rows(db, "SELECT status FROM runs WHERE id = ?", caught) == [("running",)]
            filler.unlink()  # space freed: writes succeed again, without a restart
            g = c.post("/v1/graphs", content=_graph("after-full"), headers={"Content-Type": "application/yaml"})
            assert g.status_code == 201, g.text
            _run_ok(c, gid)
            assert all(c.get(f"/v1/graphs/{g}").status_code == 200 for g in acked)
            # the outcome refused while the disk was full is stored now (whole: checked below)
            _until(lambda: _rows(db, "SELECT status FROM runs WHERE id = ?", caught) != [("running",)], 30)
            assert _rows(db, "SELECT status, json_extract(outputs, '$.clean') FROM runs WHERE id = ?", caught) == [
                ("succeeded", "[EMAIL]")
            ]
        # after a clean stop: the file is whole, and so is every run in it
        counts = _check_runs_whole(db, nodes=2)
        assert counts == {"succeeded": 3}, counts
    print(
        f"\nfilled {filled / 2**20:.1f} MiB of a 64 MiB tmpfs; {len(acked)} graphs stored after that (WAL room), "
        f"then {len(refused)} graph writes and 1 run refused with 507 naming the disk; integrity_check ok; "
        "writes and runs succeed again once the file is removed, and the run that ended meanwhile is stored"
    )


def test_postgres_disk_full_answers_507_and_recovers_when_space_is_freed(postgres_server):  # noqa: F811
    """PostgreSQL out of space: the daemon's database in a tablespace on a 24 MiB tmpfs, filled by a file. The
    WAL stays on the main disk (PostgreSQL PANICs when it cannot write WAL; a full data disk is the case a
    server survives): its tables cannot grow (sqlstate 53100). Graph writes get 507 problem+json naming the
    database server, reads go on, and writes succeed again once the file is removed, without a restart."""
    import tempfile

    import psycopg
    from fastapi.testclient import TestClient

    from orchestrator import auth
    from orchestrator.app import create_app
    from orchestrator.settings import Settings

    space = Path(tempfile.mkdtemp(prefix="hetagent-pg-space-"))  # pytest's tmp dirs are root-only (0700)
    pg = subprocess.run(["id", "-u", "postgres"], capture_output=True, text=True)
    uid = pg.stdout.strip() if pg.returncode == 0 else str(os.getuid())
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=24m,uid={uid},mode=0700", "tmpfs", str(space)], capture_output=True
    )
    if mounted.returncode != 0 and os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    assert mounted.returncode == 0, mounted.stderr
    admin = f"host=127.0.0.1 port={postgres_server.port} user=postgres dbname=postgres"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE small LOCATION '{space}'")
            conn.execute("CREATE DATABASE fulldisk TABLESPACE small")
        url = postgres_server.url.rsplit("/", 1)[0] + "/fulldisk"
        data = Path(tempfile.mkdtemp(prefix="hetagent-pg-data-"))
        app = create_app(Settings(data_dir=data, database_url=url, control_enabled=False, rate_limit_per_s=0))
        with TestClient(app) as c:
            key = auth.create_key(app.state.service.store.sessions, "admin")[1]
            c.headers["Authorization"] = f"Bearer {key}"
            yaml_body = {"Content-Type": "application/yaml"}
            first = c.post("/v1/graphs", content=_graph("before-full"), headers=yaml_body)
            assert first.status_code == 201, first.text
            filled = _fill(space / "filler")
            acked, refused = [], []
            for i in range(300):  # pages with room left take a few more rows: write until the disk says no
                r = c.post("/v1/graphs", content=_graph(f"full-{i}"), headers=yaml_body)
                if r.status_code == 201:
                    acked.append(r.json()["id"])
                elif len(refused := [*refused, r]) == 3:
                    break
            assert len(refused) == 3, f"{len(acked)} graphs stored on a full disk"
            for r in refused:
                assert r.status_code == 507, (r.status_code, r.text)
                assert _is_problem(r) and int(r.headers["retry-after"]) > 0, r.headers
                assert r.json()["title"] == "insufficient storage"
                assert "disk holding the database server is full" in r.json()["detail"], r.json()
            assert c.get(f"/v1/graphs/{first.json()['id']}").status_code == 200  # reads go on
            (space / "filler").unlink()  # space freed: writes succeed again, without a restart
            after = c.post("/v1/graphs", content=_graph("after-full"), headers=yaml_body)
            assert after.status_code == 201, after.text
            listed = {g["id"] for g in c.get("/v1/graphs").json()}
            assert {first.json()["id"], after.json()["id"], *acked} <= listed  # every acknowledged write is there
        print(
            f"\nPostgreSQL: filled {filled / 2**20:.1f} MiB of a 24 MiB tablespace; {len(acked)} graphs stored after "
            "that, then 3 graph writes refused with 507 naming the database server; writes succeed once freed"
        )
    finally:
        with contextlib.suppress(Exception), psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS fulldisk WITH (FORCE)")
            conn.execute("DROP TABLESPACE IF EXISTS small")
        subprocess.run(["umount", "-l", str(space)], check=False)
