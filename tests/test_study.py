"""`hetagent study`: Pareto curves, sub-inventory bounds, infeasible gaps, plots and the report's pricing basis.

One small graph (draft_writer), three SLAs (5 ms: impossible for 256 decoded tokens on any device; 1.58 s and
500 s), two clusters (mixed_fleet_cloud as the headline, mixed_fleet with owned Gaudi 3 and CPUs), two rates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app

ROOT = Path(__file__).resolve().parents[1]
GRAPH = ROOT / "examples/graphs/draft_writer.yaml"
EPS = 1e-6


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    clusters = tmp / "clusters"
    clusters.mkdir()
    for name in ("mixed_fleet_cloud", "mixed_fleet"):
        shutil.copy(ROOT / f"configs/clusters/{name}.yaml", clusters / f"{name}.yaml")
    out = tmp / "plots"
    md = tmp / "report.md"
    args = ["study", str(GRAPH), "--clusters", str(clusters), "--sla-ms", "5:500000", "--points", "3"]
    args += ["--rates", "1,100", "--out", str(out), "--markdown", str(md), "--format", "json", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), out, md.read_text(), clusters


def _points(doc, fleet):
    return sorted((p for p in doc["sla_points"] if p["fleet"] == fleet), key=lambda p: p["sla_ms"])


def test_json_has_the_fields(study):
    doc, *_ = study
    for key in ("headline", "rate_per_s", "slas_ms", "rates_per_s", "machine", "fleets", "graphs", "sla_points"):
        assert key in doc
    assert doc["headline"] == "mixed:mixed_fleet_cloud"
    assert [round(s) for s in doc["slas_ms"]] == [5, 1580, 500000]  # log-spaced 5:500000, 3 points
    point_keys = {"graph", "fleet", "sla_ms", "rate_per_s", "feasible", "tco_usd_per_hour", "usd_per_1k_runs"}
    assert point_keys <= set(doc["sla_points"][0])
    assert {p["rate_per_s"] for p in doc["rate_points"]} == {1.0, 100.0}
    assert doc["vendor_splits"], "mixed_fleet_cloud has three accelerator vendors, all cloud-priced"
    fleet = doc["fleets"][0]
    assert {"name", "kind", "basis", "pools", "host_cpus"} <= set(fleet)
    assert {"usd_per_h_per_device", "pricing", "price_source", "efficiency_compute"} <= set(fleet["pools"][0])


def test_pareto_curve_does_not_rise_as_the_sla_loosens(study):
    doc, *_ = study
    for fleet in doc["fleets"]:
        pts = _points(doc, fleet["name"])
        assert len(pts) == 3
        for a, b in zip(pts, pts[1:], strict=False):
            if a["feasible"]:
                assert b["feasible"], f"{fleet['name']}: feasible at {a['sla_ms']} ms but not at {b['sla_ms']} ms"
                gap = b["optimality_gap"] or 0.0
                assert b["tco_usd_per_hour"] <= a["tco_usd_per_hour"] * (1 + gap) + EPS, fleet["name"]


def test_mixed_fleet_is_no_dearer_than_its_own_sub_fleets(study):
    doc, *_ = study
    head = {p["sla_ms"]: p for p in _points(doc, doc["headline"])}
    compared = 0
    for fleet in doc["fleets"]:
        # a fleet whose every pool (type, count, price) is in the headline cluster: each of its plans is one there
        if not fleet["sub_inventory_of_headline"] or fleet["name"] == doc["headline"]:
            continue
        for p in _points(doc, fleet["name"]):
            h = head[p["sla_ms"]]
            if p["feasible"]:
                assert h["feasible"], f"{fleet['name']} is feasible at {p['sla_ms']} ms, the mixed fleet is not"
                gap = h["optimality_gap"] or 0.0
                assert h["tco_usd_per_hour"] <= p["tco_usd_per_hour"] * (1 + gap) + EPS, fleet["name"]
                compared += 1
    assert compared >= 4
    names = {f["name"] for f in doc["fleets"] if f["sub_inventory_of_headline"]}
    vendors = {f"vendor:{v}@mixed_fleet_cloud" for v in ("amd", "intel", "nvidia")}
    assert names == {"older+cpu:mixed_fleet_cloud", doc["headline"]} | vendors
    # homogeneous fleets are unbounded, and owned-priced Gaudi 3 is on another basis: neither is a sub-inventory
    assert {"homogeneous:l4 [cloud]", "homogeneous:gaudi3 [owned]"} <= {f["name"] for f in doc["fleets"]} - names


def test_vendor_split_never_beats_the_single_vendor_bound_the_wrong_way(study):
    doc, *_ = study
    for v in doc["vendor_splits"]:
        if v["ratio"] is not None:
            assert v["ratio"] >= 1 - 0.01, v  # single-vendor fleets are sub-inventories of the cross-vendor one


def test_infeasible_points_are_gaps_not_zeros(study):
    doc, _, md, _ = study
    tight = [p for p in doc["sla_points"] if p["sla_ms"] == 5.0]
    assert tight and all(not p["feasible"] for p in tight)
    assert all(p["tco_usd_per_hour"] is None and p["usd_per_1k_runs"] is None and p["reason"] for p in tight)
    assert all(p["tco_usd_per_hour"] is None or p["tco_usd_per_hour"] > 0 for p in doc["sla_points"])
    rows = [line.split("|") for line in md.splitlines() if line.startswith(f"| {doc['headline']} | cloud |")]
    tco_row = next(cells for cells in rows if len(cells) == 2 + 2 + 3)  # fleet, basis, one cell per SLA
    assert [c.strip() == "—" for c in tco_row[3:6]] == [True, False, False]  # a gap at 5 ms, $ beyond


def test_plots_are_written(study):
    doc, out, md, _ = study
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["draft-writer-tco-vs-rate.png", "draft-writer-tco-vs-sla.png"]
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"plots/{p.name}" in md


def test_report_names_the_pricing_basis_of_every_fleet(study):
    doc, _, md, clusters = study
    # the basis, read from the cluster files independently of the study's code
    owned_in_mixed = [
        d["type"]
        for d in yaml.safe_load((clusters / "mixed_fleet.yaml").read_text())["devices"]
        if d["pricing"] == "owned"
    ]
    basis = {f["name"]: f["basis"] for f in doc["fleets"]}
    assert basis["mixed:mixed_fleet_cloud"] == "cloud"
    assert basis["mixed:mixed_fleet"] == f"mixed (owned: {', '.join(owned_in_mixed)})"
    for name, b in basis.items():
        assert f"| {name} | {b} |" in md, name
    assert "not comparable like for like" in md
    assert "1.7x" in md and "anchors.md" in md


def test_bad_sla_range_is_a_clear_error():
    res = CliRunner().invoke(app, ["study", str(GRAPH), "--sla-ms", "30000"])
    assert res.exit_code == 2
    assert "LO:HI" in res.output
