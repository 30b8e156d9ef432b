"""The soak's accounting and report (bench/soak.py): is every accepted run in exactly one terminal
state through the API, in /metrics and in the database; latency percentiles per time bucket; the
RSS slope; the Markdown table. Pure functions of what was recorded, so a test can hand them crafted
records (a run deleted, an ``end`` event twice, a counter off by one) and see each fault found.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

FINAL = ("succeeded", "failed", "cancelled", "interrupted")  # orchestrator.store.FINAL_RUN_STATES
RUNS_METRIC = "hetagent_runs_total"  # orchestrator.metrics.Metrics.runs: finished runs by graph and status


@dataclass
class DbRun:
    """What the database holds for one run."""

    status: str
    finished: bool  # finished_at is set
    end_events: int  # rows of its `end` event in the events table
    duplicate_records: int  # op records stored more than once for one node
    rows: int = 1  # rows with its id (the primary key allows one; counted, not assumed)


def account(
    accepted: Iterable[tuple[str, str]],
    client_final: Mapping[str, str],
    api_status: Mapping[str, str | None],
    db_runs: Mapping[str, DbRun],
    metrics_by_status: Mapping[str, float],
    submit_failures: int = 0,
) -> dict[str, Any]:
    """Check that every accepted run reached exactly one terminal state, everywhere it is recorded.

    ``accepted``: (run id, kind) for each 2xx the clients got with a run id (an id twice is a
    duplicate). ``client_final``: the final status a client saw. ``api_status``: GET /v1/runs/{id}
    at the end (None: 404). ``db_runs``: every run of the graph in the database. ``metrics_by_status``:
    the runs counter of /metrics. ``submit_failures``: submissions whose answer the client never got
    (transport errors, 5xx): the database may hold up to that many runs nobody was told
    of (``unacknowledged``); more is a fault.

    Per run: *lost* (not in the database, or the API says 404), *stuck* (not final), *duplicated*
    (accepted twice, two rows, more than one ``end`` event, an op record twice), *inconsistent* (final but the
    API, the client or the row disagree on the status, no ``finished_at``, or no ``end`` event)."""
    kinds: dict[str, str] = {}
    times: Counter[str] = Counter()
    for run_id, kind in accepted:
        kinds.setdefault(run_id, kind)
        times[run_id] += 1
    per_kind: dict[str, Counter[str]] = defaultdict(Counter)
    problems: list[str] = []
    for run_id, kind in kinds.items():
        c = per_kind[kind]
        c["accepted"] += 1
        row = db_runs.get(run_id)
        api = api_status.get(run_id)
        if row is None or api is None:
            c["lost"] += 1
            problems.append(f"{run_id} ({kind}) lost: {'not in the database' if row is None else 'API says 404'}")
            continue
        if row.status not in FINAL or api not in FINAL:
            c["stuck"] += 1
            problems.append(f"{run_id} ({kind}) stuck: database {row.status}, API {api}")
            continue
        c[row.status] += 1
        if times[run_id] > 1 or row.rows > 1 or row.end_events > 1 or row.duplicate_records > 0:
            c["duplicated"] += 1
            problems.append(
                f"{run_id} ({kind}) duplicated: accepted {times[run_id]}x, {row.rows} rows, {row.end_events} end "
                f"events, {row.duplicate_records} op records twice"
            )
        seen = client_final.get(run_id)
        if api != row.status or (seen is not None and seen != row.status) or not row.finished or row.end_events < 1:
            c["inconsistent"] += 1
            problems.append(
                f"{run_id} ({kind}) inconsistent: database {row.status}, API {api}, client {seen}, "
                f"finished_at {'set' if row.finished else 'missing'}, {row.end_events} end events"
            )
    counters = ("accepted", "lost", "duplicated", "stuck", "inconsistent", *FINAL)
    runs = {k: {n: per_kind[k][n] for n in counters} for k in sorted(per_kind)}
    runs["total"] = {n: sum(per_kind[k][n] for k in per_kind) for n in counters}
    unacknowledged = sorted(set(db_runs) - set(kinds))
    db_by_status = Counter(r.status for r in db_runs.values())
    metrics_total = sum(metrics_by_status.values())
    statuses = sorted(set(db_by_status) | {s for s, v in metrics_by_status.items() if v})
    metrics_agree = metrics_total == len(kinds) + len(unacknowledged) and all(
        metrics_by_status.get(s, 0) == db_by_status.get(s, 0) for s in statuses
    )
    if not metrics_agree:
        problems.append(
            f"/metrics {RUNS_METRIC} {dict(metrics_by_status)} (sum {metrics_total:g}) vs accepted {len(kinds)} "
            f"+ unacknowledged {len(unacknowledged)}, database {dict(db_by_status)}"
        )
    if len(unacknowledged) > submit_failures:
        problems.append(
            f"{len(unacknowledged)} runs in the database no client was told of, but only {submit_failures} "
            f"submissions failed in transit: {unacknowledged[:5]}"
        )
    faults = sum(runs["total"][n] for n in ("lost", "duplicated", "stuck", "inconsistent"))
    return {
        "runs": runs,
        "unacknowledged": len(unacknowledged),
        "metrics": {
            "by_status": {s: metrics_by_status.get(s, 0) for s in statuses},
            "total": metrics_total,
            "database_by_status": {s: db_by_status.get(s, 0) for s in statuses},
            "agree": metrics_agree,
        },
        "problems": problems[:50],
        "ok": faults == 0 and metrics_agree and len(unacknowledged) <= submit_failures,
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def slope_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute; None under 3 samples."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    sxx = sum((t - mx) ** 2 for t, _ in samples)
    if sxx == 0:
        return None
    return sum((t - mx) * (v - my) for t, v in samples) / sxx * 60.0


def counter_by(text: str, graph: str, sample: str = RUNS_METRIC, label: str = "status") -> dict[str, float]:
    """One graph's counter from a /metrics scrape, summed by one label (default: runs by status)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and s.labels.get("graph") == graph:
                out[s.labels[label]] = out.get(s.labels[label], 0.0) + s.value
    return out


def read_database(url: str, graph_id: str) -> tuple[dict[str, DbRun], list[str]]:
    """Every run of the graph as the database holds it, and the graph's plan ids: read directly
    (SQLAlchemy Core, plain SQL; no migration), with the daemon stopped."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, status, finished_at FROM runs WHERE graph_id = :g"), {"g": graph_id}
            ).all()
            ends: Counter[str] = Counter()
            events = conn.execute(
                text("SELECT e.run_id, e.doc FROM events e JOIN runs r ON r.id = e.run_id WHERE r.graph_id = :g"),
                {"g": graph_id},
            )
            for run_id, doc in events:
                if (json.loads(doc) if isinstance(doc, str) else doc).get("event") == "end":
                    ends[run_id] += 1
            twice: Counter[str] = Counter()
            for run_id, _node, n in conn.execute(
                text(
                    "SELECT o.run_id, o.node, COUNT(*) FROM op_records o JOIN runs r ON r.id = o.run_id "
                    "WHERE r.graph_id = :g GROUP BY o.run_id, o.node HAVING COUNT(*) > 1"
                ),
                {"g": graph_id},
            ):
                twice[run_id] += int(n) - 1
            plans = [p for (p,) in conn.execute(text("SELECT id FROM plans WHERE graph_id = :g"), {"g": graph_id})]
    finally:
        engine.dispose()
    runs: dict[str, DbRun] = {}
    for run_id, status, finished_at in rows:
        if run_id in runs:
            runs[run_id].rows += 1
        else:
            runs[run_id] = DbRun(status, finished_at is not None, ends[run_id], twice[run_id])
    return runs, plans


def latency_table(samples: list[tuple[str, float, float]], bucket_s: float) -> dict[str, Any]:
    """p50/p99 per bucket (by when the request ended) and over the whole load, per kind."""
    by: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for kind, t, ms in samples:
        by[kind][int(t // bucket_s)].append(ms)
    out: dict[str, Any] = {}
    for kind in sorted(by):
        every = [ms for b in by[kind].values() for ms in b]
        out[kind] = {
            "n": len(every),
            "p50_ms": percentile(every, 50),
            "p99_ms": percentile(every, 99),
            "buckets": [
                {"bucket": b, "n": len(v), "p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99)}
                for b, v in sorted(by[kind].items())
            ],
        }
    return out


def rss_summary(rss: list[tuple[float, float, float]], duration_s: float, column: int) -> dict[str, Any]:
    """Start, end, max and the slope over the load's second half (after warm-up growth) of one
    column of the (seconds, daemon MiB, process group MiB) samples."""
    values = [(s[0], s[column]) for s in rss]
    second_half = [(t, v) for t, v in values if t >= duration_s / 2]
    slope = slope_per_min(second_half)
    return {
        "start_mib": round(values[0][1], 1) if values else None,
        "end_mib": round(values[-1][1], 1) if values else None,
        "max_mib": round(max(v for _, v in values), 1) if values else None,
        "slope_mib_per_min": None if slope is None else round(slope, 3),
        "slope_samples": len(second_half),
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables: accounting per kind, latency per bucket, memory."""
    cols = ("accepted", "succeeded", "failed", "cancelled", "lost", "duplicated", "stuck", "inconsistent")
    lines = [
        f"Soak: `{report['command']}` on {report['machine']} (nice {report['settings']['nice']}); "
        f"{report['settings']['database']}, {report['settings']['clients']} clients, {report['wall_s']} s, "
        f"{report['runs_per_s']} runs/s",
        "",
        "| kind | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for kind, c in report["runs"].items():
        lines.append(f"| {kind} | " + " | ".join(str(c[n]) for n in cols) + " |")
    m = report["metrics"]
    lines += [
        "",
        f"plans: {report['plans']}; unacknowledged runs: {report['unacknowledged']}; "
        f"/metrics {RUNS_METRIC}: {m['by_status']} (sum {m['total']:g}), database {m['database_by_status']}, "
        f"agree: {m['agree']}",
        f"rejections: {report['rejections'] or 'none'}; errors: {report['errors'] or 'none'}; "
        f"re-plans by the control loop: {report.get('replans') or 'none'}",
        "",
    ]
    lat = report["latency"]
    kinds = sorted(lat)
    buckets = sorted({b["bucket"] for k in kinds for b in lat[k]["buckets"]})
    bucket_s = report["settings"]["bucket_s"]
    lines += [
        f"| {bucket_s:g} s bucket | " + " | ".join(f"{k} n / p50 / p99 ms" for k in kinds) + " |",
        "|---" * (len(kinds) + 1) + "|",
    ]
    for b in buckets:
        cells = []
        for k in kinds:
            row = next((x for x in lat[k]["buckets"] if x["bucket"] == b), None)
            cells.append(f"{row['n']} / {row['p50_ms']:.0f} / {row['p99_ms']:.0f}" if row else "-")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines.append(
        "| all | "
        + " | ".join(f"{lat[k]['n']} / {lat[k]['p50_ms']:.0f} / {lat[k]['p99_ms']:.0f}" for k in kinds)
        + " |"
    )
    for who in ("daemon", "process_group"):
        r = report["rss"][who]
        lines.append(
            f"\nRSS {who}: start {r['start_mib']} MiB, end {r['end_mib']} MiB, max {r['max_mib']} MiB, "
            f"slope over the second half {r['slope_mib_per_min']} MiB/min ({r['slope_samples']} samples)"
        )
    lines.append(f"\naccounting: {'OK' if report['ok'] else 'FAILED'}")
    lines += [f"- {p}" for p in report["problems"][:20]]
    return "\n".join(lines)
