"""`hetagent study`: TCO vs SLA and vs rate for every example graph on homogeneous and mixed fleets
(orchestrator/study.py sweeps, orchestrator/study_report.py plots and writes docs/tco-study.md)."""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from orchestrator.study import StudyError

if TYPE_CHECKING:
    from costmodels.catalog import Catalog, ClusterInventory


def log_points(lo: float, hi: float, n: int) -> list[float]:
    """``n`` log-spaced values from lo to hi, rounded to 3 significant digits."""
    if not (0 < lo < hi) or n < 2:
        raise StudyError(f"need 0 < LO < HI and at least 2 points, got {lo:g}:{hi:g} with {n}")
    return [float(f"{lo * (hi / lo) ** (i / (n - 1)):.3g}") for i in range(n)]


def parse_range(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(lo), float(hi)
    except ValueError:
        raise StudyError(f"--sla-ms takes LO:HI in ms (e.g. 1000:30000), got {text!r}") from None


def load_clusters(folder: Path, catalog: Catalog, exclude_prefix: str = "local") -> list[ClusterInventory]:
    """The cluster files of a folder, sorted by name, less those whose name starts with ``exclude_prefix``."""
    from costmodels.catalog import load_cluster

    if not folder.is_dir():
        raise StudyError(f"--clusters: {folder} is not a folder")
    out = [load_cluster(p, catalog) for p in sorted(folder.glob("*.yaml"))]
    out = [c for c in out if not (exclude_prefix and c.name.startswith(exclude_prefix))]
    if not out:
        raise StudyError(f"no cluster files in {folder}")
    return out


class StudyFormat(str, Enum):
    markdown = "markdown"
    json = "json"


def study(
    graphs: Path = typer.Argument(..., help="An agent graph spec, or a folder of them (*.yaml)."),
    clusters: Path = typer.Option(Path("configs/clusters"), help="Folder of cluster inventories to build fleets from."),
    headline: str = typer.Option("mixed_fleet_cloud", help="The mixed cluster every ratio divides by."),
    exclude_prefix: str = typer.Option("local", help="Leave out clusters whose name starts with this ('' keeps all)."),
    sla_ms: str = typer.Option("1000:30000", "--sla-ms", help="SLA range LO:HI in ms, swept log-spaced."),
    points: int = typer.Option(6, help="SLA points in the range."),
    rate: float = typer.Option(10.0, help="Runs/s of the TCO-vs-SLA sweep (the example specs carry no rate)."),
    rates: str = typer.Option("1,10,100", help="Comma-separated runs/s of the TCO-vs-rate sweep (at the spec SLA)."),
    time_limit_s: float = typer.Option(10.0, help="MIP time limit per plan, s."),
    out: Path = typer.Option(Path("docs/tco-study"), "--out", help="Folder of the PNG plots."),
    markdown: Path | None = typer.Option(
        None, help="Markdown report path (default: OUT with a .md suffix, e.g. docs/tco-study.md)."
    ),
    dpi: int = typer.Option(80, help="Resolution of the PNGs."),
    format: StudyFormat = typer.Option(  # noqa: A002
        StudyFormat.markdown, "--format", help="markdown (write the report and plots) or json (print the study too)."
    ),
    quiet: bool = typer.Option(False, help="No progress lines on stderr."),
) -> None:
    """Plan every graph on every fleet across SLAs and rates; plot TCO and write the report."""
    from costmodels.catalog import load_catalog
    from orchestrator.cli import _fail, _user_errors
    from orchestrator.study import run_study

    try:
        files = sorted(graphs.glob("*.yaml")) if graphs.is_dir() else [graphs]
        if not files or not files[0].exists():
            raise StudyError(f"no graph specs at {graphs}")
        lo, hi = parse_range(sla_ms)
        slas = log_points(lo, hi, points)
        try:
            rate_list = [float(r) for r in rates.split(",") if r.strip()]
        except ValueError:
            raise StudyError(f"--rates takes comma-separated runs/s, got {rates!r}") from None
        if rate <= 0 or any(r <= 0 for r in rate_list):
            raise StudyError("rates must be > 0")
        catalog = load_catalog()
        inventories = load_clusters(clusters, catalog, exclude_prefix)
        progress = None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
        result = run_study(files, inventories, catalog, slas, rate_list, rate, headline, time_limit_s, progress)
    except (*_user_errors(), StudyError) as exc:
        _fail(str(exc))
    try:
        from orchestrator.study_report import write_markdown, write_plots
    except ImportError as exc:  # pragma: no cover - matplotlib comes with the 'calibrate' extra
        _fail(f"the study's plots need matplotlib (pip install 'hetagent[calibrate]'): {exc}")
    md = markdown or out.with_suffix(".md")
    command = "hetagent study " + shlex.join(
        [str(graphs), "--clusters", str(clusters), "--headline", headline, "--sla-ms", sla_ms, "--points", str(points)]
        + ["--rate", f"{rate:g}", "--rates", rates, "--time-limit-s", f"{time_limit_s:g}", "--out", str(out)]
    )
    write_plots(result, out, dpi)
    write_markdown(result, md, out, command)
    if format is StudyFormat.json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        print(f"wrote {md} and {len(result.graphs) * 2} plots in {out} ({result.seconds:g} s)")
