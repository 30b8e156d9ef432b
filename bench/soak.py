"""Soak: N clients for D seconds against a real `hetagent serve` on loopback, with accounting.

The clients mix sync runs (POST /v1/graphs/{id}/runs, waiting), async runs (submit, then poll GET
/v1/runs/{id} or follow its Server-Sent Events until the run ends) and plan requests (POST plans)
on a deployed graph of cheap CPU nodes (transform, tool, vector_search; ``--graph`` for another).
Every run the daemon accepted (a 2xx with a run id) is counted, and at the end each is checked to
have reached exactly one terminal state: through the API (GET /v1/runs/{id}), in ``/metrics``
(``hetagent_runs_total`` by status sums to the runs accepted) and, once the daemon is stopped, in
its database read directly (one row, final status, one ``end`` event, no op record twice). Lost,
duplicated, stuck and inconsistent must all be 0; rejections (429, 503) are counted apart, not as
losses. The daemon's RSS is sampled from /proc; its slope (MiB/min, least squares over the second
half of the load) says whether memory is flat. Latency p50/p99 per minute and request kind.

Usage: python bench/soak.py [--clients 16] [--duration 600] [--json out.json] [--database-url URL]
       [--graph graph.yaml --inputs '{"text": "..."}'] [--mix sync=4,async_poll=2,async_sse=2,plan=1]
       [--tracemalloc DIR] [--env MALLOC_ARENA_MAX=4 ...]
--tracemalloc: the daemon dumps its allocations (bench/soak_trace.py; compare with
``python bench/soak_trace.py compare DIR``); --env: extra variables in the daemon's environment.
Exit status 1 when the accounting finds a run lost, duplicated, stuck or inconsistent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: tests.support is importable from the repo root
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from soak_accounting import (  # noqa: E402 - bench/ is sys.path[0] when run as a script
    FINAL,
    account,
    counter_by,
    latency_table,
    markdown,
    read_database,
    rss_summary,
)

from tests.support.daemon import Daemon  # noqa: E402

RUN_KINDS = ("sync", "async_poll", "async_sse")
KINDS = (*RUN_KINDS, "plan")
REJECTED = (429, 503)  # refusals a client is told to retry: counted apart, not losses
SOAK_INDEX_DOCS = 2000
SOAK_GRAPH = """
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: soak}
spec:
  sla: {e2e_ms: 2000}
  inputs: {text: {type: string}}
  nodes:
    - name: redact
      kind: transform
      function: workers.transforms:redact_pii
      inputs: {text: "{{ inputs.text }}"}
    - name: embed
      kind: transform
      function: tests.support.callables:hash_vector
      inputs: {text: "{{ nodes.redact.output }}", dimension: "64"}
    - name: search
      kind: vector_search
      index: soak
      dimension: 64
      top_k: 3
      index_size: 2000
      inputs: {vector: "{{ nodes.embed.output }}"}
    - name: check
      kind: tool
      function: workers.tools:run_tests
      inputs: {patch: "{{ nodes.redact.output }}"}
      expected: {latency_ms: 1}
  outputs: {clean: "{{ nodes.redact.output }}", hits: "{{ nodes.search.output }}", check: "{{ nodes.check.output }}"}
"""
SOAK_INPUTS = {"text": "call +1 415 555 0134 or mail a@b.com about the vector index"}


# ----------------------------------------------------------------------------- memory
def rss_mib(pid: int) -> float | None:
    """Resident set of one process (VmRSS), MiB; None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def group_rss_mib(pgid: int) -> float:
    """Resident sets of every process in a process group (the daemon and the local Ray it started), MiB."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                total += rss_mib(int(entry.name)) or 0.0
        except (OSError, ValueError, IndexError):
            continue
    return total


class TracedDaemon(Daemon):
    """The daemon under tracemalloc (``--tracemalloc``): bench/soak_trace.py dumps snapshots, then runs the CLI."""

    def command(self) -> list[str]:
        cmd = super().command()
        assert cmd[1:3] == ["-m", "orchestrator.cli"], cmd
        return [cmd[0], "-m", "bench.soak_trace", *cmd[3:]]


# ----------------------------------------------------------------------------- load
@dataclass
class Ledger:
    """What the clients saw, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: list[tuple[str, str]] = field(default_factory=list)
    client_final: dict[str, str] = field(default_factory=dict)
    plans: list[str] = field(default_factory=list)
    samples: list[tuple[str, float, float]] = field(default_factory=list)  # kind, end s since start, ms
    rejected: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    submit_failures: int = 0
    unresolved: list[str] = field(default_factory=list)  # async runs the client gave up waiting for

    def error(self, kind: str, what: str, detail: str, submit: bool = False) -> None:
        with self.lock:
            self.errors[(kind, what)] += 1
            self.submit_failures += submit
            if len(self.examples) < 10:
                self.examples.append(f"{kind}: {what}: {detail[:300]}")


class Load:
    """The clients: each a thread with its own API key (so the per-key rate limit is per client)."""

    def __init__(self, url: str, graph_id: str, inputs: dict[str, Any], args: argparse.Namespace):
        self.url, self.graph_id, self.inputs, self.args = url, graph_id, inputs, args
        self.ledger = Ledger()
        self.t0 = 0.0
        self.stop_at = 0.0
        weights = dict.fromkeys(KINDS, 0.0) | parse_mix(args.mix)
        self.kinds, self.weights = list(weights), list(weights.values())

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    def sample(self, kind: str, ms: float) -> None:
        with self.ledger.lock:
            self.ledger.samples.append((kind, self.now_s(), ms))

    def answered(self, kind: str, r: httpx.Response, submit: bool = False) -> bool:
        """True for a 2xx; a rejection or an error is counted (a 5xx on a submission may still have
        stored the run: a submit failure)."""
        if r.is_success:
            return True
        if r.status_code in REJECTED:
            with self.ledger.lock:
                self.ledger.rejected[(kind, r.status_code)] += 1
                self.ledger.submit_failures += submit and r.status_code == 503  # the run may be stored
            time.sleep(min(float(r.headers.get("Retry-After", "1") or 1), 5.0))
        else:
            self.ledger.error(kind, str(r.status_code), r.text, submit=submit and r.status_code >= 500)
        return False

    def client(self, key: str, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            while time.monotonic() < self.stop_at:
                kind = rng.choices(self.kinds, self.weights)[0]
                try:
                    if kind == "plan":
                        self.plan(c, rng)
                    else:
                        self.run(c, kind)
                except httpx.HTTPError as exc:
                    self.ledger.error(kind, type(exc).__name__, str(exc), submit=kind != "plan")

    def plan(self, c: httpx.Client, rng: random.Random) -> None:
        t = time.monotonic()
        r = c.post(f"/v1/graphs/{self.graph_id}/plans", json={"rate_per_s": rng.choice((1, 5, 20, 50))})
        if self.answered("plan", r):
            self.sample("plan", (time.monotonic() - t) * 1000)
            with self.ledger.lock:
                self.ledger.plans.append(r.json()["id"])

    def run(self, c: httpx.Client, kind: str) -> None:
        body: dict[str, Any] = {"inputs": self.inputs}
        if kind != "sync":
            body["mode"] = "async"
        t = time.monotonic()
        r = c.post(f"/v1/graphs/{self.graph_id}/runs", json=body)
        if not self.answered(kind, r, submit=True):
            return
        doc = r.json()
        run_id = doc["id"]
        with self.ledger.lock:
            self.ledger.accepted.append((run_id, kind))
        if kind == "sync" and doc["status"] in FINAL:
            status: str | None = doc["status"]
        else:
            if kind != "sync":
                self.sample("async_submit", (time.monotonic() - t) * 1000)
            deadline = time.monotonic() + self.args.run_timeout_s
            status = self.follow(c, run_id, deadline) if kind == "async_sse" else None
            status = status or self.poll(c, run_id, deadline)
        if status is None:
            with self.ledger.lock:
                self.ledger.unresolved.append(run_id)
            return
        self.sample(kind, (time.monotonic() - t) * 1000)
        with self.ledger.lock:
            self.ledger.client_final[run_id] = status

    def poll(self, c: httpx.Client, run_id: str, deadline: float) -> str | None:
        """GET the run until it is final (or the deadline): its status."""
        while time.monotonic() < deadline:
            try:
                r = c.get(f"/v1/runs/{run_id}")
                if self.answered("poll", r) and r.json()["status"] in FINAL:
                    return str(r.json()["status"])
            except httpx.HTTPError as exc:
                self.ledger.error("poll", type(exc).__name__, str(exc))
            time.sleep(self.args.poll_interval_s)
        return None

    def follow(self, c: httpx.Client, run_id: str, deadline: float) -> str | None:
        """Read the run's Server-Sent Events up to its ``end`` event: its status (None: the stream
        ended without one, or failed; the caller polls)."""
        try:
            timeout = httpx.Timeout(max(1.0, deadline - time.monotonic()), read=30.0)
            with c.stream("GET", f"/v1/runs/{run_id}/events", timeout=timeout) as r:
                if not r.is_success:
                    r.read()  # the problem's text, for the error count
                    self.answered("sse", r)
                    return None
                event = ""
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "end":
                        return str(json.loads(line[6:])["data"]["status"])
                    if time.monotonic() > deadline:
                        return None
        except httpx.HTTPError as exc:
            self.ledger.error("sse", type(exc).__name__, str(exc))
        return None

    def drive(self, keys: list[str], pid: int, rss: list[tuple[float, float, float]]) -> float:
        """Run the clients for the duration, sampling the daemon's RSS; the seconds the load lasted."""
        self.t0 = time.monotonic()
        self.stop_at = self.t0 + self.args.duration
        threads = [
            threading.Thread(target=self.client, args=(keys[i], self.args.seed + i), daemon=True)
            for i in range(self.args.clients)
        ]
        for t in threads:
            t.start()
        next_sample = self.t0
        while time.monotonic() < self.stop_at:
            if time.monotonic() >= next_sample:
                rss.append((self.now_s(), rss_mib(pid) or 0.0, group_rss_mib(pid)))
                next_sample += self.args.rss_interval_s
            time.sleep(min(0.5, max(0.0, min(next_sample, self.stop_at) - time.monotonic())))
        rss.append((self.now_s(), rss_mib(pid) or 0.0, group_rss_mib(pid)))
        for t in threads:
            t.join(self.args.run_timeout_s + 60)
        return self.now_s()


def parse_mix(text: str) -> dict[str, float]:
    """``sync=4,async_poll=2,...`` -> weights; a kind not named gets 0."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in KINDS:
            raise argparse.ArgumentTypeError(f"--mix: unknown kind {name!r}; kinds are {', '.join(KINDS)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--mix: {part!r} is not kind=weight") from None
        if out[name] < 0:
            raise argparse.ArgumentTypeError(f"--mix: weight of {name} is negative")
    if not any(out.values()):
        raise argparse.ArgumentTypeError("--mix: every weight is 0")
    return out


# ----------------------------------------------------------------------------- the daemon's view
def api_statuses(url: str, keys: list[str], run_ids: list[str], grace_s: float) -> dict[str, str | None]:
    """GET /v1/runs/{id} for every accepted run (None: 404); runs not yet final are asked again until
    ``grace_s`` has passed. Spread over the clients' keys (each key has its own rate limit)."""
    out: dict[str, str | None] = {}
    clients = [httpx.Client(base_url=url, headers={"Authorization": f"Bearer {k}"}, timeout=60) for k in keys]

    def get(i: int, run_id: str) -> None:
        for _ in range(20):
            try:
                r = clients[i % len(clients)].get(f"/v1/runs/{run_id}")
            except httpx.TransportError:  # a keep-alive connection the server closed as it was reused
                time.sleep(0.5)
                continue
            if r.status_code == 404:
                out[run_id] = None
                return
            if r.status_code not in REJECTED:
                r.raise_for_status()
                out[run_id] = str(r.json()["status"])
                return
            time.sleep(float(r.headers.get("Retry-After", "1") or 1))
        raise RuntimeError(f"GET /v1/runs/{run_id}: still refused or failing after 20 tries")

    try:
        deadline = time.monotonic() + grace_s
        todo = list(dict.fromkeys(run_ids))
        with ThreadPoolExecutor(max_workers=min(8, len(clients))) as pool:
            while todo:
                list(pool.map(get, range(len(todo)), todo))
                todo = [r for r in todo if out[r] is not None and out[r] not in FINAL]
                if not todo or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
    finally:
        for c in clients:
            c.close()
    return out


# ----------------------------------------------------------------------------- the whole soak
def build_soak_index(data_dir: Path) -> None:
    """The soak graph's vector index: synthetic documents embedded with the graph's own hashed
    embedding (no model), written where the daemon looks (``<data_dir>/indexes/soak.faiss``)."""
    import numpy as np

    from tests.support.callables import hash_vector
    from workers.ops import build_index

    class HashEmbedder:
        def encode(self, texts: list[str], **_: Any) -> Any:
            return np.asarray([hash_vector(t) for t in texts], dtype="float32")

    words = [
        "index",
        "vector",
        "search",
        "graph",
        "plan",
        "tool",
        "run",
        "call",
        "mail",
        "phone",
        "note",
        "query",
        "answer",
        "page",
    ]
    rng = random.Random(7)
    docs = data_dir / "soak.jsonl"
    with open(docs, "w", encoding="utf-8") as fh:
        for i in range(SOAK_INDEX_DOCS):
            fh.write(json.dumps({"id": f"d{i}", "text": " ".join(rng.choices(words, k=12))}) + "\n")
    build_index(docs, data_dir / "indexes", embedder=HashEmbedder())


def deploy(c: httpx.Client, graph_yaml: str, rate_per_s: float, timeout_s: float = 300.0) -> tuple[str, str]:
    """Create, plan and deploy the graph; (graph id, graph name) once the deployment is ready."""
    g = c.post("/v1/graphs", content=graph_yaml, headers={"Content-Type": "application/yaml"})
    g.raise_for_status()
    gid, name = g.json()["id"], g.json()["name"]
    p = c.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": rate_per_s})
    p.raise_for_status()
    if not p.json()["plan"]["feasible"]:
        raise RuntimeError(f"the graph's plan is infeasible: {p.text[:2000]}")
    d = c.post(f"/v1/graphs/{gid}/deployments", json={})
    d.raise_for_status()
    dep = d.json()["id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = c.get(f"/v1/graphs/{gid}/deployments/{dep}").json()
        if state["state"] == "ready":
            return gid, name
        if state["state"] == "failed":
            raise RuntimeError(f"deployment failed: {state['detail']}")
        time.sleep(0.5)
    raise RuntimeError(f"deployment not ready in {timeout_s:.0f} s")


def soak(args: argparse.Namespace, keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start the daemon (one admin key; a write key per client over REST), deploy, drive the load,
    account, stop the daemon; the report. ``keep``
    (tests) receives what the accounting was computed from, and the daemon's database URL."""
    graph_yaml = args.graph.read_text() if args.graph else SOAK_GRAPH
    inputs = json.loads(args.inputs) if args.inputs else SOAK_INPUTS
    phases: dict[str, float] = {}
    t = time.monotonic()

    def phase(name: str) -> None:
        nonlocal t
        phases[name] = round(time.monotonic() - t, 1)
        t = time.monotonic()

    env = dict(e.split("=", 1) for e in args.env)
    daemon_class: type[Daemon] = Daemon
    if args.tracemalloc:
        env |= {"HETAGENT_TRACEMALLOC_DIR": str(args.tracemalloc.resolve())}
        daemon_class = TracedDaemon
    daemon = daemon_class(
        args.data_dir,
        database_url=args.database_url,
        control_interval_s=args.control_interval_s,
        scopes=("admin",),
        env=env,
    )
    if args.graph is None:
        build_soak_index(daemon.data_dir)
    rss: list[tuple[float, float, float]] = []
    with daemon:
        assert daemon.pid is not None
        phase("start_s")
        with daemon.client("admin") as c:
            keys = [
                c.post("/v1/keys", json={"scope": "write", "name": f"soak-{i}"}).raise_for_status().json()["key"]
                for i in range(args.clients)
            ]
            gid, name = deploy(c, graph_yaml, args.plan_rate_per_s)
        phase("deploy_s")
        load = Load(daemon.url, gid, inputs, args)
        wall_s = load.drive(keys, daemon.pid, rss)
        phase("load_s")
        led = load.ledger
        api = api_statuses(daemon.url, keys, [r for r, _ in led.accepted], args.grace_s)
        scrape = httpx.get(f"{daemon.url}/metrics", timeout=60).text
        metrics = counter_by(scrape, name)
        replans = counter_by(scrape, name, "hetagent_replans_total", "reason")
        phase("check_api_s")
        code = daemon.terminate()
        phase("stop_s")
    db_url = args.database_url or f"sqlite:///{daemon.sqlite_path()}"
    db_runs, db_plans = read_database(db_url, gid)
    phase("check_database_s")
    report = account(led.accepted, led.client_final, api, db_runs, metrics, led.submit_failures)
    plan_ids = Counter(led.plans)
    report["plans"] = {
        "accepted": len(plan_ids),
        "lost": len(set(plan_ids) - set(db_plans)),
        "duplicated": sum(1 for n in plan_ids.values() if n > 1),
    }
    if report["plans"]["lost"] or report["plans"]["duplicated"]:
        report["ok"] = False
        report["problems"].append(f"plans: {report['plans']}")
    runs_done = sum(1 for k, _, _ in led.samples if k in RUN_KINDS)
    report.update(
        command=args.command,
        machine=f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.system()} {platform.release()}",
        settings={
            "clients": args.clients,
            "duration_s": args.duration,
            "mix": parse_mix(args.mix),
            "database": "postgresql" if args.database_url else "sqlite",
            "graph": str(args.graph) if args.graph else "soak (transform, transform, vector_search, tool)",
            "bucket_s": args.bucket_s,
            "nice": os.nice(0),
        },
        wall_s=round(wall_s, 1),
        phases_s=phases,
        runs_per_s=round(runs_done / wall_s, 2) if wall_s else None,
        rejections={f"{k}:{code}": n for (k, code), n in sorted(led.rejected.items())},
        errors={f"{k}:{w}": n for (k, w), n in sorted(led.errors.items())},
        error_examples=led.examples,
        unresolved_by_clients=len(led.unresolved),
        latency=latency_table(led.samples, args.bucket_s),
        rss={
            "daemon": rss_summary(rss, args.duration, 1),
            "process_group": rss_summary(rss, args.duration, 2),
            "samples": [[round(t, 1), round(a, 1), round(b, 1)] for t, a, b in rss],
        },
        replans=replans,
        daemon_exit=code,
        data_dir=str(daemon.data_dir),
    )
    if keep is not None:
        keep.update(ledger=led, api=api, metrics=metrics, db_url=db_url, graph_id=gid, daemon=daemon)
    return report


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16, help="Client threads, each with its own API key.")
    ap.add_argument("--duration", type=float, default=600.0, help="Seconds of load (no new request after).")
    ap.add_argument("--mix", default="sync=4,async_poll=2,async_sse=2,plan=1", help="Request kinds and weights.")
    ap.add_argument("--database-url", help="PostgreSQL (SQLAlchemy URL) instead of SQLite in a fresh data dir.")
    ap.add_argument("--data-dir", type=Path, help="The daemon's data dir (default: a fresh temporary one, kept).")
    ap.add_argument("--graph", type=Path, help="Another graph (YAML) instead of the built-in CPU one.")
    ap.add_argument("--inputs", help="Run inputs (JSON) for --graph.")
    ap.add_argument("--plan-rate-per-s", type=float, default=20.0, help="Rate the deployed plan is made for.")
    ap.add_argument("--control-interval-s", type=float, default=10.0, help="The daemon's control loop period.")
    ap.add_argument("--poll-interval-s", type=float, default=0.1, help="Async runs: pause between two GETs.")
    ap.add_argument("--run-timeout-s", type=float, default=120.0, help="Longest a client follows one async run.")
    ap.add_argument("--grace-s", type=float, default=60.0, help="After the load: wait for runs not final yet.")
    ap.add_argument("--rss-interval-s", type=float, default=5.0, help="Period of the RSS samples.")
    ap.add_argument("--bucket-s", type=float, default=60.0, help="Width of the latency buckets (p50/p99 over time).")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--tracemalloc",
        type=Path,
        help="Dump the daemon's allocations here (bench/soak_trace.py; HETAGENT_TRACEMALLOC_* tune it).",
    )
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE in the daemon's environment (repeatable).")
    ap.add_argument("--json", type=Path, help="Write the report here.")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    try:
        parse_mix(args.mix)
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    if args.clients < 1 or args.duration <= 0:
        ap.error("--clients must be >= 1 and --duration > 0")
    if any("=" not in e for e in args.env):
        ap.error("--env takes KEY=VALUE")
    if args.inputs and not args.graph:
        ap.error("--inputs goes with --graph")
    args.command = "python bench/soak.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = soak(args)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
