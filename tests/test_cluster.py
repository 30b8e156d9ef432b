"""`hetagent cluster up|down|address|status`: a real multi-node Ray cluster on this machine (real processes,
no mocks). A plain local Ray started by the test before `up` must survive `down`, and after `down` no process
of the cluster may remain (checked on /proc independently of orchestrator.cluster's own bookkeeping)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.ray_cluster import INVENTORY, ROOT, TIERS, local_tiers_cluster, probe  # noqa: F401

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow
if len(os.sched_getaffinity(0)) < len(TIERS):
    pytest.skip(f"local_tiers needs {len(TIERS)} CPUs", allow_module_level=True)


def hetagent(*args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        env=env,
    )


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks) and whether it is a zombie; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _processes_referring_to(needles: list[bytes]) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose command line or environment contains any of ``needles``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            blob = Path(f"/proc/{name}/cmdline").read_bytes() + b"\0" + Path(f"/proc/{name}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if any(n in blob for n in needles) and _start_time(int(name)) is not None:
            found.append((int(name), Path(f"/proc/{name}/cmdline").read_bytes()[:120].decode(errors="replace")))
    return found


@pytest.fixture(scope="module")
def bystander():
    """A plain local Ray in this test process, started before `cluster up`; it must outlive `cluster down`."""
    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Counter:
        def __init__(self):
            self.n = 0

        def bump(self):
            self.n += 1
            return self.n

    counter = Counter.remote()
    assert ray.get(counter.bump.remote(), timeout=120) == 1
    yield counter
    ray.shutdown()


@pytest.fixture(scope="module")
def cli_cluster(bystander, tmp_path_factory):
    """`hetagent cluster up` on local_tiers in a fresh data dir, through the CLI."""
    data_dir = tmp_path_factory.mktemp("cli-cluster")
    t0 = time.monotonic()
    done = hetagent("cluster", "up", "--cluster", str(INVENTORY), "--data-dir", str(data_dir))
    elapsed_s = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    state = json.loads((data_dir / "cluster" / "state.json").read_text())
    print(f"\ncluster up: {elapsed_s:.1f} s wall (state.start_s {state['start_s']} s)\n{done.stderr}")
    yield {"address": done.stdout.strip(), "data_dir": data_dir, "state": state, "stderr": done.stderr}
    hetagent("cluster", "down", "--data-dir", str(data_dir))  # no-op when the last test already stopped it


def test_up_prints_the_address_and_writes_the_state(cli_cluster):
    state, address = cli_cluster["state"], cli_cluster["address"]
    assert address == state["address"] and ":" in address
    assert [n["name"] for n in state["nodes"]] == ["head", *TIERS]
    head, core0, core1 = state["nodes"]
    assert head["num_cpus"] == 0 and core0["num_cpus"] == 1 and core1["num_cpus"] == 1
    cores = sorted(os.sched_getaffinity(0))
    assert core0["cores"] == [cores[0]] and core1["cores"] == [cores[1]]  # sequential from the affinity mask
    assert len({n["pgid"] for n in state["nodes"]}) == 3  # one session per node
    for n in state["nodes"]:
        assert n["pgid"] in n["pids"] and n["node_id"]
    shown = hetagent("cluster", "address", "--data-dir", str(cli_cluster["data_dir"]))
    assert shown.returncode == 0 and shown.stdout.strip() == address


def test_three_alive_nodes_with_tier_resources_and_cpus(cli_cluster):
    seen = probe(cli_cluster["address"])
    alive = [n for n in seen["nodes"] if n["alive"]]
    assert len(alive) == 3, seen["nodes"]
    by_tier = {t: [n for n in alive if f"device:{t}" in n["resources"]] for t in TIERS}
    for tier, nodes in by_tier.items():
        assert len(nodes) == 1, f"{tier}: {nodes}"
        assert nodes[0]["resources"][f"device:{tier}"] == 1000
        assert nodes[0]["resources"]["CPU"] == 1
    heads = [n for n in alive if "node:__internal_head__" in n["resources"]]
    assert len(heads) == 1 and heads[0]["resources"].get("CPU", 0) == 0
    assert not any(k.startswith("device:") for k in heads[0]["resources"])


def test_actor_lands_on_its_tier_node_pinned_to_the_tier_core(cli_cluster):
    state = cli_cluster["state"]
    seen = probe(cli_cluster["address"], ("device:local-core1", "device:local-core0"))
    for tier, where in ((t, seen["placed"][f"device:{t}"]) for t in TIERS):
        node = next(n for n in state["nodes"] if n["name"] == tier)
        assert where["node_id"] == node["node_id"], f"{tier} actor ran on another node"
        assert where["cores"] == node["cores"], f"{tier} actor's CPU affinity {where['cores']} != {node['cores']}"
        assert where["sid"] == node["pgid"], "the worker process stays in its node's session"


def test_status_reports_every_node_alive(cli_cluster):
    done = hetagent("cluster", "status", "--data-dir", str(cli_cluster["data_dir"]), "--format", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["healthy"] and [r["name"] for r in doc["nodes"]] == ["head", *TIERS]
    assert all(r["leader_alive"] and r["processes"] >= 2 for r in doc["nodes"])


def test_second_up_on_the_same_data_dir_is_refused(cli_cluster):
    done = hetagent("cluster", "up", "--cluster", str(INVENTORY), "--data-dir", str(cli_cluster["data_dir"]))
    assert done.returncode == 2
    assert "already running" in done.stderr and cli_cluster["address"] in done.stderr
    assert "Traceback" not in done.stderr
    # ...and the running cluster is untouched
    state = json.loads((cli_cluster["data_dir"] / "cluster" / "state.json").read_text())
    assert state["cluster_id"] == cli_cluster["state"]["cluster_id"]


def test_two_clusters_coexist(cli_cluster, local_tiers_cluster):  # noqa: F811 (the imported fixture)
    """The session fixture's cluster and the CLI's run side by side: own ports, temp dirs and nodes."""
    assert str(local_tiers_cluster) != cli_cluster["address"]
    assert local_tiers_cluster.state.temp_dir != cli_cluster["state"]["temp_dir"]
    mine = {n["node_id"] for n in cli_cluster["state"]["nodes"]}
    theirs = {n.node_id for n in local_tiers_cluster.state.nodes}
    seen = probe(str(local_tiers_cluster), ("device:local-core0",))
    assert {n["node_id"] for n in seen["nodes"] if n["alive"]} == theirs
    assert seen["placed"]["device:local-core0"]["node_id"] in theirs - mine


_DETACHED = r"""
import json, os, sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")

@ray.remote(num_cpus=0)
class Sleeper:
    def pid(self):
        return os.getpid()

actor = Sleeper.options(name="sleeper", lifetime="detached", resources={"device:local-core1": 0.001}).remote()
print(json.dumps({"pid": ray.get(actor.pid.remote(), timeout=120)}))
"""


def test_down_stops_exactly_the_cluster(cli_cluster, bystander):
    data_dir, state = cli_cluster["data_dir"], cli_cluster["state"]
    # A detached actor outlives its driver: a Ray worker process alive at `down`. Ray workers call setpgid
    # (their own process group), so killpg on the node's group would miss them; they stay in its session.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}
    made = subprocess.run(
        [sys.executable, "-c", _DETACHED, cli_cluster["address"]],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    worker = json.loads(made.stdout.strip().splitlines()[-1])["pid"]
    core1 = next(n for n in state["nodes"] if n["name"] == "local-core1")
    assert os.getpgid(worker) == worker and os.getsid(worker) == core1["pgid"]
    # Every process of the cluster now (workers included), with start times so a reused pid is not mistaken.
    tracked = {pid: _start_time(pid) for n in state["nodes"] for pid in n["pids"]}
    for pid, _ in _processes_referring_to([state["cluster_id"].encode(), state["temp_dir"].encode()]):
        tracked[pid] = _start_time(pid)
    tracked = {p: t for p, t in tracked.items() if t is not None}
    assert len(tracked) >= 9 and worker in tracked, tracked  # head (gcs, raylet, agents, ...), 2 tier nodes, the actor
    done = hetagent("cluster", "down", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert not (data_dir / "cluster" / "state.json").exists()
    survivors = [p for p, t in tracked.items() if _start_time(p) == t]
    assert not survivors, f"cluster processes still alive after down: {survivors}"
    strays = _processes_referring_to([state["cluster_id"].encode(), state["temp_dir"].encode()])
    assert not strays, f"processes still referring to the cluster: {strays}"
    # The plain local Ray started before `up` is unharmed: its actor keeps its state and new tasks run.
    assert ray.get(bystander.bump.remote(), timeout=60) == 2

    @ray.remote(num_cpus=1)
    def ping() -> int:
        return os.getpid()

    assert ray.get(ping.remote(), timeout=120) > 0
    # down is idempotent, and a stopped cluster has no address
    again = hetagent("cluster", "down", "--data-dir", str(data_dir))
    assert again.returncode == 0 and "no cluster" in again.stderr
    gone = hetagent("cluster", "address", "--data-dir", str(data_dir))
    assert gone.returncode == 1 and "no cluster" in gone.stderr


# ----------------------------------------------------------------------------- refused inventories (no Ray starts)


def test_gpu_inventory_is_refused(tmp_path):
    done = hetagent(
        "cluster", "up", "--cluster", str(ROOT / "configs/clusters/homogeneous_h100.yaml"), "--data-dir", str(tmp_path)
    )
    assert done.returncode == 2, done.stderr
    assert "h100-sxm (gpu)" in done.stderr and "CPU tiers only" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cluster" / "state.json").exists()


def test_more_cores_than_the_machine_is_refused(tmp_path):
    cores = len(os.sched_getaffinity(0))
    doc = yaml.safe_load(INVENTORY.read_text())
    doc["devices"] = [{"type": "local-core0", "count": cores + 1, "per_node": 1}]
    path = tmp_path / "too_big.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = hetagent("cluster", "up", "--cluster", str(path), "--data-dir", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert f"needs {cores + 1} cores" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "cluster" / "state.json").exists()


def test_unknown_inventory_is_a_clear_error(tmp_path):
    done = hetagent("cluster", "up", "--cluster", str(tmp_path / "nope.yaml"), "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "file not found" in done.stderr and "Traceback" not in done.stderr


def test_status_and_address_without_a_cluster(tmp_path):
    for cmd in ("status", "address"):
        done = hetagent("cluster", cmd, "--data-dir", str(tmp_path))
        assert done.returncode == 1 and "no cluster running" in done.stderr


def test_ray_temp_dir_keeps_socket_paths_short(tmp_path):
    from orchestrator.cluster import RAY_SOCKET_SUFFIX_BYTES, UNIX_SOCKET_PATH_MAX_BYTES, ray_temp_dir

    deep = tmp_path / ("x" * 60) / "data"
    chosen = ray_temp_dir(deep)
    assert str(chosen).startswith("/tmp/hetagent-ray-")
    assert len(str(chosen)) + RAY_SOCKET_SUFFIX_BYTES <= UNIX_SOCKET_PATH_MAX_BYTES
    assert ray_temp_dir(deep) == chosen and ray_temp_dir(tmp_path / "other") != chosen
    assert ray_temp_dir(Path("/tmp/d")) == Path("/tmp/d/cluster/ray")
