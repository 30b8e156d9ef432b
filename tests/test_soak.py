"""bench/soak.py's accounting: a bounded soak (4 clients, 10 s of sync, async-polled, SSE-followed runs
and plans) against a real `hetagent serve` with SQLite, where every accepted run must reach exactly
one terminal state through the API, in /metrics and in the database; then the same checks handed a
database with a run deleted, an `end` event twice and a run left running, and crafted records (a
counter off by one, a run accepted twice, ...) to show each fault is found. No timing assertions."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import soak  # noqa: E402 - bench/ scripts are top-level modules
from soak_accounting import DbRun, account, percentile, read_database, slope_per_min  # noqa: E402

sys.path.remove(str(ROOT / "bench"))


@pytest.fixture(scope="module")
def soaked(tmp_path_factory):
    argv = ["--clients", "4", "--duration", "10", "--bucket-s", "5", "--rss-interval-s", "1"]
    args = soak.parser().parse_args([*argv, "--data-dir", str(tmp_path_factory.mktemp("soak"))])
    args.command = "python bench/soak.py " + " ".join(argv)
    keep: dict = {}
    report = soak.soak(args, keep)
    return report, keep


def test_every_accepted_run_reaches_exactly_one_terminal_state(soaked):
    report, _ = soaked
    total = report["runs"]["total"]
    assert report["ok"], report["problems"]
    assert (total["lost"], total["duplicated"], total["stuck"], total["inconsistent"]) == (0, 0, 0, 0)
    for kind in ("sync", "async_poll", "async_sse"):  # each way of running was exercised
        assert report["runs"][kind]["accepted"] > 0, report["runs"]
    assert total["accepted"] == sum(total[s] for s in ("succeeded", "failed", "cancelled", "interrupted"))
    assert total["succeeded"] == total["accepted"]  # the graph's nodes cannot fail on these inputs
    assert report["plans"]["accepted"] > 0 and report["plans"]["lost"] == 0
    assert report["metrics"]["agree"] and report["metrics"]["total"] == total["accepted"]
    assert report["unacknowledged"] == 0 and report["errors"] == {}, report["error_examples"]
    assert report["rss"]["daemon"]["start_mib"] > 0 and len(report["rss"]["samples"]) >= 3
    for kind in ("sync", "async_submit", "async_poll", "async_sse", "plan"):
        assert report["latency"][kind]["n"] > 0
    table = soak.markdown(report)
    assert "| total |" in table and "accounting: OK" in table


def _recount(keep: dict) -> dict:
    led = keep["ledger"]
    db_runs, _ = read_database(keep["db_url"], keep["graph_id"])
    return account(led.accepted, led.client_final, keep["api"], db_runs, keep["metrics"], led.submit_failures)


def test_the_database_check_finds_a_deleted_run_a_second_end_and_a_stuck_run(soaked):
    """The stopped daemon's SQLite file, changed behind its back: each fault shows in the recount."""
    _, keep = soaked
    assert _recount(keep)["ok"]  # the untouched file first
    victim, twice, stuck = [run_id for run_id, _ in keep["ledger"].accepted[:3]]
    db = sqlite3.connect(keep["daemon"].sqlite_path())
    try:
        for table in ("op_records", "events"):
            db.execute(f"DELETE FROM {table} WHERE run_id = ?", (victim,))
        db.execute("DELETE FROM runs WHERE id = ?", (victim,))
        end = json.dumps({"event": "end", "node": "", "data": {"status": "succeeded"}, "t": 0})
        db.execute("INSERT INTO events (run_id, seq, doc) VALUES (?, 99, ?)", (twice, end))
        db.execute("UPDATE runs SET status = 'running' WHERE id = ?", (stuck,))
        db.commit()
    finally:
        db.close()
    again = _recount(keep)
    total = again["runs"]["total"]
    assert (total["lost"], total["duplicated"], total["stuck"]) == (1, 1, 1), again["problems"]
    assert not again["metrics"]["agree"]  # /metrics counted the deleted run and the stuck one as succeeded
    assert not again["ok"]


# ----------------------------------------------------------------------------- crafted records
def _done(status: str = "succeeded") -> DbRun:
    return DbRun(status=status, finished=True, end_events=1, duplicate_records=0)


ACCEPTED = [("r1", "sync"), ("r2", "async_poll"), ("r3", "async_sse")]
FINALS = {"r1": "succeeded", "r2": "succeeded", "r3": "failed"}


def _case(**change):
    args = {
        "accepted": list(ACCEPTED),
        "client_final": dict(FINALS),
        "api_status": dict(FINALS),
        "db_runs": {"r1": _done(), "r2": _done(), "r3": _done("failed")},
        "metrics_by_status": {"succeeded": 2.0, "failed": 1.0},
        "submit_failures": 0,
    }
    args.update(change)
    return account(**args)


def test_accounting_of_consistent_records_is_clean():
    out = _case()
    assert out["ok"] and out["problems"] == []
    assert out["runs"]["total"]["accepted"] == 3 and out["runs"]["total"]["failed"] == 1
    assert out["runs"]["async_sse"]["failed"] == 1 and out["metrics"]["agree"]


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        ({"db_runs": {"r1": _done(), "r3": _done("failed")}}, "lost"),  # r2 not in the database
        ({"api_status": {**FINALS, "r2": None}}, "lost"),  # the API says 404
        ({"db_runs": {"r1": _done(), "r2": DbRun("running", False, 0, 0), "r3": _done("failed")}}, "stuck"),
        ({"api_status": {**FINALS, "r2": "running"}}, "stuck"),
        ({"accepted": [*ACCEPTED, ("r2", "async_poll")]}, "duplicated"),  # one id handed out twice
        ({"db_runs": {"r1": _done(), "r2": DbRun("succeeded", True, 2, 0), "r3": _done("failed")}}, "duplicated"),
        ({"db_runs": {"r1": _done(), "r2": DbRun("succeeded", True, 1, 1), "r3": _done("failed")}}, "duplicated"),
        (
            {"db_runs": {"r1": _done(), "r2": DbRun("succeeded", True, 1, 0, rows=2), "r3": _done("failed")}},
            "duplicated",
        ),
        ({"client_final": {**FINALS, "r2": "failed"}}, "inconsistent"),  # the client saw another ending
        ({"db_runs": {"r1": _done(), "r2": DbRun("succeeded", False, 1, 0), "r3": _done("failed")}}, "inconsistent"),
        ({"db_runs": {"r1": _done(), "r2": DbRun("succeeded", True, 0, 0), "r3": _done("failed")}}, "inconsistent"),
    ],
)
def test_accounting_finds_each_fault(change, fault):
    out = _case(**change)
    assert out["runs"]["total"][fault] == 1, out
    assert not out["ok"] and out["problems"]


@pytest.mark.parametrize(
    "metrics",
    [
        {"succeeded": 3.0, "failed": 1.0},  # one too many
        {"succeeded": 1.0, "failed": 1.0},  # one too few
        {"succeeded": 3.0},  # the right sum, the wrong statuses
    ],
)
def test_accounting_finds_a_metrics_counter_off(metrics):
    out = _case(metrics_by_status=metrics)
    assert not out["metrics"]["agree"] and not out["ok"]
    assert out["runs"]["total"]["lost"] == 0  # the runs themselves are fine


def test_runs_nobody_was_told_of_are_a_fault_beyond_the_submissions_that_failed_in_transit():
    db = {"r1": _done(), "r2": _done(), "r3": _done("failed"), "r4": _done()}
    metrics = {"succeeded": 3.0, "failed": 1.0}
    assert not _case(db_runs=db, metrics_by_status=metrics)["ok"]
    out = _case(db_runs=db, metrics_by_status=metrics, submit_failures=1)  # r4's answer was lost in transit
    assert out["ok"] and out["unacknowledged"] == 1 and out["metrics"]["agree"]


def test_percentile_and_slope_on_known_series():
    assert percentile([5, 1, 4, 2, 3], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99 and percentile(list(range(1, 101)), 100) == 100
    assert slope_per_min([(0, 100.0), (30, 101.0), (60, 102.0), (90, 103.0)]) == pytest.approx(2.0)
    assert slope_per_min([(0, 100.0), (60, 100.0), (120, 100.0)]) == 0.0
    assert slope_per_min([(0, 1.0), (1, 2.0)]) is None  # too few samples


def test_bad_mix_is_a_clear_error():
    with pytest.raises(argparse.ArgumentTypeError, match="unknown kind 'syncc'"):
        soak.parse_mix("syncc=1")
    with pytest.raises(argparse.ArgumentTypeError, match="every weight is 0"):
        soak.parse_mix("sync=0,plan=0")
    with pytest.raises(SystemExit):
        soak.main(["--mix", "sync=x"])


def test_soak_trace_names_the_site_that_grew_between_two_dumps(tmp_path, capsys):
    """bench/soak_trace.py (``soak.py --tracemalloc``): two dumps with objects kept alive between them;
    ``compare`` names the line that allocated them and the type that grew, and reads malloc's totals."""
    import tracemalloc

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import soak_trace
    finally:
        sys.path.remove(str(ROOT / "bench"))

    class Kept:
        pass

    tracemalloc.start(5)
    try:
        soak_trace.dump(tmp_path, 0.0)
        kept = [Kept() for _ in range(20_000)]  # the leak to find
        soak_trace.dump(tmp_path, -1.0)  # a later name (seconds since start)
    finally:
        tracemalloc.stop()
    assert len(list(tmp_path.glob("snap-*.tracemalloc"))) == 2
    soak_trace.compare(tmp_path)
    out = capsys.readouterr().out
    assert "kept = [Kept() for _ in range(20_000)]" in out.split("top 25 growth by traceback:")[1]
    grew = [line for line in out.splitlines() if line.strip().endswith("Kept (20000)")]
    assert grew and int(grew[0].split()[0]) >= 20_000, out[:2000]
    assert json.loads(sorted(tmp_path.glob("gc-*.json"))[-1].read_text())["native"].get("malloc_in_use", 0) > 0
    del kept
