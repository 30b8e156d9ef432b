"""`hetagent costmodel …`: check the cost models against measurements, import measured profiles."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

costmodel_app = typer.Typer(
    no_args_is_help=True,
    help="Cost models against measurements: `check` (predicted vs measured), `import` (measured profiles).",
)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    """NAME=ID options as a mapping; a malformed or repeated NAME is an error."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, ident = v.partition("=")
        if not sep or not name or not ident:
            raise typer.BadParameter(f"{what} {v!r}: expected NAME=CATALOG_ID")
        if name in out:
            raise typer.BadParameter(f"{what} {name!r} mapped twice")
        out[name] = ident
    return out


def _ints(text: str | None) -> list[int]:
    return [int(t) for t in text.split(",")] if text else []


@costmodel_app.command("import")
def import_profile(
    vidur: Path | None = typer.Option(
        None, help="Vidur profiles: a <sku>/<model>/mlp.csv tree (+ attention rows), or a derived step table (CSV)."
    ),
    melange: Path | None = typer.Option(None, help="A Mélange solver input (JSON: gpu_info, workload_distribution)."),
    output: Path = typer.Option(..., "--output", "-o", help="Profiles directory to write the profile into."),
    device: list[str] = typer.Option(
        [], "--device", help="SOURCE_NAME=CATALOG_ID for every GPU (Mélange) or SKU folder (Vidur) of the source."
    ),
    model: list[str] = typer.Option(
        [], "--model", help="Vidur: MODEL_DIR=CATALOG_ID for every model. Mélange: the catalog id of its one model."
    ),
    skip: list[str] = typer.Option([], "--skip", help="Vidur: a model folder to leave out."),
    buckets: Path | None = typer.Option(
        None, help="Mélange: bucket sizes from a buckets.csv (axis, index, …, representative_tokens)."
    ),
    input_tokens: str | None = typer.Option(None, help="Mélange: prompt tokens of each tputs row, e.g. 25,100,250."),
    output_tokens: str | None = typer.Option(None, help="Mélange: generated tokens of each tputs column."),
    tpot_ms: float | None = typer.Option(None, help="Mélange: the TPOT SLO its tputs hold under, ms."),
    case: str | None = typer.Option(None, help="Mélange: which input of a file that holds several."),
    name: str | None = typer.Option(None, help="File name in the profiles directory (default: from the source)."),
) -> None:
    """Import measured profiles: they override the roofline wherever they cover (hetagent plan --profiles DIR)."""
    import sys

    from costmodels.catalog import load_catalog
    from costmodels.profile_import import import_melange, import_vidur, melange_bucket_edges
    from costmodels.profiles import write_profile_file
    from orchestrator.cli import _fail, _user_errors

    if (vidur is None) == (melange is None):
        _fail("give exactly one of --vidur DIR and --melange FILE")
    command = "hetagent " + " ".join(sys.argv[1:])
    try:
        catalog = load_catalog()
        if vidur is not None:
            profile = import_vidur(
                vidur,
                catalog,
                devices=_pairs(device, "--device"),
                models=_pairs(model, "--model"),
                skip_models=set(skip),
                command=command,
            )
            default = f"vidur-{vidur.stem}.json"
        else:
            assert melange is not None  # one of the two, checked above
            if len(model) != 1 or "=" in model[0]:
                _fail("--melange needs exactly one --model CATALOG_ID (Mélange's input does not name its model)")
            ins, outs = melange_bucket_edges(buckets) if buckets else (_ints(input_tokens), _ints(output_tokens))
            if not ins or not outs:
                _fail("--melange needs the bucket sizes: --buckets FILE, or --input-tokens and --output-tokens")
            profile = import_melange(
                melange,
                catalog,
                model=model[0],
                devices=_pairs(device, "--device"),
                input_tokens=ins,
                output_tokens=outs,
                tpot_slo_ms=tpot_ms,
                case=case,
                command=command,
            )
            default = f"melange-{melange.stem}{'-' + case if case else ''}.json"
    except (*_user_errors(), ValueError) as exc:
        _fail(str(exc))
    path = write_profile_file(profile, output / (name or default))
    rows = len(profile.steps) + len(profile.rates)
    typer.echo(f"wrote {path}: {rows} {profile.kind} rows")


class CheckFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


@costmodel_app.command("check")
def check(
    profiles: Path | None = typer.Option(
        None,
        help="Measured step profiles: a file, or a directory of *.csv (the format of configs/profiles/"
        "a100_vidur_derived.csv; bench/gpu_profile.py writes it) and *.json (`costmodel import`). "
        "Default: configs/profiles/ (Vidur's A100 kernel timings).",
    ),
    device: str | None = typer.Option(None, help="Only this catalog device's rows, e.g. a100-80g."),
    measure_cpu: bool = typer.Option(
        False,
        "--measure-cpu",
        help="Also time transformer layers on this CPU now (PyTorch; costmodels/step_profile.py; the rows are written "
        "beside the plot) and check the catalog's local-cpu entry (a `hetagent calibrate` profile where there is one).",
    ),
    quick: bool = typer.Option(False, help="With --measure-cpu: tiny layer shapes (seconds)."),
    fit: bool = typer.Option(
        False, help="Also fit each device's efficiencies to its rows (costmodels/fit.py): print them and their errors."
    ),
    holdout: str = typer.Option(
        "", metavar="MODEL[,MODEL]", help="With --fit: leave these models' rows out of the fit and report them apart."
    ),
    plot: Path | None = typer.Option(
        None, help="Predicted-vs-measured scatter PNG (default: <data dir>/costmodel-check.png)."
    ),
    worst: int = typer.Option(3, min=0, help="Worst rows listed per device and phase."),
    output_format: CheckFormat = typer.Option(CheckFormat.table, "--format", help="table, json or markdown."),
) -> None:
    """Predicted vs measured step times: per device and phase n, median and p90 |error|, the worst rows, a PNG."""
    import json

    from costmodels import check as C
    from costmodels.catalog import load_catalog
    from orchestrator.cli import DEFAULT_DATA_DIR, _fail, _user_errors, out

    try:
        catalog = load_catalog()
        rows = C.load_profile_rows(profiles or C.SHIPPED_PROFILES, catalog)
        png_path = plot or DEFAULT_DATA_DIR / "costmodel-check.png"
        cpu_profile = _measure_cpu(catalog, png_path.parent, quick) if measure_cpu else None
        if cpu_profile is not None:
            rows += C.read_profile_csv(cpu_profile, catalog)
        if device is not None:
            rows = [r for r in rows if r.device == catalog.device(device).name]
        if not rows:
            _fail(f"no measured rows{' of ' + device if device else ''}")
        checked = C.check_rows(rows, catalog)
        summary = C.summarise(checked, worst)
        fits = _fits(rows, catalog, {m.strip() for m in holdout.split(",") if m.strip()}, worst) if fit else {}
    except (*_user_errors(), ValueError) as exc:
        _fail(str(exc))
    png = C.scatter_png(checked, png_path)
    if output_format is CheckFormat.json:
        fit_doc = {
            name: {**f, **{part: C.summary_json({name: f[part]}).get(name, {}) for part in ("train", "holdout")}}
            for name, f in fits.items()
        }
        doc = {"devices": C.summary_json(summary), "fit": fit_doc, "plot": str(png)}
        doc["profiles"] = sorted({r.source for r in rows})
        typer.echo(json.dumps(doc, indent=2))
        return
    markdown = output_format is CheckFormat.markdown

    def show(part: dict[str, Any], title: str) -> None:
        if markdown:
            typer.echo(f"\n{title}:\n\n{C.summary_markdown(part)}")
        else:
            _print_summary(out, part, title)

    show(summary, "catalog efficiencies")
    for name, f in fits.items():
        efficiency = ", ".join(f"{k}: {v}" for k, v in f["efficiency"].items())
        typer.echo(
            f"\n{name} fitted on {f['rows']} rows of {', '.join(f['models'])} "
            f"(rms log error {f['rms_log_error']}): {efficiency}"
        )
        for part in ("train", "holdout"):
            if f[part]:
                show({name: f[part]}, f"fitted efficiencies, {part} rows")
    typer.echo(f"\nscatter: {png}")


def _fits(rows: list[Any], catalog: Any, holdout: set[str], worst: int) -> dict[str, dict[str, Any]]:
    """Per device: the fitted efficiency fields and the error with them on the fitted and the held-out rows."""
    from costmodels import check as C
    from costmodels.fit import fit_efficiency

    unknown = holdout - {r.model for r in rows}
    if unknown:
        raise ValueError(f"--holdout: no rows of {', '.join(sorted(unknown))}")
    result: dict[str, dict[str, Any]] = {}
    for name in sorted({r.device for r in rows}):
        mine = [r for r in rows if r.device == name]
        train = [r for r in mine if r.model not in holdout]
        f = fit_efficiency(train, catalog.device(name))
        checked = C.check_rows(mine, catalog, {name: f.efficiency})
        parts = {
            "train": [c for c in checked if c.row.model not in holdout],
            "holdout": [c for c in checked if c.row.model in holdout],
        }
        result[name] = {
            "efficiency": {k: getattr(f.efficiency, k) for k in f.fitted},
            "rows": f.rows,
            "models": sorted({r.model for r in train}),
            "rms_log_error": round(f.rms_log_error, 4),
            **{k: C.summarise(v, worst).get(name, {}) for k, v in parts.items()},
        }
    return result


def _print_summary(console: Any, summary: dict[str, Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("device", "phase", "n", "median |err|", "p90 |err|", "max |err|", "median pred/meas", "worst rows"):
        table.add_column(col, justify="right" if col[0] in "nmp" and col != "phase" else "left")
    for device, phases in summary.items():
        for phase, s in phases.items():
            worst = "; ".join(f"{c.row.model} {c.row.size}: {c.ratio:.2f}" for c in s.worst)
            table.add_row(
                device,
                phase,
                str(s.n),
                f"{s.median_abs_error:.1%}",
                f"{s.p90_abs_error:.1%}",
                f"{s.max_abs_error:.1%}",
                f"{s.median_ratio:.3f}",
                worst,
            )
    console.print(table)


def _measure_cpu(catalog: Any, folder: Path, quick: bool) -> Path:
    """Time the layers on this CPU (costmodels/step_profile.py) into ``folder``/local-cpu-steps.csv."""
    from costmodels import step_profile as S
    from costmodels.calibrate import OtherLoad
    from orchestrator.cli import err

    catalog.device("local-cpu")
    grid = S.GRIDS["quick" if quick else "cpu"]
    with err.status("timing transformer layers on this CPU…"), OtherLoad() as load:
        rows = S.measure(grid, device="cpu", dtype="fp32", sku="local-cpu")
    other = "unknown" if load.fraction is None else f"{load.fraction:.0%}"
    header = [
        f"command: hetagent costmodel check --measure-cpu{' --quick' if quick else ''}",
        S.machine_line("cpu"),
        f"method: costmodels/step_profile.py, eager, median of {grid.repeats}; other processes used {other} of the CPU",
    ]
    path = folder / "local-cpu-steps.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(S.profile_csv(rows, header))
    return path
