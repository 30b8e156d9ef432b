"""`hetagent simulate`: replay a plan under load in the discrete-event simulator (simulator/core.py)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer


class SimFormat(str, Enum):
    table = "table"
    json = "json"


def simulate(
    plan_json: Path = typer.Argument(..., help="A plan written by `hetagent plan --format json` (or -o)."),
    graph: Path = typer.Option(..., "--graph", help="The agent graph spec the plan was made for (YAML or JSON)."),
    rate: float | None = typer.Option(
        None, help="Arrival rate, graph runs per second (poisson, bursty; default: the plan's rate)."
    ),
    duration: float = typer.Option(600.0, help="Seconds of arrivals; the runs in flight then drain."),
    arrivals: str = typer.Option("poisson", help="poisson, bursty:CV (gamma gaps of that CV) or a trace CSV."),
    seed: int = typer.Option(7, help="Seed of every random stream: the same seed gives the same result."),
    size_sigma: float = typer.Option(0.5, help="σ of the log-normal request sizes around the spec's (0: fixed)."),
    format: SimFormat = typer.Option(SimFormat.table, "--format", help="table or json."),  # noqa: A002
) -> None:
    """Simulate a plan: e2e and TTFT percentiles, SLA attainment, per-op utilisation and queues, $ per 1,000 runs."""
    from pydantic import ValidationError

    from compiler.ir import compile_graph
    from costmodels.catalog import load_cluster
    from orchestrator.cli import _fail, _load, _user_errors
    from planner.pipeline import apply_model_overrides
    from planner.plan import Plan
    from simulator.arrivals import ArrivalError, arrival_times
    from simulator.core import SimOptions, SimulationError, runtime_options, simulate as run_simulation

    try:
        plan = Plan.model_validate_json(plan_json.read_text())
    except OSError as exc:
        _fail(f"cannot read {plan_json}: {exc}")
    except ValidationError as exc:
        _fail(f"{plan_json} is not a plan:\n{exc}")
    try:
        spec, catalog = _load(graph)
        if spec.metadata.name != plan.graph:
            _fail(f"{plan_json} is a plan for graph {plan.graph!r}, but {graph} is {spec.metadata.name!r}")
        cluster = load_cluster(plan.cluster, catalog)
        _, granular = compile_graph(apply_model_overrides(spec, cluster, catalog), catalog)
        times = arrival_times(arrivals, plan.rate_per_s if rate is None else rate, duration, seed)
        opts = SimOptions(
            seed=seed, size_sigma=size_sigma, sla_percentile=spec.spec.sla.percentile, **runtime_options(cluster)
        )
        result = run_simulation(plan, granular, catalog, times, opts)
    except (*_user_errors(), ArrivalError, SimulationError, ValidationError) as exc:
        _fail(str(exc))
    if format is SimFormat.json:
        sys.stdout.write(json.dumps(result.model_dump(), indent=2) + "\n")
        return
    _print(result)


def _print(r) -> None:  # r: simulator.core.SimResult
    from rich.table import Table

    from orchestrator.cli import out

    out.print(
        f"{r.graph}: {r.completed}/{r.runs} runs (seed {r.seed}, {r.horizon_s:.1f} simulated s) — "
        f"e2e p50 {r.p50_ms:.0f} ms, p95 {r.p95_ms:.0f} ms, p99 {r.p99_ms:.0f} ms",
        highlight=False,
    )
    if r.ttft_p50_ms is not None:
        out.print(
            f"TTFT p50 {r.ttft_p50_ms:.0f} ms, p95 {r.ttft_p95_ms:.0f} ms, p99 {r.ttft_p99_ms:.0f} ms", highlight=False
        )
    verdict = "met" if r.sla_met else "MISSED"
    out.print(
        f"SLA {r.sla_ms:g} ms at p{r.sla_percentile:g}: {r.attainment:.1%} of runs within it — {verdict}",
        highlight=False,
    )
    if r.usd_per_1k_runs is not None:
        out.print(f"${r.usd_per_1k_runs:.4f} per 1,000 runs", highlight=False)
    t = Table("op", "device", "replicas", "calls", "util", "mean queue", "max queue", "mean wait ms", "batch")
    for name, o in r.ops.items():
        t.add_row(
            name,
            o.device,
            str(o.replicas),
            str(o.calls),
            f"{o.utilisation:.2f}",
            f"{o.mean_queue:.2f}",
            str(o.max_queue),
            f"{o.mean_wait_ms:.1f}",
            "" if o.mean_batch is None else f"{o.mean_batch:.1f}",
        )
    out.print(t)
