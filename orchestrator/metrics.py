"""Prometheus metrics of the daemon (prometheus-client), one registry per app. Names follow
Prometheus conventions (base units, ``_total`` counters) so Grafana panels can sum and quantile them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from compiler.spec import SLA

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Every series the daemon exports; one instance (and registry) per Service, so tests can run
    several daemons in one process without their counters mixing."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.run_latency = Histogram(
            "hetagent_run_latency_seconds",
            "End-to-end latency of graph runs.",
            ["graph"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.sla_violations = Counter(
            "hetagent_sla_violations_total", "Runs slower than their graph's SLA.", ["graph"], registry=r
        )
        self.runs = Counter("hetagent_runs_total", "Finished runs by status.", ["graph", "status"], registry=r)
        self.op_latency = Histogram(
            "hetagent_op_latency_seconds",
            "Measured latency of ops (inputs ready to done).",
            ["graph", "kind", "device"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.op_predicted_ratio = Gauge(
            "hetagent_op_measured_over_predicted",
            "Last measured/predicted latency.",
            ["graph", "node", "device"],
            registry=r,
        )
        self.replicas = Gauge("hetagent_replicas", "Replicas per deployed op.", ["graph", "op", "device"], registry=r)
        self.utilization = Gauge(
            "hetagent_device_utilization", "Planned busy fraction of each device type.", ["graph", "device"], registry=r
        )
        self.tco = Gauge(
            "hetagent_tco_usd_per_hour", "Planned TCO of deployments by device type.", ["graph", "device"], registry=r
        )
        self.tco_total = Gauge("hetagent_tco_total_usd_per_hour", "Planned TCO of all deployments.", registry=r)
        self.usd_per_run = Gauge("hetagent_usd_per_run", "Planned $ per run of a deployment.", ["graph"], registry=r)
        self.run_cost = Counter(
            "hetagent_run_cost_usd",
            "$ of finished runs: measured (busy time × device price) or planned (the plan's $ per run), by basis.",
            ["graph", "basis"],
            registry=r,
        )
        self.solve_seconds = Histogram(
            "hetagent_planner_solve_seconds",
            "ILP solve time.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.replans = Counter(
            "hetagent_replans_total", "Re-plans by the control loop.", ["graph", "reason"], registry=r
        )
        self.arrival_rate = Gauge(
            "hetagent_arrival_rate_per_second", "Measured run arrival rate.", ["graph"], registry=r
        )
        self.efficiency = Gauge(
            "hetagent_device_efficiency",
            "Cost-model efficiency after online calibration.",
            ["device", "kind"],
            registry=r,
        )
        self.calibration_failures = Counter(
            "hetagent_calibration_failures_total",
            "Online calibration passes (or op records) that raised; their observations are dropped.",
            registry=r,
        )
        self.storage_errors = Counter(
            "hetagent_storage_errors_total",
            "Writes the database refused, by what was being written.",
            ["what"],
            registry=r,
        )
        self.sla_target = Gauge(
            "hetagent_sla_target_seconds",
            "End-to-end latency target of a deployed graph's SLA (the spec's e2e_ms): runs slower count as violations.",
            ["graph"],
            registry=r,
        )
        self.sla_objective = Gauge(
            "hetagent_sla_objective_ratio",
            "Fraction of runs that must meet the SLA target (the spec's percentile / 100); 1 - it is the error budget.",
            ["graph"],
            registry=r,
        )
        self.planned_e2e = Gauge(
            "hetagent_planned_e2e_seconds", "Planned end-to-end latency of the deployed plan.", ["graph"], registry=r
        )
        self.planned_rate = Gauge(
            "hetagent_planned_rate_per_second", "Run rate the deployed plan was sized for.", ["graph"], registry=r
        )
        self.devices = Gauge(
            "hetagent_devices_allocated",
            "Devices (GPUs, or CPU sockets) the deployed plan occupies, by device type.",
            ["graph", "device"],
            registry=r,
        )
        self.baseline_tco = Gauge(
            "hetagent_baseline_tco_usd_per_hour",
            "Planned TCO of the feasible baselines the planner compared the deployed plan with "
            "('homogeneous:<device>', 'greedy-fastest').",
            ["graph", "baseline"],
            registry=r,
        )
        self._tco_by_graph: dict[str, float] = {}

    def set_deployment(self, graph: str, plan: dict[str, Any], sla: SLA | None = None) -> None:
        """Gauges of a deployment's plan (replicas, utilisation, TCO, baselines) and of its graph's SLA;
        replaces the graph's old values. The counters dashboards divide or take increases of start at 0."""
        self.clear_deployment(graph)
        for op in plan.get("ops", []):
            self.replicas.labels(graph, op["name"], op["device"]).set(op["replicas"])
        for dev in plan.get("devices", []):
            self.utilization.labels(graph, dev["device"]).set(dev.get("busy_fraction", 0.0))
            self.tco.labels(graph, dev["device"]).set(dev.get("usd_per_hour", 0.0))
            self.devices.labels(graph, dev["device"]).set(dev.get("allocated", 0))
        for base in plan.get("baselines", []):
            if base.get("feasible") and base.get("tco_usd_per_hour") is not None:
                self.baseline_tco.labels(graph, base["name"]).set(base["tco_usd_per_hour"])
        if plan.get("predicted_e2e_ms") is not None:
            self.planned_e2e.labels(graph).set(plan["predicted_e2e_ms"] / 1000.0)
        self.planned_rate.labels(graph).set(plan.get("rate_per_s", 0.0))
        if sla is not None:
            self.sla_target.labels(graph).set(sla.e2e_ms / 1000.0)
            self.sla_objective.labels(graph).set(sla.percentile / 100.0)
        self.sla_violations.labels(graph).inc(0)
        for reason in ("rate", "sla"):  # the two reasons Controller.control_step counts
            self.replans.labels(graph, reason).inc(0)
        self._tco_by_graph[graph] = float(plan.get("tco_usd_per_hour") or 0.0)
        self.tco_total.set(sum(self._tco_by_graph.values()))
        self.usd_per_run.labels(graph).set(float(plan.get("usd_per_1k_runs") or 0.0) / 1000.0)

    def clear_deployment(self, graph: str) -> None:
        """Drop a stopped deployment's gauges, so dashboards do not show pools that are gone."""
        for gauge in (
            self.replicas,
            self.utilization,
            self.tco,
            self.usd_per_run,
            self.devices,
            self.baseline_tco,
            self.planned_e2e,
            self.planned_rate,
            self.sla_target,
            self.sla_objective,
        ):
            for labels in [k for k in list(gauge._metrics) if k[0] == graph]:  # noqa: SLF001 - no public remove-by-prefix
                gauge.remove(*labels)
        self._tco_by_graph.pop(graph, None)
        self.tco_total.set(sum(self._tco_by_graph.values()))

    def observe_run(
        self, graph: str, status: str, e2e_ms: float | None, sla_ms: float, records: list[dict[str, Any]]
    ) -> None:
        """Count a finished run: latency, SLA violation, per-op latencies and its cost share."""
        self.runs.labels(graph, status).inc()
        if e2e_ms is None:
            return
        self.run_latency.labels(graph).observe(e2e_ms / 1000.0)
        if e2e_ms > sla_ms:
            self.sla_violations.labels(graph).inc()
        measured = planned = 0.0
        for r in records:
            self.op_latency.labels(graph, r["kind"], r["device"]).observe(r["measured_ms"] / 1000.0)
            if r.get("predicted_ms"):
                self.op_predicted_ratio.labels(graph, r["node"], r["device"]).set(r["measured_ms"] / r["predicted_ms"])
            measured += r.get("measured_cost_usd", 0.0)
            planned += r.get("planned_cost_usd", 0.0)
        self.run_cost.labels(graph, "measured").inc(measured)
        self.run_cost.labels(graph, "planned").inc(planned)


class EngineMetricsCollector:
    """Re-exports the vLLM engines' own metrics (``vllm:*``) from every LLM replica the daemon runs,
    each series labelled with the graph, node and replica it came from."""

    def __init__(self, engines: Any, timeout_s: float = 2.0):
        self.engines = engines  # () -> [(graph, node, replica, actor handle)]
        self.timeout_s = timeout_s

    def collect(self) -> Any:
        """Scrape every LLM replica (bounded by ``timeout_s``); a slow or gone replica is skipped."""
        import ray

        handles = list(self.engines())
        if not handles:
            return
        refs = [h[3].metrics_text.remote() for h in handles]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
        merged: dict[str, Metric] = {}
        for (graph, node, replica, _), ref in zip(handles, refs, strict=True):
            if ref not in ready:
                continue
            try:
                text = ray.get(ref)
            except Exception:  # noqa: BLE001 - a replica going away must not break /metrics
                continue
            extra = {"graph": graph, "node": node, "replica": str(replica)}
            for family in text_string_to_metric_families(text):
                if not family.name.startswith("vllm:"):
                    continue
                out = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, **extra}, sample.value, sample.timestamp)
        yield from merged.values()
