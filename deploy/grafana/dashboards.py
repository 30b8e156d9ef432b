"""The TCO and SLA dashboards, written with grafana-foundation-sdk.

Every panel reads series the daemon exports (orchestrator/metrics.py) or the vLLM engines' own.
Titles and legends say which numbers are planned (the plan the deployment runs) and which are
measured (runs, op records). Template variables: ``datasource``, ``graph`` and ``device`` (the
device tier: a device type of the cluster inventory).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.models import dashboard as model

DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
G = 'graph=~"$graph"'
GD = 'graph=~"$graph", device=~"$device"'


def vllm_name(metric: str) -> str:
    """A name matcher that accepts vLLM's own name (``vllm:x``, re-exported by the daemon) and Ray's
    (``ray_vllm_x``, or ``ray_vllm:x`` from older Ray releases)."""
    return f'__name__=~"vllm:{metric}|ray_vllm[_:]{metric}"'


def q(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def series(title: str, description: str, unit: str, *targets: prometheus.Dataquery, w: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DS).height(8).span(w)
    for t in targets:
        panel = panel.with_target(t)
    return panel


def single(title: str, description: str, unit: str, target: prometheus.Dataquery, w: int = 6) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DS)
        .height(5)
        .span(w)
        .with_target(target)
    )


def variables(d: dashboard.Dashboard) -> dashboard.Dashboard:
    d = d.with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    for name, label, source in (
        ("graph", "Graph", "label_values(hetagent_runs_total, graph)"),
        ("device", "Device tier", "label_values(hetagent_tco_usd_per_hour, device)"),
    ):
        d = d.with_variable(
            dashboard.QueryVariable(name)
            .label(label)
            .datasource(DS)
            .query(source)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(model.VariableOption(text="All", value="$__all", selected=True))
        )
    return d


def base(uid: str, title: str, description: str) -> dashboard.Dashboard:
    d = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["hetagent"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .editable()
    )
    return variables(d)


def tco_dashboard() -> dashboard.Dashboard:
    """Cost: $/h by tier (planned) and measured busy-time $/h, $ per 1,000 runs planned vs measured,
    planned utilisation against cost per tier, saving vs the cheapest homogeneous fleet, replicas."""
    d = base(
        "hetagent-tco",
        "hetagent / TCO",
        "Cost of the deployed plans (planned) and of the runs (measured: ops' busy time × device price).",
    )
    d = d.with_row(dashboard.Row("Cost"))
    d = d.with_panel(
        series(
            "$/h by device tier (planned)",
            "TCO of the deployed plans per device tier, and their total.",
            "currencyUSD",
            q(f"sum by (device) (hetagent_tco_usd_per_hour{{{GD}}})", "{{device}} (planned)"),
            q(f"sum(hetagent_tco_usd_per_hour{{{GD}}})", "total (planned)", "B"),
        )
    )
    d = d.with_panel(
        series(
            "$/h: measured busy time vs planned",
            "Measured: the runs' op busy seconds × device price, per hour. Planned: the plan's TCO, which "
            "also pays for idle capacity; the gap is unused headroom.",
            "currencyUSD",
            q(
                f'3600 * sum by (graph) (rate(hetagent_run_cost_usd_total{{{G}, basis="measured"}}[$__rate_interval]))',
                "{{graph}} measured",
            ),
            q(f"sum by (graph) (hetagent_tco_usd_per_hour{{{G}}})", "{{graph}} planned", "B"),
        )
    )
    d = d.with_panel(
        series(
            "$ per 1,000 runs: planned vs measured",
            "Planned: the plan's TCO ÷ its planned rate. Measured: the runs' busy-time cost ÷ succeeded runs.",
            "currencyUSD",
            q(f"1000 * hetagent_usd_per_run{{{G}}}", "{{graph}} planned"),
            q(
                "1000 * sum by (graph) "
                f'(increase(hetagent_run_cost_usd_total{{{G}, basis="measured"}}[$__rate_interval]))'
                f' / sum by (graph) (increase(hetagent_runs_total{{{G}, status="succeeded"}}[$__rate_interval]))',
                "{{graph}} measured",
                "B",
            ),
        )
    )
    d = d.with_panel(
        series(
            "Utilisation vs cost per tier (planned)",
            "Planned busy fraction of each tier's allocated devices (left) and its $/h (right).",
            "percentunit",
            q(
                f"sum by (device) (hetagent_device_utilization{{{GD}}} * hetagent_devices_allocated{{{GD}}})"
                f" / sum by (device) (hetagent_devices_allocated{{{GD}}})",
                "{{device}} utilisation (planned)",
            ),
            q(f"sum by (device) (hetagent_tco_usd_per_hour{{{GD}}})", "{{device}} $/h (planned)", "B"),
        ).override_by_query(
            "B",
            [
                model.DynamicConfigValue(id_val="unit", value="currencyUSD"),
                model.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            ],
        )
    )
    d = d.with_row(dashboard.Row("Saving and capacity"))
    best = f'min by (graph) (hetagent_baseline_tco_usd_per_hour{{{G}, baseline=~"homogeneous:.*"}})'
    plan = f"sum by (graph) (hetagent_tco_usd_per_hour{{{G}}})"
    d = d.with_panel(
        single(
            "Saving vs best homogeneous fleet (planned)",
            "1 − plan TCO ÷ TCO of the cheapest feasible one-device-type fleet the planner compared it with.",
            "percentunit",
            q(f"1 - {plan} / {best}", "{{graph}}"),
        )
    )
    d = d.with_panel(
        single(
            "$/h saved vs best homogeneous fleet (planned)",
            "TCO of the cheapest feasible one-device-type fleet minus the plan's TCO.",
            "currencyUSD",
            q(f"{best} - {plan}", "{{graph}}"),
        )
    )
    d = d.with_panel(
        series(
            "Replicas and devices per tier (planned)",
            "Op replicas the deployed plans run on each tier, and the devices they occupy.",
            "short",
            q(f"sum by (device) (hetagent_replicas{{{GD}}})", "{{device}} replicas"),
            q(f"sum by (device) (hetagent_devices_allocated{{{GD}}})", "{{device}} devices", "B"),
        )
    )
    return d


def sla_dashboard() -> dashboard.Dashboard:
    """Latency: e2e quantiles against the SLA, attainment and error budget, violations and burn rate,
    per-op latency by device, measured ÷ predicted, re-plans, and the vLLM engines' own latencies."""
    d = base(
        "hetagent-sla",
        "hetagent / SLA",
        "Measured latency of runs and ops against the graphs' SLAs and the plans' predictions.",
    )
    d = d.annotation(
        dashboard.AnnotationQuery()
        .name("Re-plans")
        .datasource(DS)
        .enable(True)
        .icon_color("orange")
        .expr(f"sum by (graph, reason) (increase(hetagent_replans_total{{{G}}}[1m])) > 0")
    )
    d = d.with_row(dashboard.Row("Runs"))
    e2e = f"rate(hetagent_run_latency_seconds_bucket{{{G}}}[$__rate_interval])"
    d = d.with_panel(
        series(
            "End-to-end latency vs SLA",
            "Measured p50/p95/p99 of runs, the SLA target they are counted against, and the plan's prediction.",
            "s",
            q(f"histogram_quantile(0.5, sum by (graph, le) ({e2e}))", "{{graph}} p50 (measured)"),
            q(f"histogram_quantile(0.95, sum by (graph, le) ({e2e}))", "{{graph}} p95 (measured)", "B"),
            q(f"histogram_quantile(0.99, sum by (graph, le) ({e2e}))", "{{graph}} p99 (measured)", "C"),
            q(f"hetagent_sla_target_seconds{{{G}}}", "{{graph}} SLA target", "D"),
            q(f"hetagent_planned_e2e_seconds{{{G}}}", "{{graph}} planned", "E"),
            w=24,
        )
    )
    err = (
        f"sum by (graph) (increase(hetagent_sla_violations_total{{{G}}}[$__range]))"
        f" / sum by (graph) (increase(hetagent_runs_total{{{G}}}[$__range]))"
    )
    d = d.with_panel(
        single(
            "SLA attainment",
            "Runs within the SLA target over the dashboard's time range (measured).",
            "percentunit",
            q(f"1 - {err}", "{{graph}}"),
        )
    )
    d = d.with_panel(
        single(
            "Error budget remaining",
            "1 − (violations ÷ runs) ÷ (1 − objective), the objective being the spec's percentile; "
            "over the dashboard's time range. Below 0: the budget is spent.",
            "percentunit",
            q(f"1 - ({err}) / (1 - max by (graph) (hetagent_sla_objective_ratio{{{G}}}))", "{{graph}}"),
        )
    )
    d = d.with_panel(
        series(
            "Violations and error-budget burn rate",
            "Runs over the SLA target, and the burn rate (violation ratio ÷ error budget) over 1 h: the "
            "PrometheusRule pages at 14.4 (1 h and 5 m) and warns at 6 (6 h and 30 m).",
            "short",
            q(
                f"sum by (graph) (increase(hetagent_sla_violations_total{{{G}}}[$__rate_interval]))",
                "{{graph}} violations",
            ),
            q(
                f"(sum by (graph) (rate(hetagent_sla_violations_total{{{G}}}[1h]))"
                f" / sum by (graph) (rate(hetagent_runs_total{{{G}}}[1h])))"
                f" / on (graph) (1 - hetagent_sla_objective_ratio{{{G}}})",
                "{{graph}} burn rate (1 h)",
                "B",
            ),
        )
    )
    d = d.with_panel(
        series(
            "Runs by status",
            "Finished runs per second (measured), by status.",
            "reqps",
            q(f"sum by (graph, status) (rate(hetagent_runs_total{{{G}}}[$__rate_interval]))", "{{graph}} {{status}}"),
            q(f"hetagent_planned_rate_per_second{{{G}}}", "{{graph}} planned rate", "B"),
        )
    )
    d = d.with_row(dashboard.Row("Ops"))
    d = d.with_panel(
        series(
            "Op latency p95 by device (measured)",
            "Ops' inputs-ready-to-done latency, by op kind and the device tier they ran on.",
            "s",
            q(
                "histogram_quantile(0.95, sum by (kind, device, le) "
                f"(rate(hetagent_op_latency_seconds_bucket{{{GD}}}[$__rate_interval])))",
                "{{kind}} on {{device}}",
            ),
        )
    )
    d = d.with_panel(
        series(
            "Op latency: measured ÷ predicted",
            "Last measured ÷ predicted latency of each op; far from 1 means the cost model (or the machine) is "
            "off, and the plan-drift alert fires when it stays so.",
            "short",
            q(f"hetagent_op_measured_over_predicted{{{GD}}}", "{{graph}}/{{node}} on {{device}}"),
        )
    )
    d = d.with_panel(
        series(
            "Re-plans",
            "Re-plans by the control loop, by reason (rate out of band, or p99 over the SLA).",
            "short",
            q(
                f"sum by (graph, reason) (increase(hetagent_replans_total{{{G}}}[$__rate_interval]))",
                "{{graph}} {{reason}}",
            ),
            w=24,
        )
    )
    d = d.with_row(dashboard.Row("LLM engines (vLLM)"))
    for title, metric, quantile in (
        ("vLLM time to first token p95", "time_to_first_token_seconds", 0.95),
        ("vLLM inter-token latency p95", "inter_token_latency_seconds", 0.95),
    ):
        d = d.with_panel(
            series(
                title,
                "From the engines' own histograms: vllm:* re-exported by the daemon (labels graph, node) or "
                "ray_vllm_* from Ray's metrics agent.",
                "s",
                q(
                    f"histogram_quantile({quantile}, sum by (graph, node, model_name, le) "
                    f"(rate({{{vllm_name(metric + '_bucket')}, {G}}}[$__rate_interval])))",
                    "{{graph}} {{node}} {{model_name}}",
                ),
                w=8,
            )
        )
    d = d.with_panel(
        series(
            "vLLM KV-cache usage",
            "Fraction of the engines' KV-cache blocks in use.",
            "percentunit",
            q(
                f"max by (graph, node, model_name) ({{{vllm_name('kv_cache_usage_perc')}, {G}}})",
                "{{graph}} {{node}} {{model_name}}",
            ),
            w=8,
        )
    )
    return d


DASHBOARDS = {"tco": tco_dashboard, "sla": sla_dashboard}
