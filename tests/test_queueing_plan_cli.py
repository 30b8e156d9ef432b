"""`hetagent plan --arrivals/--percentile`: the queueing-aware plan through the CLI (orchestrator/queueing_plan.py)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from orchestrator.cli import app
from tests.test_queueing_plan import CLUSTER, GRAPH, RATE


def test_cli_plan_json_carries_the_simulation(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH.format(sla=200))
    args = ["plan", str(path), "--cluster", CLUSTER, "--rate", str(RATE), "--max-utilisation", "0.9"]
    args += ["--no-baselines", "--format", "json"]
    plain = json.loads(CliRunner().invoke(app, args).stdout)
    assert plain["simulation"] is None  # no --arrivals/--percentile: the service-time plan, not simulated
    r = CliRunner().invoke(app, [*args, "--arrivals", "bursty:3", "--percentile", "99"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["simulation"]["arrivals"] == "bursty:3" and doc["simulation"]["sla_met"] is True
    assert doc["simulation"]["iteration"] > 1 and doc["max_utilisation"] < 0.9
    bad = CliRunner().invoke(app, [*args, "--arrivals", "weird"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_cli_plan_table_says_what_the_simulation_found(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH.format(sla=200))
    args = ["plan", str(path), "--cluster", CLUSTER, "--rate", str(RATE), "--max-utilisation", "0.9"]
    r = CliRunner().invoke(app, [*args, "--no-baselines", "--arrivals", "bursty:3"])
    assert r.exit_code == 0, r.output
    assert "simulated (bursty:3, seed 7" in r.output and "(p99 met)" in r.output
