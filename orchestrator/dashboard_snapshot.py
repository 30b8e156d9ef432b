"""`hetagent dashboard snapshot`: the Grafana dashboards' panels drawn to PNG from Prometheus range
queries, for readers without a Grafana at hand (and for docs/deploy.md's pictures).

It reads the dashboards' JSON as the chart ships it (deploy/helm/hetagent/files/dashboards/, written
by ``python -m deploy.grafana``), substitutes the template variables, asks Prometheus's HTTP API for
each panel query over the last ``minutes`` and draws one picture per dashboard: one plot per panel,
one line per series, the legend Grafana would show, re-plans (the dashboard's annotation) as
vertical lines. Nothing is computed here that the panel's PromQL does not say.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

DASHBOARDS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "hetagent" / "files" / "dashboards"

dashboard_app = typer.Typer(no_args_is_help=True, help="hetagent's Grafana dashboards without a Grafana.")


class SnapshotError(Exception):
    """Prometheus refused a query, or could not be reached."""


@dataclass
class PanelQuery:
    """One query of one panel, as the dashboard JSON has it."""

    ref: str
    expr: str
    legend: str


@dataclass
class Panel:
    title: str
    type: str
    unit: str
    queries: list[PanelQuery] = field(default_factory=list)
    right: dict[str, str] = field(default_factory=dict)  # refId -> unit, for queries drawn on a right axis


def load_dashboards(folder: Path = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    """The dashboards' JSON in ``folder``, by file stem (``tco``, ``sla``)."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    if not found:
        raise SnapshotError(f"no dashboard JSON in {folder}")
    return found


def panels(dashboard: dict[str, Any]) -> list[Panel]:
    """Every panel with queries, rows' panels included, in the dashboard's order."""
    out = []
    flat: list[dict[str, Any]] = []
    for p in dashboard.get("panels", []):
        flat.extend([p, *p.get("panels", [])] if p.get("type") == "row" else [p])
    for p in flat:
        targets = [t for t in p.get("targets", []) if t.get("expr")]
        if not targets:
            continue
        unit = ((p.get("fieldConfig") or {}).get("defaults") or {}).get("unit", "")
        queries = [PanelQuery(t.get("refId", "A"), t["expr"], t.get("legendFormat", "")) for t in targets]
        right = {}
        for o in ((p.get("fieldConfig") or {}).get("overrides")) or []:
            props = {x["id"]: x.get("value") for x in o.get("properties", [])}
            if o.get("matcher", {}).get("id") == "byFrameRefID" and props.get("custom.axisPlacement") == "right":
                right[o["matcher"]["options"]] = str(props.get("unit", ""))
        out.append(Panel(p.get("title", ""), p.get("type", ""), unit, queries, right))
    return out


def annotation_exprs(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of the dashboard's annotations (re-plans)."""
    return [a["expr"] for a in (dashboard.get("annotations") or {}).get("list", []) if a.get("expr")]


def expand(expr: str, variables: dict[str, str], rate_interval: str, range_: str) -> str:
    """The query Grafana would send: ``$__rate_interval``, ``$__interval``, ``$__range`` and the template
    variables (``$var``, ``${var}``) replaced; a variable not given matches anything (``.*``)."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    expr = expr.replace("$__range", range_)

    def var(m: re.Match[str]) -> str:
        return variables.get(m.group(1) or m.group(2), ".*")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, expr)


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legend format: ``{{label}}`` replaced by the series' label."""
    if not fmt:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def query_range(prometheus: str, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
    """Prometheus's ``/api/v1/query_range`` result (``[{metric, values}]``); a refusal raises SnapshotError."""
    import httpx

    try:
        r = httpx.get(
            f"{prometheus.rstrip('/')}/api/v1/query_range",
            params={"query": expr, "start": start, "end": end, "step": step_s},
            timeout=30,
        )
        body = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise SnapshotError(f"Prometheus at {prometheus}: {exc}") from None
    if body.get("status") != "success":
        raise SnapshotError(f"query refused ({body.get('errorType')}: {body.get('error')}): {expr}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _points(values: list[list[Any]]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for t, v in values:
        y = float(v)
        if math.isfinite(y):
            xs.append(float(t))
            ys.append(y)
    return xs, ys


def snapshot(
    prometheus: str,
    out_dir: Path,
    *,
    folder: Path = DASHBOARDS_DIR,
    minutes: float = 60.0,
    step_s: float | None = None,
    rate_interval: str = "1m",
    variables: dict[str, str] | None = None,
    end: float | None = None,
    dpi: int = 80,
) -> dict[str, Path]:
    """Draw each dashboard to ``out_dir/<name>.png``; returns the pictures by dashboard name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variables = variables or {}
    end = time.time() if end is None else end
    start = end - minutes * 60
    step = step_s or max(1.0, minutes * 60 / 240)
    range_ = f"{max(1, round(minutes))}m"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, dash in load_dashboards(folder).items():
        items = panels(dash)
        marks: list[float] = []  # where an annotation's series turns positive (a re-plan), not every step after
        for a in annotation_exprs(dash):
            for series in query_range(prometheus, expand(a, variables, rate_interval, range_), start, end, step):
                last = -math.inf
                for t, v in zip(*_points(series["values"]), strict=True):
                    if v > 0 and t - last > step * 1.5:
                        marks.append(t)
                    last = t if v > 0 else last
        cols = 2
        rows = math.ceil(len(items) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(12, 2.8 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, items, strict=False):
            drawn: list[Any] = []  # the series' lines, for the legend (not the re-plan marks)
            twin = None
            for i, query in enumerate(panel.queries):
                on = ax
                if query.ref in panel.right:
                    twin = twin or ax.twinx()
                    on = twin
                    twin.set_ylabel(panel.right[query.ref], fontsize=7)
                    twin.tick_params(labelsize=7)
                expr = expand(query.expr, variables, rate_interval, range_)
                for series in query_range(prometheus, expr, start, end, step):
                    xs, ys = _points(series["values"])
                    if xs:
                        (line,) = on.plot(
                            [(x - end) / 60 for x in xs],
                            ys,
                            label=legend(query.legend, series["metric"]),
                            color=f"C{len(drawn) % 10}",
                            linestyle="-" if i == 0 else ("--", ":", "-.")[(i - 1) % 3],
                        )
                        drawn.append(line)
            for t in marks:
                ax.axvline((t - end) / 60, color="grey", linewidth=0.6, linestyle=":")
            ax.set_title(panel.title + (f" [{panel.unit}]" if panel.unit else ""), fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("minutes before now", fontsize=7)
            if drawn:
                ax.legend(drawn, [x.get_label() for x in drawn], fontsize=6, loc="best")
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        for ax in list(axes.flat)[len(items) :]:
            ax.axis("off")
        fig.suptitle(f"{dash.get('title', name)} — last {minutes:g} min (re-plans: grey dotted lines)", fontsize=11)
        fig.subplots_adjust(
            left=0.06, right=0.94, top=1 - 0.8 / (2.8 * rows), bottom=0.25 / rows, hspace=0.55, wspace=0.22
        )
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written[name] = path
    return written


@dashboard_app.command("snapshot")
def snapshot_command(
    prometheus: str = typer.Option(..., "--prometheus", help="Prometheus base URL, e.g. http://127.0.0.1:9090."),
    out: Path = typer.Option(Path("dash"), "-o", "--out", help="Folder for the pictures (<dashboard>.png)."),
    minutes: float = typer.Option(60.0, min=1, help="Time range drawn, minutes before now."),
    rate_interval: str = typer.Option("1m", help="What $__rate_interval becomes (≥ 4 scrape intervals)."),
    var: list[str] = typer.Option([], "--var", help="A template variable, NAME=REGEX (default: every value)."),
    dashboards: Path = typer.Option(DASHBOARDS_DIR, help="Folder of the dashboards' JSON."),
    dpi: int = typer.Option(80, min=20, help="Resolution of the pictures."),
) -> None:
    """Draw the TCO and SLA dashboards' panels to PNG from Prometheus range queries."""
    from orchestrator.cli import _fail

    variables = {}
    for item in var:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--var {item!r}: expected NAME=REGEX")
        variables[key] = value
    try:
        written = snapshot(
            prometheus,
            out,
            folder=dashboards,
            minutes=minutes,
            rate_interval=rate_interval,
            variables=variables,
            dpi=dpi,
        )
    except SnapshotError as exc:
        _fail(str(exc))
    for path in written.values():
        typer.echo(path)
