"""Monitoring of a deployment: the series dashboards and alerts read (orchestrator/metrics.py), the
dashboards as code (deploy/grafana/), the chart's PrometheusRule checked and unit-tested with promtool,
and an end-to-end check: a real Prometheus scrapes a running daemon and answers every panel's query."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

DATA = Path(__file__).resolve().parent / "data"


def _samples(registry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(scope="module")
def rag_plan():
    """The rag_agent example planned on mixed_fleet with its baselines (a real plan, not a fixture file)."""
    from compiler.spec import load_graph
    from costmodels.catalog import load_catalog, load_cluster
    from planner.pipeline import apply_model_overrides, plan_spec
    from planner.place import PlanOptions
    from tests.support.plans import ROOT

    catalog = load_catalog()
    inv = load_cluster("mixed_fleet", catalog)
    graph = apply_model_overrides(load_graph(ROOT / "examples/graphs/rag_agent.yaml", catalog), inv, catalog)
    plan = plan_spec(graph, inv, PlanOptions(rate_per_s=2.0), catalog)
    assert plan.feasible and plan.baselines
    return graph, plan


def test_deployment_gauges_carry_the_plan_and_the_sla(rag_plan):
    from orchestrator.metrics import Metrics

    graph, plan = rag_plan
    m = Metrics()
    m.set_deployment("rag", plan.model_dump(mode="json"), graph.spec.sla)
    got = _samples(m.registry)

    def value(name: str, **labels: str) -> float:
        return got[(name, frozenset({"graph": "rag", **labels}.items()))]

    assert value("hetagent_sla_target_seconds") == pytest.approx(3.0)  # rag_agent.yaml: e2e_ms 3000
    assert value("hetagent_sla_objective_ratio") == pytest.approx(0.99)  # rag_agent.yaml: percentile 99
    assert value("hetagent_planned_e2e_seconds") == pytest.approx(plan.predicted_e2e_ms / 1000)
    assert value("hetagent_planned_rate_per_second") == 2.0
    for dev in plan.devices:
        assert value("hetagent_devices_allocated", device=dev.device) == dev.allocated
        assert value("hetagent_tco_usd_per_hour", device=dev.device) == dev.usd_per_hour
    feasible = {b.name: b.tco_usd_per_hour for b in plan.baselines if b.feasible}
    exported = {dict(k[1])["baseline"]: v for k, v in got.items() if k[0] == "hetagent_baseline_tco_usd_per_hour"}
    assert exported == feasible and not any(dict(k[1]).get("baseline") == "homogeneous:xeon-8592" for k in got)
    # counters a dashboard divides by or takes increases of exist (at 0) before the first violation or re-plan
    assert value("hetagent_sla_violations_total") == 0
    assert value("hetagent_replans_total", reason="rate") == value("hetagent_replans_total", reason="sla") == 0

    m.clear_deployment("rag")
    left = {k[0] for k in _samples(m.registry) if ("graph", "rag") in k[1] and not k[0].endswith("_created")}
    assert left == {"hetagent_sla_violations_total", "hetagent_replans_total"}  # counters stay; plan gauges go


# ---------------------------------------------------------------------------- dashboards as code


def test_committed_dashboard_json_is_what_the_code_generates():
    """python -m deploy.grafana writes the chart's dashboards; a change to the code without a
    regeneration (or a hand edit of the JSON) fails here."""
    from deploy.grafana.__main__ import OUT_DIR, render

    generated = render()
    assert sorted(generated) == ["sla.json", "tco.json"]
    for name, text in generated.items():
        assert (OUT_DIR / name).read_text() == text, f"{name} is stale: run .venv/bin/python -m deploy.grafana"


def _dashboards() -> dict:
    from orchestrator.dashboard_snapshot import load_dashboards

    return load_dashboards()


def test_dashboards_cover_the_issue_and_use_the_template_variables():
    from orchestrator.dashboard_snapshot import panels

    dash = _dashboards()
    for d in dash.values():
        names = [v["name"] for v in d["templating"]["list"]]
        assert names == ["datasource", "graph", "device"]
        ids = [p["id"] for p in d["panels"]]
        assert len(set(ids)) == len(ids)
    tco = {p.title: p for p in panels(dash["tco"])}
    sla = {p.title: p for p in panels(dash["sla"])}
    legends = [q.legend for q in tco["$ per 1,000 runs: planned vs measured"].queries]
    assert any("planned" in x for x in legends) and any("measured" in x for x in legends)
    assert "hetagent_baseline_tco_usd_per_hour" in tco["Saving vs best homogeneous fleet (planned)"].queries[0].expr
    assert any("hetagent_sla_target_seconds" in q.expr for q in sla["End-to-end latency vs SLA"].queries)
    for title in ("vLLM time to first token p95", "vLLM inter-token latency p95", "vLLM KV-cache usage"):
        (query,) = sla[title].queries
        assert "vllm:" in query.expr and "ray_vllm[_:]" in query.expr
    assert "hetagent_replans_total" in dash["sla"]["annotations"]["list"][0]["expr"]
    every = [q.expr for d in dash.values() for p in panels(d) for q in p.queries]
    assert all('graph=~"$graph"' in e for e in every)
    assert sum('device=~"$device"' in e for e in every) >= 4


def test_snapshot_sends_the_queries_grafana_would_and_says_what_is_wrong(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.dashboard_snapshot import expand, legend
    from tests.support.daemon import free_port

    sent = expand(
        'sum(rate(x{graph=~"$graph", device=~"${device}"}[$__rate_interval])) / sum(increase(y[$__range]))',
        {"graph": "rag|chat"},
        rate_interval="30s",
        range_="6h",
    )
    assert sent == 'sum(rate(x{graph=~"rag|chat", device=~".*"}[30s])) / sum(increase(y[6h]))'
    assert legend("{{graph}} on {{ device }}", {"graph": "rag", "device": "l4"}) == "rag on l4"
    bad = CliRunner().invoke(app, ["dashboard", "snapshot", "--prometheus", "http://x", "--var", "graph"])
    assert bad.exit_code == 2 and "NAME=REGEX" in bad.output
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    down = CliRunner().invoke(app, ["dashboard", "snapshot", "--prometheus", gone, "-o", str(tmp_path)])
    assert down.exit_code == 2 and f"Prometheus at {gone}" in down.output and not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- the chart's monitoring objects

RULE_VALUES = {"monitoring": {"prometheusRule": {"tcoBudgetUsdPerHour": 10, "planDriftRatio": 2}}}


def _rendered(values: dict) -> list[dict]:
    from orchestrator.deploy import render_chart

    return render_chart(values, release="demo", namespace="ai")


def test_dashboards_ship_as_configmaps_labelled_for_the_grafana_sidecar():
    objects = _rendered({"monitoring": {"grafanaDashboards": {"labels": {"grafana_dashboard": "1", "team": "ml"}}}})
    maps = {
        o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap" and "-dashboard-" in o["metadata"]["name"]
    }
    assert sorted(maps) == ["demo-hetagent-dashboard-sla", "demo-hetagent-dashboard-tco"]
    committed = _dashboards()
    for name, cm in maps.items():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["labels"]["team"] == "ml"
        stem = name.rsplit("-", 1)[1]
        assert json.loads(cm["data"][f"hetagent-{stem}.json"]) == committed[stem]
    off = _rendered({"monitoring": {"grafanaDashboards": {"enabled": False}, "prometheusRule": {"enabled": False}}})
    assert not [o for o in off if o["kind"] == "PrometheusRule" or "-dashboard-" in o["metadata"]["name"]]


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory):
    """The PrometheusRule of the rendered chart, as a plain Prometheus rules file."""
    (rule,) = [o for o in _rendered(RULE_VALUES) if o["kind"] == "PrometheusRule"]
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def test_promtool_accepts_the_rendered_rules(rules_file):
    check = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = {r["alert"] for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {
        "HetagentSLABurnRateFast",
        "HetagentSLABurnRateSlow",
        "HetagentTCOOverBudget",
        "HetagentPlanDrift",
        "HetagentNotReady",
    }


def test_alerts_fire_on_synthetic_series_and_stay_quiet_on_healthy_ones(rules_file):
    """tests/data/monitoring_rules_test.yaml: fast and slow burn, a burn that recovered, TCO over and
    under budget, plan drift both ways, the control plane not ready."""
    shutil.copy(DATA / "monitoring_rules_test.yaml", rules_file.parent / "rules_test.yaml")
    run = subprocess.run(
        ["promtool", "test", "rules", str(rules_file.parent / "rules_test.yaml")], capture_output=True, text=True
    )
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout[-5000:] + run.stderr[-2000:]


# ---------------------------------------------------------------------------- end to end

MONITORED_GRAPH = """
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: monitored}
spec:
  sla: {e2e_ms: 60, percentile: 90}
  inputs: {text: {type: string}, seconds: {type: string}}
  nodes:
    - name: crunch
      kind: transform
      function: tests.support.callables:slow
      inputs: {seconds: "{{ inputs.seconds }}"}
      expected: {latency_ms: 30}
    - name: redact
      kind: transform
      function: workers.transforms:redact_pii
      inputs: {text: "{{ inputs.text }}"}
      dependencies: [crunch]
  outputs: {clean: "{{ nodes.redact.output }}"}
"""


class SyntheticVLLM:
    """A /metrics endpoint with vLLM's series under both names: ``vllm:*`` as the daemon re-exports them
    (labels graph, node, replica) and ``ray_vllm_*`` as Ray's metrics agent exports them. Synthetic:
    the fast test starts no LLM engine (tests/test_daemon.py's vllm-marked test covers the real
    re-export); this checks that the vLLM panels read both names."""

    def __init__(self) -> None:
        import http.server
        import threading
        import time

        self.t0 = time.monotonic()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                body = outer.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def exposition(self) -> str:
        import time

        n = int((time.monotonic() - self.t0) * 20)  # requests so far: the counters grow between scrapes
        lines = []
        for prefix, labels in (
            ("vllm:", 'model_name="tiny-llama",graph="synthetic",node="answer",replica="0"'),
            ("ray_vllm_", 'model_name="tiny-llama",WorkerId="w1"'),
        ):
            for metric, split in (("time_to_first_token_seconds", 0.1), ("inter_token_latency_seconds", 0.01)):
                name = prefix + metric
                lines.append(f"# TYPE {name} histogram")
                for le, share in ((split, 0.5), (split * 10, 1.0), ("+Inf", 1.0)):
                    lines.append(f'{name}_bucket{{{labels},le="{le}"}} {int(n * share)}')
                lines += [f"{name}_sum{{{labels}}} {n * split}", f"{name}_count{{{labels}}} {n}"]
            lines += [f"# TYPE {prefix}kv_cache_usage_perc gauge", f"{prefix}kv_cache_usage_perc{{{labels}}} 0.25"]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()


def _prometheus(tmp_path: Path, targets: list[str]):
    from tests.support.daemon import free_port

    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "hetagent", "static_configs": [{"targets": targets}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


_QUERIES: dict[str, object] = {}  # one HTTP client per Prometheus (a new client per query is slow on 2 cores)


def _instant(prom: str, expr: str) -> dict:
    import httpx

    client = _QUERIES.setdefault(prom, httpx.Client(timeout=30))
    assert isinstance(client, httpx.Client)
    r = client.get(f"{prom}/api/v1/query", params={"query": expr})
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else {"status": r.text}


def test_every_panel_query_returns_data_from_a_real_prometheus_scraping_the_daemon(tmp_path):
    """A daemon on loopback runs a cheap graph (transforms, no LLM) while a real Prometheus scrapes it; each
    panel's queries of both dashboards, sent as Grafana would send them, answer without error and with
    series; `hetagent dashboard snapshot` draws both dashboards from the same Prometheus."""
    import threading
    import time

    import httpx
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.dashboard_snapshot import annotation_exprs, expand, panels
    from tests.support.daemon import Daemon, deploy
    from tests.test_daemon import CONTROL_ENV

    daemon = Daemon(tmp_path / "daemon", env=CONTROL_ENV, control_interval_s=0.5)
    vllm = SyntheticVLLM()
    prom = None
    stop = threading.Event()
    try:
        daemon.start()
        with daemon.client() as c:
            gid, _ = deploy(c, MONITORED_GRAPH, rate_per_s=0.5)

        def drive() -> None:  # runs until the queries are done: rates over the last seconds stay non-zero
            with daemon.client() as c:
                i = 0
                while not stop.is_set():
                    seconds = "0.1" if i % 4 == 0 else "0.005"  # every 4th run misses the 60 ms SLA
                    c.post(f"/v1/graphs/{gid}/runs", json={"inputs": {"text": "call 555-123-4567", "seconds": seconds}})
                    i += 1

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        prom_proc, prom = _prometheus(tmp_path, [f"127.0.0.1:{daemon.port}", f"127.0.0.1:{vllm.port}"])
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                r = _instant(prom, 'count_over_time(hetagent_runs_total{status="succeeded"}[1m])')
                ready = r.get("status") == "success" and any(float(s["value"][1]) >= 8 for s in r["data"]["result"])
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert ready, "Prometheus did not get 8 scrapes of the daemon's runs in 60 s"
        time.sleep(2)  # the vLLM stand-in's counters need a few scrapes for a rate too

        failures = []
        checked = 0
        for name, dash in _dashboards().items():
            exprs = [(p.title, q.expr) for p in panels(dash) for q in p.queries]
            for title, expr in exprs:
                sent = expand(expr, {}, rate_interval="10s", range_="5m")
                r = _instant(prom, sent)
                checked += 1
                if r.get("status") != "success":
                    failures.append(f"{name} / {title}: {r.get('error', r.get('status'))}: {sent}")
                elif not r["data"]["result"]:
                    failures.append(f"{name} / {title}: no series: {sent}")
            for expr in annotation_exprs(dash):
                r = _instant(prom, expand(expr, {}, rate_interval="10s", range_="5m"))
                assert r.get("status") == "success", r
        assert not failures, "\n".join(failures)
        assert checked >= 25

        sla = {p.title: p for p in panels(_dashboards()["sla"])}
        for title in ("vLLM time to first token p95", "vLLM KV-cache usage"):
            result = _instant(prom, expand(sla[title].queries[0].expr, {}, "10s", "5m"))["data"]["result"]
            assert {s["metric"].get("graph") for s in result} == {"synthetic", None}, result  # both names read
        # the SLA line is the spec's target; a quarter of the runs miss it, so attainment is measured below 100%
        target = _instant(prom, 'hetagent_sla_target_seconds{graph="monitored"}')["data"]["result"]
        assert [float(s["value"][1]) for s in target] == [0.06]
        attainment = _instant(prom, expand(sla["SLA attainment"].queries[0].expr, {}, "10s", "5m"))["data"]["result"]
        assert 0.5 < float(attainment[0]["value"][1]) < 0.95

        # docs/deploy.md's pictures: HETAGENT_DASHBOARD_SNAPSHOT_DIR=docs/deploy, this test
        dash_dir = Path(os.environ.get("HETAGENT_DASHBOARD_SNAPSHOT_DIR") or tmp_path / "dash")
        shot = CliRunner().invoke(  # in-process: a second interpreter would import everything again
            app,
            ["dashboard", "snapshot", "--prometheus", prom, "-o", str(dash_dir)]
            + ["--minutes", "2", "--rate-interval", "10s"],
        )
        assert shot.exit_code == 0, shot.output[-3000:]
        for name in ("tco", "sla"):
            png = (dash_dir / f"{name}.png").read_bytes()
            assert png.startswith(b"\x89PNG") and len(png) > 20_000
    finally:
        stop.set()
        if prom is not None:
            _QUERIES.pop(prom).close() if prom in _QUERIES else None
            prom_proc.terminate()
            prom_proc.wait(30)
        vllm.close()
        daemon.terminate()
