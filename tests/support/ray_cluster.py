"""A real multi-node Ray cluster on this machine for tests: the `local_tiers` inventory (a head plus one Ray
node per one-core CPU tier, `device:local-core0` and `device:local-core1`), started once per test session.

Use it by importing the fixture into a test module (conftest.py does not register it)::

    from tests.support.ray_cluster import local_tiers_cluster  # noqa: F401  (a pytest fixture)

    def test_something(local_tiers_cluster):
        ensure_ray(local_tiers_cluster)   # a str: the GCS address host:port
        ...

The fixture yields a `ClusterAddress`: a ``str`` (the address for ``ray.init(address=...)`` /
``workers.executor.ensure_ray`` / ``hetagent run --address``) that also carries ``.data_dir`` and
``.state`` (`orchestrator.cluster.ClusterState`: nodes, cores, pids). The driver process must not
already be connected to another Ray (call ``ray.shutdown()`` first; ``ensure_ray`` returns early when
Ray is initialised) and needs ``RAY_AUTH_MODE=disabled`` (``ensure_ray`` sets it).

One cluster serves the whole session even when several modules import the fixture (pytest makes
one fixture instance per importing module; a module-level reference count shares the cluster and
stops it after the last user). It is skipped, with the reason, where the machine has fewer CPUs
than the tiers need or Ray is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "configs" / "clusters" / "local_tiers.yaml"
TIERS = ("local-core0", "local-core1")


class ClusterAddress(str):
    """The cluster's GCS address, with the data dir and state of the cluster behind it."""

    data_dir: Path
    state: Any  # orchestrator.cluster.ClusterState

    def __new__(cls, address: str, data_dir: Path, state: Any) -> ClusterAddress:
        obj = super().__new__(cls, address)
        obj.data_dir = data_dir
        obj.state = state
        return obj


_shared: dict[str, Any] = {"address": None, "users": 0}


def _acquire(tmp_path_factory: pytest.TempPathFactory) -> ClusterAddress:
    if _shared["address"] is None:
        try:
            import ray  # noqa: F401
        except ImportError:
            pytest.skip("Ray is not installed (the runtime extra)")
        from costmodels.catalog import load_catalog, load_cluster
        from orchestrator.cluster import available_cores, plan_nodes, up

        catalog = load_catalog()
        try:
            plan_nodes(load_cluster(INVENTORY, catalog), catalog, available_cores())
        except ValueError as exc:
            pytest.skip(f"local_tiers cannot start on this machine: {exc}")
        data_dir = tmp_path_factory.mktemp("local-tiers-cluster")
        state = up(INVENTORY, data_dir, cwd=ROOT)
        _shared["address"] = ClusterAddress(state.address, data_dir, state)
    _shared["users"] += 1
    return _shared["address"]


def _release() -> None:
    _shared["users"] -= 1
    if _shared["users"] == 0 and _shared["address"] is not None:
        from orchestrator.cluster import down

        address, _shared["address"] = _shared["address"], None
        report = down(address.data_dir)
        assert not report.remaining, f"cluster processes survived down: {report.remaining}"


@pytest.fixture(scope="session")
def local_tiers_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterAddress]:
    """A running local_tiers cluster (head + device:local-core0 + device:local-core1); yields its address."""
    address = _acquire(tmp_path_factory)
    try:
        yield address
    finally:
        _release()


# ----------------------------------------------------------------------------- probes from a separate driver

_PROBE = r"""
import json, os, sys
import ray
address, resources = sys.argv[1], json.loads(sys.argv[2])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")

@ray.remote(num_cpus=0)
class Probe:
    def where(self):
        return {"pid": os.getpid(), "sid": os.getsid(0), "cores": sorted(os.sched_getaffinity(0)),
                "node_id": ray.get_runtime_context().get_node_id()}

placed = {}
for r in resources:
    actor = Probe.options(resources={r: 0.001}).remote()
    placed[r] = ray.get(actor.where.remote(), timeout=120)
    ray.kill(actor)
nodes = [{"node_id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]
print(json.dumps({"gcs_address": ray.get_runtime_context().gcs_address, "nodes": nodes, "placed": placed}))
"""


def probe(address: str, resources: tuple[str, ...] = (), timeout_s: float = 240.0) -> dict:
    """From a fresh driver process: the cluster's nodes (``ray.nodes()``) and, for each resource name, where
    an actor asking for 0.001 of it ran (pid, session id, CPU affinity, node id)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(address), json.dumps(list(resources))],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, f"probe driver failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
