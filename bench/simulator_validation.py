"""The simulator against the real runtime on this machine (issue 10 part 3): measured p50/p99 vs simulated.

Starts `hetagent serve` (a fresh data dir, a free loopback port, cluster ``local``; its re-planning held off so
the deployment keeps the plan under test, its online calibration left on), deploys a graph, measures the
deployment's capacity (closed loop: as many clients as the engine batches, ``max_num_seqs``, for
``--capacity-s``; more would only queue), then
replays seeded Poisson arrivals at ``--fractions`` of that capacity (default light 15 %, 60 % and 90 %) for
``--duration`` seconds each: the arrival times are ``simulator.arrivals.arrival_times("poisson", rate,
duration, seed)``, the very list the simulator is given, and each run is a sync ``POST /v1/graphs/{id}/runs``
sent at its time. Every run's measured e2e (the client's: request sent → response, as the simulator's runs from
the arrival; the runtime's own ``e2e_ms`` is kept beside it) is compared with ``simulator.core.simulate`` on the
same arrival times for:

- (a) **the plan as made**: the daemon's plan, its per-op predicted latencies as planned;
- (b) **fed back**: the same plan with every op of its LLM nodes slowed by the factor the daemon's online
  calibration had applied to the op's device when the rate started (``GET /v1/hardware`` →
  ``calibrations[].slowdown``, multiplied: the refit divides both efficiencies by it, so a roofline op's
  predicted time grows by it); the runs measured before the rate are the evidence;
- (c) **+ the runtime**: the plan as made, with what the bench measured of the runtime itself charged
  (SimOptions.runtime_*): the daemon's and Ray's CPU per run and the engine front-end's per output token (over
  the capacity probe, from /proc), the cores the engine keeps busy while it steps (over the warm-up runs sent one
  at a time), and the daemon's run threads (``Settings.max_runs_in_flight``).

Why draft_writer with its LLM set to ``tiny-llama``: its latency is almost all one vLLM engine with continuous
batching, where queueing and batch formation, the simulator's hard part, decide p99. On ``local`` the shipped
file's llama-3.1-8b would be planned as qwen2.5-0.5b but served as the offline tiny model (no hub weights), so
the plan's numbers would be for weights that never run; naming the served model makes the plan's predictions
(and the daemon's online calibration, which skips stand-in runs) about the model that runs.

Also records, per rate, the CPU share of other processes (``costmodels.calibrate.OtherLoad``; the daemon, its
Ray and engines are this script's descendants and count as ours): on a shared 2-core machine an engine's steps
slow down many-fold when they compete. Prints a Markdown table; ``--json`` writes every number.

    .venv/bin/python bench/simulator_validation.py [--duration 90] [--capacity-s 30] [--seed 7] [--json out.json]
    .venv/bin/python bench/simulator_validation.py --resimulate out.json --slowdown F   # no runs: re-simulate

Results and what they mean: docs/simulator.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BRIEFS = (
    "Plan a week of meals for a family of four on a small budget.",
    "Describe how to water tomato plants during a hot summer.",
    "Summarise the steps to replace a bicycle inner tube.",
    "Write a short guide to keeping a reading journal.",
    "Explain how to prepare a garden bed for spring planting.",
)
LLM_KINDS = ("tokenize", "prefill", "decode", "detokenize")  # the granular ops of an LLM node


# ----------------------------------------------------------------------------- the daemon


class Daemon:
    """`hetagent serve` on a free loopback port with a fresh data dir; its process group is stopped on exit.

    Re-planning is held off (a rate band and dwell time no load reaches), so the deployment runs the plan
    under test all along; online calibration (each control pass) stays on. No rate limit on the client key."""

    def __init__(self, data_dir: Path | None = None, control_interval_s: float = 5.0):
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="hetagent-simval-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.control_interval_s = control_interval_s
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "PYTHONPATH": str(ROOT),
            "HETAGENT_CONTROL_BAND": "1e9",
            "HETAGENT_CONTROL_DWELL_S": "1e9",
            "HETAGENT_RATE_LIMIT_PER_S": "0",
        }
        self.proc: subprocess.Popen | None = None
        self.key = ""

    def __enter__(self) -> Daemon:
        cli = [sys.executable, "-m", "orchestrator.cli"]
        self.key = subprocess.run(
            [*cli, "keys", "create", "--scope", "write", "--data-dir", str(self.data_dir)],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        with open(self.data_dir / "daemon.log", "w") as log:  # the daemon keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    *cli,
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--control-interval-s",
                    str(self.control_interval_s),
                ],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited:\n{(self.data_dir / 'daemon.log').read_text()[-3000:]}")
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("daemon not ready in 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # the daemon and the local Ray it started (its group)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def client(self, timeout_s: float = 600.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=timeout_s)


def deploy(
    c: httpx.Client, graph_yaml: str, rate_per_s: float, timeout_s: float = 900.0, attempts: int = 3
) -> tuple[str, dict]:
    """Store the graph, plan it at ``rate_per_s`` on the daemon's cluster, deploy it; (graph id, plan).

    A deployment that fails is tried again (``attempts`` in all): on a loaded 2-core machine a vLLM engine can
    miss the runtime's 5-minute start window, and a second start finds its imports in the page cache."""
    g = c.post("/v1/graphs", content=graph_yaml, headers={"Content-Type": "application/yaml"})
    g.raise_for_status()
    gid = g.json()["id"]
    p = c.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": rate_per_s})
    p.raise_for_status()
    plan = p.json()["plan"]
    if not plan["feasible"]:
        raise SystemExit(f"no feasible plan at {rate_per_s} runs/s: {plan.get('reason')}")
    deadline = time.monotonic() + timeout_s
    for attempt in range(1, attempts + 1):
        d = c.post(f"/v1/graphs/{gid}/deployments", json={"plan_id": p.json()["id"]})
        d.raise_for_status()
        dep = d.json()["id"]
        while time.monotonic() < deadline:
            state = c.get(f"/v1/graphs/{gid}/deployments/{dep}").json()
            if state["state"] == "ready":
                return gid, plan
            if state["state"] == "failed":
                if attempt == attempts:
                    raise SystemExit(f"deployment failed {attempts} times: {state.get('detail')}")
                print(f"deployment attempt {attempt} failed ({state.get('detail')}); again", flush=True)
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"deployment not ready in {timeout_s:.0f} s")
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- driving runs


def run_row(c: httpx.Client, gid: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """One sync run: its status, the runtime's e2e, the client's wall time and its per-op records."""
    t0 = time.perf_counter()
    r = c.post(f"/v1/graphs/{gid}/runs", json={"inputs": inputs, "mode": "sync", "timeout_s": 600})
    client_ms = (time.perf_counter() - t0) * 1000.0
    body = r.json() if r.headers.get("content-type", "").endswith("json") else {}
    ok = r.status_code == 200 and body.get("status") == "succeeded"
    return {
        "status": body.get("status", str(r.status_code)) if ok or body else str(r.status_code),
        "ok": ok,
        "e2e_ms": body.get("e2e_ms"),
        "client_ms": client_ms,
        "ttft_ms": measured_ttft_ms(body) if ok else None,
        "records": body.get("records", []),
        "error": None if ok else (body.get("error") or r.text[:300]),
    }


def measured_ttft_ms(run: dict[str, Any]) -> float | None:
    """Run start → first token of the streaming LLM node: e2e less what its engine spent after the first token
    (``detail.e2e_ms − detail.ttft_ms``); None for a run without one."""
    for rec in run.get("records", []):
        d = rec.get("detail") or {}
        if rec.get("kind") == "llm" and d.get("ttft_ms") is not None and d.get("e2e_ms") is not None:
            return run["e2e_ms"] - (d["e2e_ms"] - d["ttft_ms"])
    return None


def replay(
    client: Callable[[], httpx.Client], gid: str, times_s: Sequence[float], inputs: Callable[[int], dict]
) -> list[dict[str, Any]]:
    """Send run i at ``times_s[i]`` seconds from now (a sync POST on its own thread); rows in arrival order,
    each with ``arrival_s`` (the scheduled time) and ``sent_s`` (when the request actually left)."""
    rows: list[dict[str, Any] | None] = [None] * len(times_s)
    local = threading.local()

    def one(i: int, t0: float) -> None:
        if not hasattr(local, "c"):
            local.c = client()
        sent = time.perf_counter() - t0
        try:
            row = run_row(local.c, gid, inputs(i))
        except httpx.HTTPError as exc:
            row = {"status": "http-error", "ok": False, "e2e_ms": None, "client_ms": None, "ttft_ms": None}
            row["error"], row["records"] = f"{type(exc).__name__}: {exc}", []
        rows[i] = {"i": i, "arrival_s": times_s[i], "sent_s": sent, **row}

    with ThreadPoolExecutor(max_workers=256, thread_name_prefix="replay") as pool:
        t0 = time.perf_counter()
        for i, t in enumerate(times_s):
            wait = t - (time.perf_counter() - t0)
            if wait > 0:
                time.sleep(wait)
            pool.submit(one, i, t0)
    return [r for r in rows if r is not None]


def closed_loop(client: Callable[[], httpx.Client], gid: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` back-to-back runners for ``seconds`` (runs started by then finish): the capacity, as runs
    completed per second in the window when at least ``3 × clients`` did, else by Little's law (clients ÷ the
    mean e2e of the completed runs; a closed loop without think time), which a short window on a slow machine
    still reads."""
    done: list[tuple[float, float]] = []  # (finish time, client ms)
    output_tokens: list[int] = []  # the LLM calls' generated tokens, over the runs that succeeded
    failed: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop(k: int) -> None:
        with client() as c:
            i = 0
            while time.perf_counter() < stop_at:
                row = run_row(c, gid, {"brief": BRIEFS[(k + i) % len(BRIEFS)]})
                i += 1
                with lock:
                    if row["ok"]:
                        done.append((time.perf_counter(), row["client_ms"]))
                        output_tokens.extend(
                            (rec.get("detail") or {}).get("output_tokens") or 0
                            for rec in row["records"]
                            if rec.get("kind") == "llm"
                        )
                    else:
                        failed.append(str(row["error"]))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inside = sum(1 for t, _ in done if t <= stop_at)
    little = clients / (statistics.fmean(ms for _, ms in done) / 1000.0) if done else 0.0
    counted = inside / (stop_at - t0)
    return {
        "clients": clients,
        "seconds": seconds,
        "runs": len(done),
        "failed": len(failed),
        "runs_in_window": inside,
        "counted_runs_per_s": counted,
        "little_runs_per_s": little,
        "runs_per_s": counted if inside >= 3 * clients else little,
        "output_tokens": sum(output_tokens),
        "errors": sorted(set(failed))[:3],
    }


# ----------------------------------------------------------------------------- the runtime's own CPU


def _process_cpu_s(root_pid: int) -> dict[int, tuple[str, float]]:
    """{pid: (argv[0], user + system CPU seconds)} of ``root_pid`` and its living descendants (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    seen: dict[int, tuple[str, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            argv0 = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(d.name)] = int(fields[1])
        seen[int(d.name)] = (argv0, (int(fields[11]) + int(fields[12])) / tick)
    out = {}
    for pid, row in seen.items():
        p = pid
        while p in parent and p != root_pid:
            p = parent[p]
        if p == root_pid:
            out[pid] = row
    return out


def runtime_cpu(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], runs: int, tokens: int):
    """The serving runtime's own CPU between two ``_process_cpu_s`` samples, as SimOptions' runtime_* fields.

    Per output token: the LLM workers' processes (``ray::LLMWorker``: vLLM's front-end — output processing,
    detokenising, streaming — beside the engine core, a process of its own). Per run: everything else of the
    daemon's tree but the engine cores (``VLLM::EngineCore``: the plan's engine steps) and the host-op workers
    (``ray::HostWorker``: the plan's host ops): the daemon, Ray's GCS, raylet and idle workers."""
    groups: dict[str, float] = {}
    for pid, (argv0, cpu_s) in after.items():
        used = cpu_s - (before[pid][1] if pid in before else 0.0)
        name = argv0.split()[0] if argv0.startswith(("ray::", "VLLM::")) else Path(argv0).name or "?"
        groups[name] = groups.get(name, 0.0) + used
    engine = sum(v for k, v in groups.items() if k.startswith("VLLM::"))
    front = groups.get("ray::LLMWorker", 0.0)
    host = groups.get("ray::HostWorker", 0.0)
    rest = sum(groups.values()) - engine - front - host
    return {
        "cpu_s_by_process": {k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "runs": runs,
        "output_tokens": tokens,
        "runtime_cpu_s_per_run": rest / runs if runs else 0.0,
        "runtime_cpu_s_per_output_token": front / tokens if tokens else 0.0,
    }


# ----------------------------------------------------------------------------- the comparison


def engine_cores(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], rows: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Cores the engine keeps busy while it steps: its core process's CPU-seconds over runs sent one at a time
    ÷ the seconds its requests were in it (the LLM records' ``detail.e2e_ms``, vLLM's own arrival → finish)."""
    cpu_s = sum(
        cpu - (before[pid][1] if pid in before else 0.0)
        for pid, (argv0, cpu) in after.items()
        if argv0.startswith("VLLM::")
    )
    engine_s = (
        sum(
            (rec.get("detail") or {}).get("e2e_ms") or 0.0
            for r in rows
            if r["ok"]
            for rec in r["records"]
            if rec.get("kind") == "llm"
        )
        / 1000.0
    )
    return {
        "runs": sum(1 for r in rows if r["ok"]),
        "engine_cpu_s": cpu_s,
        "engine_s": engine_s,
        "engine_cores_busy": cpu_s / engine_s if engine_s > 0 and cpu_s > 0 else None,
    }


def pct(values: Sequence[float], q: float) -> float:
    """The simulator's percentile (linear interpolation), so measured and simulated are read alike."""
    from simulator.core import percentile

    return percentile(values, q)


def rel_error(simulated: float, measured: float) -> float:
    """(simulated − measured) / measured: + the simulator is pessimistic, − optimistic."""
    return (simulated - measured) / measured if measured else math.nan


def device_slowdown(hardware: list[dict[str, Any]]) -> dict[str, float]:
    """Per device type, the product of the slowdowns online calibration applied (``GET /v1/hardware``)."""
    out = {}
    for d in hardware:
        f = 1.0
        for cal in d.get("calibrations", []):
            f *= float(cal["slowdown"])
        out[d["name"]] = f
    return out


def fed_back(plan: Any, slowdown: dict[str, float]) -> Any:
    """``plan`` with every op of an LLM node slower by its device's online-calibration slowdown (latency × f,
    throughput ÷ f); host ops are priced from the spec's declared latencies, which calibration leaves alone."""
    ops = []
    for o in plan.ops:
        f = slowdown.get(o.device, 1.0)
        if o.kind in LLM_KINDS and f != 1.0:
            o = o.model_copy(
                update={
                    "predicted_latency_ms": o.predicted_latency_ms * f,
                    "throughput_per_replica": o.throughput_per_replica / f,
                }
            )
        ops.append(o)
    return plan.model_copy(update={"ops": ops})


def simulate(
    plan: Any,
    graph_yaml: str,
    cluster: str,
    times_s: Sequence[float],
    seed: int,
    size_sigma: float,
    runtime: dict[str, Any] | None = None,
) -> Any:
    """``hetagent simulate``'s path: the graph as the cluster serves it, compiled; the plan replayed on
    ``times_s`` (the same arrival list the runs were sent at); ``runtime``: SimOptions' runtime_* fields."""
    import yaml

    from compiler.ir import compile_graph
    from compiler.spec import parse_graph
    from costmodels.catalog import load_catalog, load_cluster
    from planner.pipeline import apply_model_overrides
    from simulator.core import SimOptions, simulate as run_simulation

    catalog = load_catalog()
    spec = parse_graph(yaml.safe_load(graph_yaml), catalog)
    served = apply_model_overrides(spec, load_cluster(cluster, catalog), catalog)
    _, granular = compile_graph(served, catalog)
    opts = SimOptions(seed=seed, size_sigma=size_sigma, sla_percentile=spec.spec.sla.percentile, **(runtime or {}))
    return run_simulation(plan, granular, catalog, list(times_s), opts)


def compare(rows: Sequence[dict[str, Any]], sims: dict[str, Any]) -> dict[str, Any]:
    """Measured p50/p99 (e2e, TTFT) of the succeeded runs beside each simulation's, with relative errors.

    The measured e2e is the client's (request sent → response): the simulator's e2e runs from the arrival, so a
    wait in the daemon before the runtime starts the run (its run threads) counts in both. The runtime's own
    ``e2e_ms`` (from the start on a run thread) is kept beside it (``runtime_p50_ms``)."""
    client = [r["client_ms"] for r in rows if r["ok"]]
    runtime_e2e = [r["e2e_ms"] for r in rows if r["ok"]]
    ttft = [r["ttft_ms"] for r in rows if r["ok"] and r["ttft_ms"] is not None]
    out: dict[str, Any] = {
        "runs": len(rows),
        "succeeded": len(client),
        "failed": len(rows) - len(client),
        "measured": {
            "p50_ms": pct(client, 50),
            "p99_ms": pct(client, 99),
            "ttft_p50_ms": pct(ttft, 50) if ttft else None,
            "ttft_p99_ms": pct(ttft, 99) if ttft else None,
            "runtime_p50_ms": pct(runtime_e2e, 50),
            "runtime_p99_ms": pct(runtime_e2e, 99),
        },
    }
    for name, s in sims.items():
        out[name] = {
            "p50_ms": s.p50_ms,
            "p99_ms": s.p99_ms,
            "ttft_p50_ms": s.ttft_p50_ms,
            "ttft_p99_ms": s.ttft_p99_ms,
            "p50_error": rel_error(s.p50_ms, out["measured"]["p50_ms"]),
            "p99_error": rel_error(s.p99_ms, out["measured"]["p99_ms"]),
            "completed": s.completed,
            "ops": {k: {"utilisation": v.utilisation, "mean_batch": v.mean_batch} for k, v in s.ops.items()},
        }
    return out


def token_counts(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of the LLM calls' real prompt and output tokens (the simulation uses the spec's)."""
    prompt, output = [], []
    for r in rows:
        for rec in r.get("records", []):
            d = rec.get("detail") or {}
            if rec.get("kind") == "llm" and d.get("prompt_tokens"):
                prompt.append(d["prompt_tokens"])
                output.append(d.get("output_tokens") or 0)
    if not prompt:
        return {}
    return {
        "prompt_tokens": [min(prompt), statistics.median(prompt), max(prompt)],
        "output_tokens": [min(output), statistics.median(output), max(output)],
    }


# ----------------------------------------------------------------------------- main


def served_graph(path: Path, model: str | None) -> str:
    """The graph's YAML with every LLM node's model set to ``model`` (None: as written)."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    if model:
        for n in doc["spec"]["nodes"]:
            if n.get("kind") == "llm":
                n["model"] = model
    return yaml.safe_dump(doc, sort_keys=False)


@contextlib.contextmanager
def other_load() -> Iterator[Any]:
    from costmodels.calibrate import OtherLoad

    with OtherLoad(tree=True) as load:  # the daemon, its Ray and engines are this process's descendants
        yield load


def _fmt(x: float | None, pattern: str = "{:.0f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else pattern.format(x)


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| load | rate runs/s | runs (ok) | other CPU | measured p50 / p99 ms | (a) plan: sim p50 / p99 ms | "
        "(a) error p50 / p99 | (b) fed back: sim p50 / p99 ms | (b) error p50 / p99 | "
        "(c) + runtime CPU: sim p50 / p99 ms | (c) error p50 / p99 | TTFT p50 measured / (a) / (b) / (c) ms |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in results:
        m, a, b = r["measured"], r["plan"], r["fed_back"]
        c = r.get("runtime") or {"p50_ms": math.nan, "p99_ms": math.nan, "p50_error": math.nan, "p99_error": math.nan}
        lines.append(
            f"| {r['fraction']:.0%} | {r['rate_per_s']:.2f} | {r['runs']} ({r['succeeded']}) | "
            f"{_fmt(r['other_cpu'], '{:.0%}')} | {m['p50_ms']:.0f} / {m['p99_ms']:.0f} | "
            f"{a['p50_ms']:.0f} / {a['p99_ms']:.0f} | {a['p50_error']:+.0%} / {a['p99_error']:+.0%} | "
            f"{b['p50_ms']:.0f} / {b['p99_ms']:.0f} | {b['p50_error']:+.0%} / {b['p99_error']:+.0%} | "
            f"{c['p50_ms']:.0f} / {c['p99_ms']:.0f} | {c['p50_error']:+.0%} / {c['p99_error']:+.0%} | "
            f"{_fmt(m['ttft_p50_ms'])} / {_fmt(a['ttft_p50_ms'])} / {_fmt(b['ttft_p50_ms'])} / "
            f"{_fmt(c.get('ttft_p50_ms'))} |"
        )
    return "\n".join(lines)


def runtime_options(out: dict[str, Any], plan: Any) -> dict[str, Any]:
    """SimOptions' runtime_* fields from the capacity probe's measurement; the daemon shares the cores of the
    plan's CPU device (on ``local``, its only device)."""
    cpu = [d.device for d in plan.devices if d.device_class == "cpu"]
    rt = out.get("runtime_cpu") or {}
    return {
        "runtime_device": cpu[0] if len(cpu) == 1 else None,
        "runtime_cpu_s_per_run": rt.get("runtime_cpu_s_per_run", 0.0),
        "runtime_cpu_s_per_output_token": rt.get("runtime_cpu_s_per_output_token", 0.0),
        "engine_cores_busy": (out.get("engine_cores") or {}).get("engine_cores_busy"),
        "max_runs_in_flight": out.get("max_runs_in_flight"),
    }


def resimulate(path: Path, slowdown: float, size_sigma: float, runtime_cpu: bool = False) -> int:
    """Simulate a finished validation's rows again (the same arrival lists: rate and seed), with the LLM ops
    slowed by ``slowdown``: e.g. the measured ÷ planned ratio of the light rate, to see whether the queueing
    model holds once the service time is right. The plan is the stored one, else planned again (deterministic)
    and checked against the stored prediction."""
    import yaml

    from compiler.spec import parse_graph
    from costmodels.catalog import load_catalog, load_cluster
    from planner.pipeline import plan_spec
    from planner.place import PlanOptions
    from planner.plan import Plan
    from simulator.arrivals import arrival_times

    done = json.loads(path.read_text())
    graph_yaml = served_graph(ROOT / done["graph"], None if done["model"] == "as written" else done["model"])
    if "plan_doc" in done:
        plan = Plan.model_validate(done["plan_doc"])
    else:
        catalog = load_catalog()
        spec = parse_graph(yaml.safe_load(graph_yaml), catalog)
        opts = PlanOptions(rate_per_s=done["plan"]["rate_per_s"], baselines=False)
        plan = plan_spec(spec, load_cluster(done["cluster"], catalog), opts, catalog)
        if plan.predicted_e2e_ms is None or not math.isclose(
            plan.predicted_e2e_ms, done["plan"]["predicted_e2e_ms"], rel_tol=1e-6
        ):
            raise SystemExit(
                f"re-planned {plan.predicted_e2e_ms} ms, the run's plan {done['plan']['predicted_e2e_ms']}"
            )
    slowed = fed_back(plan, {o.device: slowdown for o in plan.ops})
    runtime = runtime_options(done, plan) if runtime_cpu else None
    if runtime_cpu and "runtime_cpu" not in done:
        raise SystemExit(f"{path} has no runtime_cpu measurement (made before it was measured)")
    print(f"{done['graph']} ({done['date']}): LLM ops × {slowdown:g}; runtime CPU {runtime or 'not charged'}")
    print("| load | rate runs/s | runs (ok) | measured p50 / p99 ms | sim p50 / p99 ms | error p50 / p99 |")
    print("|---|---|---|---|---|---|")
    for r in done["results"]:
        times = arrival_times("poisson", r["rate_per_s"], done.get("duration_s", 90.0), r["seed"])
        if len(times) != r["runs"]:
            raise SystemExit(f"{len(times)} arrivals regenerated, the run had {r['runs']}: pass the run's --duration")
        sim = simulate(slowed, graph_yaml, done["cluster"], times, r["seed"], size_sigma, runtime)
        m = r["measured"]
        print(
            f"| {r['fraction']:.0%} | {r['rate_per_s']:.2f} | {r['runs']} ({r['succeeded']}) | "
            f"{m['p50_ms']:.0f} / {m['p99_ms']:.0f} | {sim.p50_ms:.0f} / {sim.p99_ms:.0f} | "
            f"{rel_error(sim.p50_ms, m['p50_ms']):+.0%} / {rel_error(sim.p99_ms, m['p99_ms']):+.0%} |"
        )
    return 0


def main() -> int:
    from orchestrator.settings import Settings
    from planner.plan import Plan
    from simulator.arrivals import arrival_times

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph", type=Path, default=ROOT / "examples/graphs/draft_writer.yaml")
    p.add_argument("--model", default="tiny-llama", help="LLM nodes' model (the one served here); '' as written.")
    p.add_argument("--cluster", default="local")
    p.add_argument("--plan-rate", type=float, default=5.0, help="Rate the deployed plan is made for, runs/s.")
    p.add_argument("--fractions", default="0.15,0.6,0.9", help="Rates to replay, as fractions of the capacity.")
    p.add_argument("--capacity", type=float, default=None, help="Skip the capacity probe: this many runs/s.")
    p.add_argument("--capacity-s", type=float, default=30.0, help="Seconds of the closed-loop capacity probe.")
    p.add_argument("--duration", type=float, default=90.0, help="Seconds of Poisson arrivals per rate.")
    p.add_argument("--warmup", type=int, default=6, help="Sequential runs before measuring.")
    p.add_argument("--seed", type=int, default=7, help="Seed of rate k's arrivals and simulation: seed + k.")
    p.add_argument("--size-sigma", type=float, default=0.0, help="The simulator's request-size σ (0: the spec's).")
    p.add_argument(
        "--profiles-data-dir",
        type=Path,
        default=None,
        help="A data dir whose profiles/ (from `hetagent calibrate --engine vllm`) price the plan and the simulation "
        "(sets HETAGENT_DATA_DIR for this process and the daemon; default: the shipped catalog).",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--resimulate",
        type=Path,
        default=None,
        help="No runs: re-read this --json output and simulate its rows again with --slowdown on the LLM ops.",
    )
    p.add_argument("--slowdown", type=float, default=1.0, help="With --resimulate: the LLM ops' slowdown.")
    p.add_argument(
        "--runtime-cpu",
        action="store_true",
        help="With --resimulate: charge the runtime's CPU the run measured (its runtime_cpu) to the simulation.",
    )
    a = p.parse_args()
    if a.resimulate is not None:
        return resimulate(a.resimulate, a.slowdown, a.size_sigma, a.runtime_cpu)
    if a.profiles_data_dir is not None:
        if not (a.profiles_data_dir / "profiles").is_dir():
            raise SystemExit(f"{a.profiles_data_dir}/profiles is not a folder: run `hetagent calibrate` for it first")
        os.environ["HETAGENT_DATA_DIR"] = str(a.profiles_data_dir.resolve())  # the daemon inherits it
    fractions = [float(x) for x in a.fractions.split(",")]
    graph_yaml = served_graph(a.graph, a.model or None)
    started = datetime.datetime.now(datetime.UTC)
    t_start = time.perf_counter()
    out: dict[str, Any] = {
        "graph": str(a.graph.relative_to(ROOT) if a.graph.is_relative_to(ROOT) else a.graph),
        "model": a.model or "as written",
        "cluster": a.cluster,
        "command": "python bench/simulator_validation.py " + " ".join(sys.argv[1:]),
        "date": started.isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} vCPU {platform.machine()}",
        "profiles": str(a.profiles_data_dir) if a.profiles_data_dir else "shipped catalog",
        "duration_s": a.duration,
        "results": [],
    }
    with Daemon() as d, d.client() as c:
        t0 = time.perf_counter()
        gid, plan_doc = deploy(c, graph_yaml, a.plan_rate)
        plan = Plan.model_validate(plan_doc)
        out["deploy_s"] = time.perf_counter() - t0
        out["data_dir"] = str(d.data_dir)
        out["plan_doc"] = plan_doc  # for --resimulate
        out["plan"] = {
            "rate_per_s": plan.rate_per_s,
            "predicted_e2e_ms": plan.predicted_e2e_ms,
            "ops": {
                o.name: {"latency_ms": o.predicted_latency_ms, "batch": o.batch, "replicas": o.replicas}
                for o in plan.ops
            },
            "capacity_per_s": min(o.replicas * o.throughput_per_replica for o in plan.ops),
        }
        print(f"deployed {gid} in {out['deploy_s']:.0f} s; plan {plan.predicted_e2e_ms:.0f} ms e2e", flush=True)
        assert d.proc is not None  # started by __enter__
        warm: list[dict[str, Any]] = []
        for i in range(a.warmup):
            if i == 1:  # the first run warms the engine up; the others, one at a time, time its cores
                cpu_w = _process_cpu_s(d.proc.pid)
            row = run_row(c, gid, {"brief": BRIEFS[i % len(BRIEFS)]})
            warm += [row] if i >= 1 else []
            print(f"warm-up {i}: {row['status']} {_fmt(row['e2e_ms'])} ms", flush=True)
        if warm:
            out["engine_cores"] = engine_cores(cpu_w, _process_cpu_s(d.proc.pid), warm)
            print(f"engine cores busy while stepping: {out['engine_cores']}", flush=True)
        out["max_runs_in_flight"] = Settings().max_runs_in_flight  # the daemon's run threads (its env is ours)
        engine_seqs = max((int(e["batch"]) for e in plan.engines), default=1)
        if a.capacity is None:
            cpu0 = _process_cpu_s(d.proc.pid)
            with other_load() as load:
                cap = closed_loop(d.client, gid, engine_seqs, a.capacity_s)
            cap["other_cpu"] = load.fraction
            out["runtime_cpu"] = runtime_cpu(cpu0, _process_cpu_s(d.proc.pid), cap["runs"], cap["output_tokens"])
            out["capacity"] = cap
            capacity = cap["runs_per_s"]
            if not capacity > 0:
                raise SystemExit(f"no run completed in the capacity probe: {cap['errors']}")
        else:
            out["capacity"] = {"given_runs_per_s": a.capacity}
            out["runtime_cpu"] = {"runtime_cpu_s_per_run": 0.0, "runtime_cpu_s_per_output_token": 0.0}
            capacity = a.capacity
        print(f"capacity {capacity:.2f} runs/s (plan: {out['plan']['capacity_per_s']:.2f})", flush=True)
        for k, frac in enumerate(fractions):
            rate, seed = frac * capacity, a.seed + k
            slowdown = device_slowdown(c.get("/v1/hardware").json())  # fed back from the runs so far
            times = arrival_times("poisson", rate, a.duration, seed)
            with other_load() as load:
                rows = replay(d.client, gid, times, lambda i: {"brief": BRIEFS[i % len(BRIEFS)]})
            sims = {
                "plan": simulate(plan, graph_yaml, a.cluster, times, seed, a.size_sigma),
                "fed_back": simulate(fed_back(plan, slowdown), graph_yaml, a.cluster, times, seed, a.size_sigma),
                "runtime": simulate(plan, graph_yaml, a.cluster, times, seed, a.size_sigma, runtime_options(out, plan)),
            }
            res = {"fraction": frac, "rate_per_s": rate, "seed": seed, **compare(rows, sims)}
            res["other_cpu"] = load.fraction
            res["slowdown"] = {k2: v for k2, v in slowdown.items() if v != 1.0}
            res["tokens"] = token_counts(rows)
            res["errors"] = sorted({r["error"] for r in rows if r.get("error")})[:3]
            out["results"].append(res)
            if a.json:  # after every rate: a later failure keeps what was measured
                a.json.write_text(json.dumps(out, indent=2, default=str))
            print(table([res]).splitlines()[-1], flush=True)
        out["final_slowdown"] = {k: v for k, v in device_slowdown(c.get("/v1/hardware").json()).items() if v != 1.0}
    out["wall_s"] = time.perf_counter() - t_start
    print()
    print(f"{out['graph']} (LLM: {out['model']}) on {a.cluster}, {out['date']}, {out['machine']}")
    print(f"capacity: {capacity:.2f} runs/s measured, {out['plan']['capacity_per_s']:.2f} planned")
    print(table(out["results"]))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
