"""Applying a re-plan whose placement differs: pools are rebuilt without dropping runs."""

import time
from pathlib import Path

from compiler.spec import parse_graph
from costmodels.catalog import load_catalog, load_cluster
from planner.pipeline import plan_spec
from planner.place import PlanOptions

CAT = load_catalog()
ROOT = Path(__file__).resolve().parents[1]


def test_placement_change_rebuilds_pools_without_dropping_runs(tmp_path):
    """A re-plan that moves ops to another tier: new pools start, runs in flight finish on the old ones.
    The second tier is a label on this same CPU (a Ray resource), the way a KubeRay worker group is."""
    import threading

    import ray
    import yaml

    from orchestrator.service import Service
    from orchestrator.settings import Settings
    from workers.executor import ensure_ray

    cluster = tmp_path / "two_tiers.yaml"
    doc = yaml.safe_load((ROOT / "configs/clusters/local.yaml").read_text())
    doc["name"] = "two_tiers"
    doc["devices"] = [{"type": "xeon-8592", "count": 1, "per_node": 1}]
    doc.pop("runtime_cpu", None)  # measured for local-cpu, which this cluster does not have
    cluster.write_text(yaml.safe_dump(doc))
    graph = {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "AgentGraph",
        "metadata": {"name": "moving"},
        "spec": {
            "sla": {"e2e_ms": 60000},
            "inputs": {"seconds": {"type": "string"}},
            "nodes": [
                {
                    "name": "work",
                    "kind": "transform",
                    "function": "tests.support.callables:slow",
                    "inputs": {"seconds": "{{ inputs.seconds }}"},
                    "expected": {"latency_ms": 100},
                }
            ],
        },
    }
    ensure_ray(None, ["local-cpu", "xeon-8592"])
    service = Service(Settings(data_dir=tmp_path, control_enabled=False))
    try:
        gid = service.create_graph(graph)["id"]
        service.create_plan(gid, None, 0.1)
        dep = service.create_deployment(gid, None)["id"]
        deadline = time.monotonic() + 60
        while service.get_deployment(gid, dep)["state"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
        live = service.live[dep]
        old_runner = live.runner
        assert [u.device for u in old_runner.pools.values()] == ["local-cpu"]
        slow_id, handle = service.create_run(gid, {"seconds": "2"})  # in flight during the switch
        time.sleep(0.5)
        moved = plan_spec(
            parse_graph(graph, CAT), load_cluster(str(cluster), CAT), PlanOptions(rate_per_s=0.1, baselines=False), CAT
        )
        assert moved.feasible and {o.device for o in moved.ops} == {"xeon-8592"}
        switch = threading.Thread(target=service.control.rebuild, args=(dep, moved.model_dump(mode="json")))
        switch.start()
        while live.runner is old_runner:
            time.sleep(0.05)
        fast_id, fast = service.create_run(gid, {"seconds": "0"})  # new runs go to the new pools
        assert service.wait_run(fast_id, 30, fast)["records"][0]["device"] == "xeon-8592"
        switch.join(60)
        slow = service.wait_run(slow_id, 30, handle)
        assert slow["status"] == "succeeded" and slow["records"][0]["device"] == "local-cpu"
        assert old_runner.pools == {}  # the old pools were stopped after the run drained
    finally:
        service.stop()
        ray.shutdown()
