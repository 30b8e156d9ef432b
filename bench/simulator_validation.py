"""The simulator against the real runtime on this machine (issue 10 part 3): measured p50/p99 vs simulated.

Starts `hetagent serve` (a fresh data dir, a free loopback port, cluster ``local``; its re-planning held off so
the deployment keeps the plan under test, its online calibration left on), deploys a graph, measures the
deployment's capacity (a closed loop of as many clients as the engine batches, ``max_num_seqs``, for
``--capacity-s`` gives a first guess; ``--probes`` open-loop Poisson probes of ``--probe-s`` then bracket the
highest rate whose runs' wait does not grow and whose median e2e stays within 2.5 × a lone run's: a saturated
closed loop costs the runtime more CPU per run than an open loop near capacity, so it under-reads), then
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
  predicted time grows by it); the evidence is the runs before the rate's window: its lead-in (``--lead-in-runs``
  at the same rate, other arrivals), so the daemon has calibrated at the load it is compared at;
- (c) **+ the runtime**: the plan as made, with what the bench measured of the runtime itself charged
  (SimOptions.runtime_*): the daemon's and Ray's CPU per run and the engine front-end's per output token (over
  the rate's lead-in, from /proc; without one, over the open-loop probe at capacity), the cores the engine keeps
  busy while it steps (over the warm-up runs sent one at a time), and the daemon's run threads
  (``Settings.max_runs_in_flight``);
- (d) **+ the host's steal**: (c) with the share of the cores the VM's host took (hypervisor steal), as the
  window's 1 s CPU timeline measured it (``SimOptions.cpu_steal``).

Why draft_writer with its LLM set to ``tiny-llama``: its latency is almost all one vLLM engine with continuous
batching, where queueing and batch formation, the simulator's hard part, decide p99. On ``local`` the shipped
file's llama-3.1-8b would be planned as qwen2.5-0.5b but served as the offline tiny model (no hub weights), so
the plan's numbers would be for weights that never run; naming the served model makes the plan's predictions
(and the daemon's online calibration, which skips stand-in runs) about the model that runs.

Also records, per rate, the CPU share of other processes (``costmodels.calibrate.OtherLoad``; the daemon, its
Ray and engines are this script's descendants and count as ours): on a shared 2-core machine an engine's steps
slow down many-fold when they compete. Prints a Markdown table; ``--json`` writes every number.

    .venv/bin/python bench/simulator_validation.py [--duration 90] [--probes 5] [--seed 7] [--json out.json]
    .venv/bin/python bench/simulator_validation.py --resimulate out.json --slowdown F   # no runs: re-simulate

Results and what they mean: docs/simulator.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import os
import platform
import statistics
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

from tests.support.daemon import Daemon  # noqa: E402

BRIEFS = (
    "Plan a week of meals for a family of four on a small budget.",
    "Describe how to water tomato plants during a hot summer.",
    "Summarise the steps to replace a bicycle inner tube.",
    "Write a short guide to keeping a reading journal.",
    "Explain how to prepare a garden bed for spring planting.",
)
LLM_KINDS = ("tokenize", "prefill", "decode", "detokenize")  # the granular ops of an LLM node


# ----------------------------------------------------------------------------- the daemon


def start_daemon() -> Daemon:
    """`hetagent serve` (tests/support/daemon.py) with re-planning held off (a rate band and dwell time no load
    reaches), so the deployment runs the plan under test all along; online calibration (each control pass) stays
    on. No rate limit on the client key."""
    env = {"HETAGENT_CONTROL_BAND": "1e9", "HETAGENT_CONTROL_DWELL_S": "1e9", "HETAGENT_RATE_LIMIT_PER_S": "0"}
    return Daemon(Path(tempfile.mkdtemp(prefix="hetagent-simval-")), control_interval_s=5.0, env=env)


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


def llm_detail(row: dict[str, Any]) -> dict[str, Any]:
    """The engine's own figures for a run's (first) LLM call (its record's ``detail``: vLLM's e2e, TTFT, tokens);
    {} for a run without one."""
    return next(((rec.get("detail") or {}) for rec in row.get("records", []) if rec.get("kind") == "llm"), {})


def engine_e2e_ms(row: dict[str, Any]) -> float | None:
    """The LLM engine's own e2e of a run's (first) LLM call: vLLM's arrival → finish, without the runtime."""
    return llm_detail(row).get("e2e_ms")


def measured_ttft_ms(run: dict[str, Any]) -> float | None:
    """Run start → first token of the streaming LLM node: e2e less what its engine spent after the first token
    (``detail.e2e_ms − detail.ttft_ms``); None for a run without one."""
    d = llm_detail(run)
    if d.get("ttft_ms") is None or d.get("e2e_ms") is None:
        return None
    return float(run["e2e_ms"] - (d["e2e_ms"] - d["ttft_ms"]))


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
    output_tokens: list[int] = []  # per succeeded run, its LLM calls' generated tokens
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
                        output_tokens.append(llm_output_tokens([row]))
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


GROWTH_LIMIT = 1.5  # an open-loop probe keeps up unless its last third of runs waits this much longer
LONE_RUN_LIMIT = 2.5  # ... or its median e2e is above this many times a lone run's


def llm_output_tokens(rows: Sequence[dict[str, Any]]) -> int:
    """The LLM calls' generated tokens over the runs that succeeded."""
    return sum(llm_detail(r).get("output_tokens") or 0 for r in rows if r["ok"])


def open_loop_probe(
    client: Callable[[], httpx.Client],
    gid: str,
    daemon_pid: int,
    rate: float,
    seconds: float,
    seed: int,
    lone_run_ms: float | None = None,
) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` for ``seconds``: does the deployment keep up, and what does the runtime spend?

    It keeps up when every run succeeds, the median client e2e of the last third of the arrivals is at most
    ``GROWTH_LIMIT`` × that of the first third (past capacity the backlog, so the wait, grows with time), and the
    median is at most ``LONE_RUN_LIMIT`` × ``lone_run_ms`` (a short probe can start in a slow spell and recover
    inside the window, so growth alone passes overloaded rates). Unlike a closed loop holding the engine's whole
    batch, the probe loads the runtime only as much as the rate does, and its CPU per run (``runtime_cpu``) is the
    runtime's at that rate."""
    from simulator.arrivals import arrival_times

    times = arrival_times("poisson", rate, seconds, seed)
    cpu0 = _process_cpu_s(daemon_pid)
    rows = replay(client, gid, times, lambda i: {"brief": BRIEFS[i % len(BRIEFS)]})
    ok = [r for r in rows if r["ok"]]
    cpu = runtime_cpu(cpu0, _process_cpu_s(daemon_pid), len(ok), llm_output_tokens(rows))
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "seed": seed,
        "runs": len(rows),
        "failed": len(rows) - len(ok),
        "p50_ms": pct([r["client_ms"] for r in ok], 50) if ok else None,
        "p99_ms": pct([r["client_ms"] for r in ok], 99) if ok else None,
        **keeps_up(rows, lone_run_ms),
        "runtime_cpu": cpu,
    }


def keeps_up(rows: Sequence[dict[str, Any]], lone_run_ms: float | None = None) -> dict[str, Any]:
    """``growth``: the median client e2e of the last third of the runs (in arrival order) ÷ the first third's;
    ``vs_lone``: the median ÷ ``lone_run_ms``; ``keeps_up``: every run succeeded, at least 9 were sent, growth ≤
    ``GROWTH_LIMIT`` and vs_lone ≤ ``LONE_RUN_LIMIT`` (not checked without ``lone_run_ms``)."""
    third = max(1, len(rows) // 3)
    first = [r["client_ms"] for r in rows[:third] if r["ok"]]
    last = [r["client_ms"] for r in rows[-third:] if r["ok"]]
    growth = statistics.median(last) / statistics.median(first) if first and last else math.inf
    done = [r["client_ms"] for r in rows if r["ok"]]
    vs_lone = statistics.median(done) / lone_run_ms if done and lone_run_ms else None
    ok = all(r["ok"] for r in rows) and len(rows) >= 9 and growth <= GROWTH_LIMIT
    ok = ok and (vs_lone is None or vs_lone <= LONE_RUN_LIMIT)
    return {"growth": growth, "vs_lone": vs_lone, "keeps_up": ok}


def capacity_by_probes(
    probe: Callable[[float, int], dict[str, Any]], guess: float, probes: int, step: float = 1.4
) -> dict[str, Any]:
    """The highest Poisson rate the deployment keeps up with, bracketed by open-loop probes: from ``guess``, up
    (× ``step``) while it keeps up or down (÷ ``step``) while it does not, then bisection; ``probes`` in all.
    ``capacity_per_s`` is the highest rate kept up with (None if none was), ``above_per_s`` the lowest not."""
    kept: float | None = None
    lost: float | None = None
    rate = guess
    runs = []
    for k in range(probes):
        r = probe(rate, k)
        runs.append(r)
        print(
            f"probe {k}: {rate:.2f} runs/s, {r['runs']} runs ({r['failed']} failed), growth {r['growth']:.2f}, "
            f"median {_fmt(r['vs_lone'], '{:.1f}')} × a lone run's, "
            f"p50 {_fmt(r['p50_ms'])} ms: {'keeps up' if r['keeps_up'] else 'falls behind'}",
            flush=True,
        )
        if r["keeps_up"]:
            kept = max(kept or 0.0, rate)
        else:
            lost = min(lost or math.inf, rate)
        if kept is not None and lost is not None:
            rate = (kept + lost) / 2
        else:
            rate = rate * step if lost is None else rate / step
    best = next((r for r in runs if r["keeps_up"] and r["rate_per_s"] == kept), None)
    return {"capacity_per_s": kept, "above_per_s": lost, "probes": runs, "at_capacity": best}


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
    engine_s = sum(engine_e2e_ms(r) or 0.0 for r in rows if r["ok"]) / 1000.0
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


@contextlib.contextmanager
def cpu_timeline(period_s: float = 1.0) -> Iterator[list[list[float]]]:
    """Every ``period_s`` while the block runs: [seconds from its start, other processes' share of the CPU, the
    hypervisor's steal share, cores this script's tree used]; to find what a slow spell of the engine coincides
    with."""
    from costmodels.calibrate import OtherLoad

    samples: list[list[float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            with OtherLoad(tree=True) as load:
                stop.wait(period_s)
            if load.fraction is not None:
                cores = (load.own_cpu_s or 0.0) / period_s
                now_s = round(time.perf_counter() - t0, 1)
                samples.append([now_s, round(load.fraction, 3), round(load.steal_fraction or 0, 3), round(cores, 2)])

    thread = threading.Thread(target=sample, name="cpu-timeline", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def _fmt(x: float | None, pattern: str = "{:.0f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else pattern.format(x)


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| load | rate runs/s | runs (ok) | other CPU | measured p50 / p99 ms | (a) plan: sim p50 / p99 ms | "
        "(a) error p50 / p99 | (b) fed back: sim p50 / p99 ms | (b) error p50 / p99 | "
        "(c) + runtime CPU: sim p50 / p99 ms | (c) error p50 / p99 | TTFT p50 measured / (a) / (b) / (c) ms | "
        "(d) (c) + host steal: error p50 / p99 |"
    )
    lines = [head, "|" + "---|" * 13]
    nan = {"p50_ms": math.nan, "p99_ms": math.nan, "p50_error": math.nan, "p99_error": math.nan}
    for r in results:
        m, a, b = r["measured"], r["plan"], r["fed_back"]
        c, d = r.get("runtime") or nan, r.get("with_steal") or nan  # r["steal"] is the measured share
        lines.append(
            f"| {r['fraction']:.0%} | {r['rate_per_s']:.2f} | {r['runs']} ({r['succeeded']}) | "
            f"{_fmt(r['other_cpu'], '{:.0%}')} | {m['p50_ms']:.0f} / {m['p99_ms']:.0f} | "
            f"{a['p50_ms']:.0f} / {a['p99_ms']:.0f} | {a['p50_error']:+.0%} / {a['p99_error']:+.0%} | "
            f"{b['p50_ms']:.0f} / {b['p99_ms']:.0f} | {b['p50_error']:+.0%} / {b['p99_error']:+.0%} | "
            f"{c['p50_ms']:.0f} / {c['p99_ms']:.0f} | {c['p50_error']:+.0%} / {c['p99_error']:+.0%} | "
            f"{_fmt(m['ttft_p50_ms'])} / {_fmt(a['ttft_p50_ms'])} / {_fmt(b['ttft_p50_ms'])} / "
            f"{_fmt(c.get('ttft_p50_ms'))} | {d['p50_error']:+.0%} / {d['p99_error']:+.0%} |"
        )
    return "\n".join(lines)


def runtime_options(out: dict[str, Any], plan: Any, at_rate: dict[str, Any] | None = None) -> dict[str, Any]:
    """SimOptions' runtime_* fields from the bench's measurements: the runtime's CPU ``at_rate`` (a lead-in's
    ``runtime_cpu``: measured at the rate simulated), else at capacity; the daemon shares the cores of the plan's
    CPU device (on ``local``, its only device)."""
    cpu = [d.device for d in plan.devices if d.device_class == "cpu"]
    rt = at_rate or out.get("runtime_cpu") or {}
    return {
        "runtime_device": cpu[0] if len(cpu) == 1 else None,
        "runtime_cpu_s_per_run": rt.get("runtime_cpu_s_per_run", 0.0),
        "runtime_cpu_s_per_output_token": rt.get("runtime_cpu_s_per_output_token", 0.0),
        "engine_cores_busy": (out.get("engine_cores") or {}).get("engine_cores_busy"),
        "max_runs_in_flight": out.get("max_runs_in_flight"),
    }


def recorded(path: Path, row: dict[str, Any]) -> tuple[list[list[float]], list[list[Any]]]:
    """A stored rate's 1 s CPU timeline and its runs' (arrival s, client ms, engine ms), recorded together; a clear
    exit for a run made before they were."""
    if not row.get("cpu_timeline") or not row.get("runs_detail"):
        raise SystemExit(f"{path}: rate {row['rate_per_s']:.2f} has no cpu_timeline (made before it was recorded)")
    return list(row["cpu_timeline"]), list(row["runs_detail"])


def steal_of(timeline: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """SimOptions.cpu_steal from a ``cpu_timeline``: (seconds from the window's start, the host's steal share)."""
    return [(t_s, min(share, 0.99)) for t_s, _, share, *_ in timeline]


STEAL_QUIET = 0.05  # a run is on a quiet host when no second of its life had more steal than this


def steal_report(path: Path) -> int:
    """Per rate of a finished run's JSON: the hypervisor's steal while it ran, and the measured e2e of the runs no
    steal touched (every 1 s sample from arrival − 1 s to finish + 1 s at most ``STEAL_QUIET``) beside the others'.
    On a shared VM, steal is CPU time the host gave to other guests: no process here shows it, and an engine step
    stretches by it."""
    done = json.loads(path.read_text())
    print(
        "| load | rate runs/s | mean steal | seconds with steal > 10 % | quiet-host runs: n, p50 / p99 ms | "
        "steal-hit runs: n, p50 / p99 ms | (c) sim p50 / p99 ms, all runs |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in done["results"]:
        timeline, detail = recorded(path, r)
        quiet: list[float] = []
        hit: list[float] = []
        for arrival_s, client_ms, _ in detail:
            if client_ms is None:
                continue
            life = [x[2] for x in timeline if arrival_s - 1.0 <= x[0] <= arrival_s + client_ms / 1000.0 + 1.0]
            (quiet if max(life, default=0.0) <= STEAL_QUIET else hit).append(client_ms)

        def cell(xs: list[float]) -> str:
            return f"{len(xs)}, {pct(xs, 50):,.0f} / {pct(xs, 99):,.0f}" if xs else "0"

        c = r.get("runtime") or {}
        print(
            f"| {r['fraction']:.0%} | {r['rate_per_s']:.2f} | {r.get('steal') or 0:.1%} | "
            f"{sum(1 for x in timeline if x[2] > 0.1)} of {len(timeline)} | {cell(quiet)} | {cell(hit)} | "
            f"{_fmt(c.get('p50_ms'), '{:,.0f}')} / {_fmt(c.get('p99_ms'), '{:,.0f}')} |"
        )
    return 0


def engine_report(path: Path) -> int:
    """Per rate of a finished run's JSON: how many requests the engine held on average (Σ the runs' engine e2e ÷ the
    span from the first's start to the last's finish), the engine's median time per output token, and the
    calibrated roofline's decode step at that batch (the profile under HETAGENT_DATA_DIR): how much slower the
    engine stepped under load than the cost model says."""
    from costmodels import work as W
    from costmodels.catalog import load_catalog
    from costmodels.roofline import roofline_step_s

    done = json.loads(path.read_text())
    catalog = load_catalog()
    model = catalog.model(done["model"])
    print(
        "| load | rate runs/s | requests in the engine (mean) | engine ms per output token (median) | "
        "roofline ms | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for r in done["results"]:
        finished = [(a, c, e) for a, c, e in recorded(path, r)[1] if c is not None and e]
        spans = [(a + (c - e) / 1000.0, a + c / 1000.0) for a, c, e in finished]
        prompt, output = r["tokens"]["prompt_tokens"][1], r["tokens"]["output_tokens"][1]
        in_engine = sum(t - s0 for s0, t in spans) / (max(t for _, t in spans) - min(s0 for s0, _ in spans))
        per_token_ms = statistics.median(e for _, _, e in finished) / output
        device = catalog.device(next(o["device"] for o in done["plan_doc"]["ops"] if o["kind"] == "decode"))
        work = W.decode_step_work(model, W.decode_mean_context(round(prompt), round(output)), max(1, round(in_engine)))
        roof_ms = roofline_step_s(work, device, model.dtype, cores=device.cores)[0] * 1000.0
        print(
            f"| {r['fraction']:.0%} | {r['rate_per_s']:.2f} | {in_engine:.1f} | {per_token_ms:.1f} | {roof_ms:.1f} | "
            f"{per_token_ms / roof_ms:.2f} |"
        )
    return 0


def resimulate(
    path: Path,
    slowdown: float,
    size_sigma: float,
    runtime_cpu: bool = False,
    steal: bool = False,
    steal_model: str = "gang",
) -> int:
    """Simulate a finished validation's rows again (the same arrival lists: rate and seed), with the LLM ops
    slowed by ``slowdown``: e.g. the measured ÷ planned ratio of the light rate, to see whether the queueing
    model holds once the service time is right; ``steal``: with the host's steal each row's timeline measured
    (SimOptions.cpu_steal), charged as ``steal_model`` says. The plan is the stored one, else planned
    again (deterministic) and checked against the stored prediction."""
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
    if runtime_cpu and "runtime_cpu" not in done:
        raise SystemExit(f"{path} has no runtime_cpu measurement (made before it was measured)")
    print(
        f"{done['graph']} ({done['date']}): LLM ops × {slowdown:g}; runtime CPU "
        f"{'per rate, at its lead-in (else at capacity)' if runtime_cpu else 'not charged'}; "
        f"host steal {f'as measured ({steal_model})' if steal else 'not charged'}"
    )
    print(
        "| load | rate runs/s | runs (ok) | runtime CPU core-s per run / ms per token | measured p50 / p99 ms | "
        "sim p50 / p99 ms | error p50 / p99 |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in done["results"]:
        times = arrival_times("poisson", r["rate_per_s"], done.get("duration_s", 90.0), r["seed"])
        if len(times) != r["runs"]:
            raise SystemExit(f"{len(times)} arrivals regenerated, the run had {r['runs']}: pass the run's --duration")
        options: dict[str, Any] = {}
        if runtime_cpu:  # the CPU measured at this row's rate, when a lead-in measured it
            options |= runtime_options(done, plan, (r.get("lead_in") or {}).get("runtime_cpu"))
        if steal:
            options |= {"cpu_steal": steal_of(recorded(path, r)[0]), "steal_model": steal_model}
        sim = simulate(slowed, graph_yaml, done["cluster"], times, r["seed"], size_sigma, options)
        m = r["measured"]
        charged = (
            f"{options['runtime_cpu_s_per_run']:.2f} / {options['runtime_cpu_s_per_output_token'] * 1000:.2f}"
            if runtime_cpu
            else "–"
        )
        print(
            f"| {r['fraction']:.0%} | {r['rate_per_s']:.2f} | {r['runs']} ({r['succeeded']}) | {charged} | "
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
    p.add_argument("--capacity-s", type=float, default=30.0, help="Seconds of the closed loop (the first guess).")
    p.add_argument("--probes", type=int, default=5, help="Open-loop probes bracketing the capacity.")
    p.add_argument("--probe-s", type=float, default=45.0, help="Seconds of Poisson arrivals per probe.")
    p.add_argument("--duration", type=float, default=90.0, help="Seconds of Poisson arrivals per rate.")
    p.add_argument(
        "--lead-in-runs",
        type=int,
        default=30,
        help="Before each rate's measured window, this many runs (expected) at the same rate, other arrivals: the "
        "daemon's online calibration and the runtime's CPU (charged by (c)) are then those of the rate. 0: none.",
    )
    p.add_argument("--lead-in-s", type=float, default=30.0, help="Shortest lead-in, seconds.")
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
    p.add_argument(
        "--steal",
        action="store_true",
        help="With --resimulate: take out of the CPU cores the host's steal each rate's timeline measured.",
    )
    p.add_argument(
        "--steal-model",
        choices=("proportional", "gang"),
        default="gang",
        help="How (d) and --resimulate --steal charge steal (SimOptions.steal_model).",
    )
    p.add_argument(
        "--engine-report",
        type=Path,
        default=None,
        help="No runs: per rate of this --json output, the engine's time per output token vs the roofline's.",
    )
    p.add_argument(
        "--steal-report",
        type=Path,
        default=None,
        help="No runs: per rate of this --json output, the host's steal and the runs it did not touch.",
    )
    a = p.parse_args()
    if a.engine_report is not None:
        return engine_report(a.engine_report)
    if a.steal_report is not None:
        return steal_report(a.steal_report)
    if a.resimulate is not None:
        return resimulate(a.resimulate, a.slowdown, a.size_sigma, a.runtime_cpu, a.steal, a.steal_model)
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
    with start_daemon() as d, d.client(timeout_s=600) as c:
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
        daemon_pid = d.proc.pid
        client = functools.partial(d.client, timeout_s=600)
        warm: list[dict[str, Any]] = []
        for i in range(a.warmup):
            if i == 1:  # the first run warms the engine up; the others, one at a time, time its cores
                cpu_w = _process_cpu_s(daemon_pid)
            row = run_row(c, gid, {"brief": BRIEFS[i % len(BRIEFS)]})
            warm += [row] if i >= 1 else []
            print(f"warm-up {i}: {row['status']} {_fmt(row['e2e_ms'])} ms", flush=True)
        if warm:
            out["engine_cores"] = engine_cores(cpu_w, _process_cpu_s(daemon_pid), warm)
            print(f"engine cores busy while stepping: {out['engine_cores']}", flush=True)
        lone = [r["client_ms"] for r in warm if r["ok"]]
        lone_run_ms = statistics.median(lone) if lone else None  # the probes' latency bound is relative to it
        out["lone_run_ms"] = lone_run_ms
        out["max_runs_in_flight"] = Settings().max_runs_in_flight  # the daemon's run threads (its env is ours)
        engine_seqs = max((int(e["batch"]) for e in plan.engines), default=1)
        if a.capacity is None:
            cpu0 = _process_cpu_s(daemon_pid)
            with other_load() as load:
                cap = closed_loop(client, gid, engine_seqs, a.capacity_s)
            cap["other_cpu"] = load.fraction
            cap["runtime_cpu"] = runtime_cpu(cpu0, _process_cpu_s(daemon_pid), cap["runs"], cap["output_tokens"])
            out["closed_loop"] = cap
            if not cap["runs_per_s"] > 0:
                raise SystemExit(f"no run completed in the closed loop: {cap['errors']}")
            print(f"closed loop ({engine_seqs} clients): {cap['runs_per_s']:.2f} runs/s", flush=True)
            with other_load() as load:
                found = capacity_by_probes(
                    lambda rate, k: open_loop_probe(
                        client, gid, daemon_pid, rate, a.probe_s, a.seed + 100 + k, lone_run_ms
                    ),
                    cap["runs_per_s"],
                    a.probes,
                )
            found["other_cpu"] = load.fraction
            out["capacity"] = found
            if found["capacity_per_s"] is None:
                raise SystemExit(f"no probe kept up, the lowest at {min(p['rate_per_s'] for p in found['probes'])}")
            capacity = found["capacity_per_s"]
            out["runtime_cpu"] = found["at_capacity"]["runtime_cpu"]  # (c)'s charge: the runtime near capacity
        else:
            out["capacity"] = {"given_runs_per_s": a.capacity}
            out["runtime_cpu"] = {"runtime_cpu_s_per_run": 0.0, "runtime_cpu_s_per_output_token": 0.0}
            capacity = a.capacity
        print(f"capacity {capacity:.2f} runs/s (plan: {out['plan']['capacity_per_s']:.2f})", flush=True)
        for k, frac in enumerate(fractions):
            rate, seed = frac * capacity, a.seed + k
            lead = None
            if a.lead_in_runs > 0:  # the daemon runs at this rate first: its calibration and the runtime's CPU
                lead_s = max(a.lead_in_s, a.lead_in_runs / rate)
                print(f"lead-in at {rate:.2f} runs/s for {lead_s:.0f} s", flush=True)
                lead = open_loop_probe(client, gid, daemon_pid, rate, lead_s, seed + 1000)
                time.sleep(d.control_interval_s + 1.0)  # a control pass refits on the lead-in's last runs
            slowdown = device_slowdown(c.get("/v1/hardware").json())  # fed back from the runs so far
            rt = runtime_options(out, plan, lead["runtime_cpu"] if lead else None)
            times = arrival_times("poisson", rate, a.duration, seed)
            with other_load() as load, cpu_timeline() as timeline:
                rows = replay(client, gid, times, lambda i: {"brief": BRIEFS[i % len(BRIEFS)]})
            with_steal = {**rt, "cpu_steal": steal_of(timeline), "steal_model": a.steal_model}  # as measured
            sims = {
                "plan": simulate(plan, graph_yaml, a.cluster, times, seed, a.size_sigma),
                "fed_back": simulate(fed_back(plan, slowdown), graph_yaml, a.cluster, times, seed, a.size_sigma),
                "runtime": simulate(plan, graph_yaml, a.cluster, times, seed, a.size_sigma, rt),
                "with_steal": simulate(plan, graph_yaml, a.cluster, times, seed, a.size_sigma, with_steal),  # (d)
            }
            res = {"fraction": frac, "rate_per_s": rate, "seed": seed, **compare(rows, sims)}
            res["lead_in"] = lead
            res["runtime_charged"] = rt
            res["other_cpu"] = load.fraction
            res["steal"] = load.steal_fraction
            res["cpu_timeline"] = timeline
            res["runs_detail"] = [  # arrival s, client ms, the engine's own e2e ms (vLLM: arrival → finish)
                [r["arrival_s"], r["client_ms"], engine_e2e_ms(r)] for r in rows
            ]
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
