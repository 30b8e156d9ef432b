"""A real multi-node Ray cluster on one machine: one Ray node per CPU device tier of an inventory.

This module owns the life cycle of the Ray processes that ``hetagent cluster up|down|address|status``
starts and stops, and nothing else:

* **Planning** (`plan_nodes`): every pool of the inventory must be a CPU tier (this command only
  starts *local* CPU tiers; GPU and accelerator tiers are refused). Tier ``t`` gets
  ``cores(t) × count(t)`` cores (``cores`` from the hardware catalog), taken in order from this
  process's CPU affinity mask; more cores than the machine has is refused.
* **Starting** (`up`): ``ray start --head --num-cpus 0`` on a free port, then one
  ``ray start --address <head> --num-cpus <cores> --resources '{"device:<type>": 1000}'`` per tier.
  Every node is ``ray start --block`` in its own session (``start_new_session``), pinned with
  ``sched_setaffinity`` before ``exec`` so the raylet and every worker it forks inherit the tier's
  cores. All nodes of a cluster share one Ray ``--temp-dir`` (under the data dir, or a short path
  under /tmp when Unix socket paths would exceed 107 bytes), so two clusters and any plain local
  Ray (``ray.init()``, whose default temp dir is /tmp/ray) never share sockets, ports or the
  ``ray_current_cluster`` address file. It waits until every node has joined (``ray.nodes()``
  from a subprocess driver), then writes ``<data-dir>/cluster/state.json``.
* **Finding the processes** (`cluster_processes`): Ray workers call ``setpgid`` (each is its own
  process group), so ``killpg`` on a node's group misses them; they stay in the node's *session*,
  and every process the node starts inherits its environment. A process belongs to the cluster
  when its session id is one of the nodes' sessions, or its environment carries the cluster's
  ``HETAGENT_RAY_CLUSTER`` marker, or its command line names the cluster's temp dir.
* **Stopping** (`down`): SIGTERM to the tier nodes' ``ray start`` leaders (they drain through the
  head's GCS), then to the head's, then SIGTERM to every remaining process of the cluster and
  SIGKILL after a grace period; never ``ray stop``, which would stop every Ray on the machine.
  Idempotent: no state file, nothing to do.

Clients need ``RAY_AUTH_MODE=disabled`` in their environment too (``workers.executor.ensure_ray``
sets it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from costmodels.catalog import Catalog, ClusterInventory, DeviceClass, load_catalog, load_cluster
from workers.actors import device_resource
from workers.executor import ray_node_env

DEVICE_RESOURCE_UNITS = 1000  # what a tier node advertises of its `device:<type>` resource (a replica asks 0.001)
MARKER_ENV = "HETAGENT_RAY_CLUSTER"  # every process of a cluster inherits <MARKER_ENV>=<cluster id>
NODE_ENV = "HETAGENT_RAY_NODE"  # ... and <NODE_ENV>=<node name> ("head" or the tier's device type)
HEAD_OBJECT_STORE_BYTES = 128 * 1024**2  # the head runs no tasks (0 CPUs): a small object store
TIER_OBJECT_STORE_FRACTION = 0.3  # Ray's own default share of memory, applied to the tier's memory_gib
TIER_OBJECT_STORE_MAX_BYTES = 2 * 1024**3  # keeps /dev/shm use bounded on a development machine
UNIX_SOCKET_PATH_MAX_BYTES = 107  # sun_path is 108 bytes including the terminating NUL
# Ray's longest socket path is <temp>/session_<YYYY-MM-DD_HH-MM-SS_ffffff>_<pid>/sockets/plasma_store.<n>:
# "/" 1 + "session_" 8 + timestamp 26 + "_" 1 + pid up to 7 + "/sockets/" 9 + "plasma_store.NN" 15 = 67,
# plus a spare byte.
RAY_SOCKET_SUFFIX_BYTES = 68
STATE_VERSION = 1
NODE_START_ATTEMPTS = 3
_STARTED_LINE = "Ray runtime started."  # what `ray start` logs once its node has registered with the GCS

# Sets the CPU affinity, then execs the command: the pinned process is the `ray start` itself, so
# every process it and its raylet start inherits the mask (no preexec_fn in a threaded caller).
_PIN_AND_EXEC = (
    "import os, sys\n"
    "os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')})\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

# Runs as a separate driver: waits until the expected nodes are alive, prints them as JSON.
_WAIT_FOR_NODES = r"""
import json, sys, time
import ray
address, want, timeout_s = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout_s
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
gcs_address = ray.get_runtime_context().gcs_address
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    have = {k for n in nodes for k in n["Resources"] if k.startswith("device:")}
    heads = [n for n in nodes if "node:__internal_head__" in n["Resources"]]
    if heads and set(want) <= have and len(nodes) >= 1 + len(want):
        break
    if time.monotonic() > deadline:
        break
    time.sleep(0.25)
print(json.dumps({"gcs_address": gcs_address, "nodes": [
    {"node_id": n["NodeID"], "resources": n["Resources"], "alive": n["Alive"]} for n in ray.nodes()]}))
"""


class ClusterConfigError(ValueError):
    """The inventory cannot be started here (GPU tier, too many cores, unknown file): exit code 2."""


class ClusterStateError(RuntimeError):
    """A cluster already runs from this data dir, or none does where one is needed."""


class ClusterStartError(RuntimeError):
    """A node failed to start or join in time; what was started has been stopped again."""


@dataclass(frozen=True)
class NodeSpec:
    """One Ray node to start: the head (``tier`` None) or one CPU device tier."""

    name: str  # "head" or the tier's device type
    tier: str | None
    num_cpus: int
    cores: tuple[int, ...]  # CPU affinity of every process of the node
    resources: dict[str, int]
    object_store_bytes: int


@dataclass
class NodeState:
    name: str
    tier: str | None
    num_cpus: int
    cores: list[int]
    resources: dict[str, int]
    pgid: int  # the `ray start --block` leader: its pid is the node's session id and process group id
    pids: list[int]  # every process of the node when the state was written
    log: str
    node_id: str | None = None


@dataclass
class ClusterState:
    version: int
    cluster_id: str
    inventory: str
    inventory_path: str
    address: str  # GCS address (host:port) for ray.init(address=...) / hetagent run --address
    client_address: str  # Ray Client address (ray://host:port)
    temp_dir: str
    data_dir: str
    started_at: str
    start_s: float
    nodes: list[NodeState] = field(default_factory=list)

    @property
    def marker(self) -> str:
        return f"{MARKER_ENV}={self.cluster_id}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterState:
        nodes = [NodeState(**n) for n in data.get("nodes", [])]
        return cls(**{**data, "nodes": nodes})


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str  # one letter of /proc/<pid>/stat: R, S, D, Z, ...
    comm: str
    cmdline: str


# ----------------------------------------------------------------------------- paths and state


def cluster_dir(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / "cluster"


def state_path(data_dir: Path) -> Path:
    return cluster_dir(data_dir) / "state.json"


def ray_temp_dir(data_dir: Path) -> Path:
    """Ray's ``--temp-dir`` for the cluster of ``data_dir``: ``<data-dir>/cluster/ray`` when Ray's socket
    paths under it stay within the Unix limit, else ``/tmp/hetagent-ray-<hash of the data dir>``."""
    preferred = cluster_dir(data_dir) / "ray"
    if len(str(preferred).encode()) + RAY_SOCKET_SUFFIX_BYTES <= UNIX_SOCKET_PATH_MAX_BYTES:
        return preferred
    digest = hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return Path("/tmp") / f"hetagent-ray-{digest}"


def read_state(data_dir: Path) -> ClusterState | None:
    path = state_path(data_dir)
    try:
        return ClusterState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ClusterStateError(
            f"{path}: unreadable cluster state ({exc}); remove it after checking no cluster processes remain"
        ) from None


def _write_state(data_dir: Path, state: ClusterState) -> None:
    path = state_path(data_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Serialises up/down on one data dir (two `up`s racing would both see no state file)."""
    folder = cluster_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- planning


def available_cores() -> list[int]:
    """The CPUs this process may run on, in order (``os.sched_getaffinity(0)``)."""
    return sorted(os.sched_getaffinity(0))


def plan_nodes(inventory: ClusterInventory, catalog: Catalog, cores: list[int]) -> list[NodeSpec]:
    """The head plus one node per tier, with each tier's share of ``cores``; raises ClusterConfigError."""
    not_cpu = [
        (p.type, catalog.device(p.type).device_class.value)
        for p in inventory.devices
        if catalog.device(p.type).device_class is not DeviceClass.cpu
    ]
    if not_cpu:
        listed = ", ".join(f"{t} ({c})" for t, c in not_cpu)
        raise ClusterConfigError(
            f"inventory {inventory.name!r} has non-CPU tiers: {listed}. `hetagent cluster up` starts local CPU tiers "
            f"only (one Ray node per tier, pinned to this machine's cores); run GPU/accelerator tiers as Ray nodes on "
            f"their own machines (e.g. KubeRay worker groups advertising device:<type>) and connect with --address."
        )
    tiers: list[NodeSpec] = []
    next_core = 0
    needed = {p.type: (catalog.device(p.type).cores or 0) * p.count for p in inventory.devices}
    total = sum(needed.values())
    if total > len(cores):
        detail = ", ".join(f"{t}: {n}" for t, n in needed.items())
        raise ClusterConfigError(
            f"inventory {inventory.name!r} needs {total} cores ({detail}; catalog cores x count) but this process may "
            f"use {len(cores)} (CPUs {','.join(map(str, cores))})."
        )
    for pool in inventory.devices:
        device = catalog.device(pool.type)
        n = needed[pool.type]
        if n < 1:
            raise ClusterConfigError(f"tier {pool.type!r} has count {pool.count}: nothing to start")
        share = tuple(cores[next_core : next_core + n])
        next_core += n
        memory_bytes = device.memory_gib * 1024**3 * pool.count
        store = int(min(TIER_OBJECT_STORE_MAX_BYTES, TIER_OBJECT_STORE_FRACTION * memory_bytes))
        tiers.append(
            NodeSpec(
                name=pool.type,
                tier=pool.type,
                num_cpus=n,
                cores=share,
                resources={device_resource(pool.type): DEVICE_RESOURCE_UNITS},
                object_store_bytes=store,
            )
        )
    used = tuple(sorted({c for t in tiers for c in t.cores}))
    head = NodeSpec(
        name="head", tier=None, num_cpus=0, cores=used, resources={}, object_store_bytes=HEAD_OBJECT_STORE_BYTES
    )
    return [head, *tiers]


# ----------------------------------------------------------------------------- processes


def _read_proc(pid: int) -> ProcessInfo | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw_cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessInfo(
        pid=pid,
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        state=fields[0],
        comm=comm,
        cmdline=raw_cmd.replace(b"\0", b" ").decode(errors="replace").strip(),
    )


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cluster_processes(state: ClusterState, *, include_zombies: bool = False) -> dict[str, list[ProcessInfo]]:
    """Live processes of the cluster, by node name ("?" when only the temp dir ties one to it).

    A process belongs to node N when its session id is N's ``ray start`` leader, or its environment
    has the cluster marker (then NODE_ENV names the node), or its command line names the temp dir.
    Zombies (exited, waiting for their parent to reap them) are left out unless asked for.
    """
    sids = {n.pgid: n.name for n in state.nodes}
    out: dict[str, list[ProcessInfo]] = {}
    me = os.getpid()
    for pid in _all_pids():
        if pid == me:
            continue
        info = _read_proc(pid)
        if info is None or (info.state in ("Z", "X") and not include_zombies):
            continue
        node = sids.get(info.sid)
        if node is None:
            env = _environ(pid)
            if env.get(MARKER_ENV) == state.cluster_id:
                node = env.get(NODE_ENV, "?")
            elif state.temp_dir in info.cmdline:
                node = "?"
        if node is not None:
            out.setdefault(node, []).append(info)
    return out


def _signal(infos: list[ProcessInfo], sig: int) -> None:
    for info in infos:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(info.pid, sig)


def _wait_gone(state: ClusterState, names: set[str] | None, deadline: float) -> dict[str, list[ProcessInfo]]:
    """Polls until no process of the nodes ``names`` (all when None) remains, or ``deadline``; returns the rest."""
    while True:
        left = {k: v for k, v in cluster_processes(state).items() if names is None or k in names}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


# ----------------------------------------------------------------------------- up


def _free_port() -> int:
    """A TCP port nothing listens on now (outside Ray's default worker range 10002-19999: the kernel's
    ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


def _ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise ClusterConfigError(
            "the `ray` command is not installed (install the `runtime` extra: pip install -e '.[runtime]')"
        )
    return found


def _node_env(cluster_id: str, node: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update({"RAY_AUTH_MODE": "disabled", MARKER_ENV: cluster_id, NODE_ENV: node, "RAY_USAGE_STATS_ENABLED": "0"})
    env.update(ray_node_env())
    return env


def _start_node(spec: NodeSpec, args: list[str], *, cluster_id: str, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-c",
        _PIN_AND_EXEC,
        ",".join(map(str, spec.cores)),
        _ray_executable(),
        "start",
        *args,
        "--block",
        "--disable-usage-stats",
    ]
    env = _node_env(cluster_id, spec.name)
    if spec.tier is None:  # the head's autoscaler monitor serves metrics on a fixed port (44217) unless told otherwise
        env["AUTOSCALER_METRIC_PORT"] = str(_free_port())
    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _kill_node(state: ClusterState, name: str, wait_s: float = 10.0) -> None:
    """SIGKILL every process of one node (a failed start: nothing to drain)."""
    _signal(cluster_processes(state).get(name, []), signal.SIGKILL)
    _wait_gone(state, {name}, time.monotonic() + wait_s)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def up(
    inventory: str | Path,
    data_dir: Path,
    *,
    timeout_s: float = 180.0,
    catalog: Catalog | None = None,
    cwd: Path | None = None,
) -> ClusterState:
    """Start the head and one node per CPU tier of ``inventory``; returns the written state.

    Raises ClusterConfigError (inventory cannot run here), ClusterStateError (a cluster already runs
    from ``data_dir``) or ClusterStartError (a node did not come up; everything started was stopped).
    """
    t0 = time.monotonic()
    catalog = catalog or load_catalog()
    inv = load_cluster(inventory, catalog)
    specs = plan_nodes(inv, catalog, available_cores())
    data_dir = Path(data_dir).resolve()
    with _locked(data_dir):
        existing = read_state(data_dir)
        if existing is not None:
            if cluster_processes(existing):
                raise ClusterStateError(
                    f"a cluster is already running from {data_dir} (address {existing.address}, inventory "
                    f"{existing.inventory}); stop it first: hetagent cluster down --data-dir {data_dir}"
                )
            state_path(data_dir).unlink()  # stale: its processes are gone (e.g. after a reboot)
        temp_dir = ray_temp_dir(data_dir)
        temp_dir.mkdir(parents=True, exist_ok=True)
        (temp_dir / "ray_current_cluster").unlink(missing_ok=True)  # rewritten by the head when it is up
        logs = cluster_dir(data_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        cluster_id = uuid.uuid4().hex
        gcs_port, client_port = _free_port(), _free_port()
        state = ClusterState(
            version=STATE_VERSION,
            cluster_id=cluster_id,
            inventory=inv.name,
            inventory_path=str(inventory),
            address=f"127.0.0.1:{gcs_port}",
            client_address=f"ray://127.0.0.1:{client_port}",
            temp_dir=str(temp_dir),
            data_dir=str(data_dir),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            start_s=0.0,
        )
        procs: dict[str, subprocess.Popen[bytes]] = {}
        workdir = Path(cwd or os.getcwd())
        deadline = t0 + timeout_s
        address_file = temp_dir / "ray_current_cluster"

        def fail(why: str, node: str | None = None) -> ClusterStartError:
            """Stops what was started; the error carries the failing node's log tail."""
            detail = ""
            if node is not None:
                log = Path(next(n.log for n in state.nodes if n.name == node))
                detail = f"\n--- last lines of {log}:\n{_tail(log)}"
            _down_locked(data_dir, grace_s=5.0, keep_temp_dir=True)
            return ClusterStartError(f"{why}{detail}")

        def start(spec: NodeSpec, args: list[str]) -> None:
            """Starts one node and waits until it is up; retries a node whose `ray start` gives up.

            `ray start` allows a raylet 30 s to register with the GCS (hard-coded in ray._private.node), which a
            busy 2-core machine can exceed; the leftovers of a failed attempt are killed before the next one."""
            log = logs / f"{spec.name}.log"
            failures = []
            for attempt in range(1, NODE_START_ATTEMPTS + 1):
                offset = log.stat().st_size if log.exists() else 0
                proc = _start_node(spec, args, cluster_id=cluster_id, log=log, cwd=workdir)
                procs[spec.name] = proc
                node = NodeState(
                    name=spec.name,
                    tier=spec.tier,
                    num_cpus=spec.num_cpus,
                    cores=list(spec.cores),
                    resources=spec.resources,
                    pgid=proc.pid,
                    pids=[proc.pid],
                    log=str(log),
                )
                state.nodes = [n for n in state.nodes if n.name != spec.name] + [node]
                _write_state(data_dir, state)  # at once, so `down` can clean up after an interrupted `up`
                while True:
                    if spec.tier is None and address_file.exists():  # the head writes the GCS address when it is up
                        return
                    if spec.tier is not None and _STARTED_LINE in _read_from(log, offset):
                        return
                    if proc.poll() is not None:
                        break
                    if time.monotonic() > deadline:
                        raise fail(f"Ray node {spec.name!r} did not start within {timeout_s:.0f} s", spec.name)
                    time.sleep(0.1)
                failures.append(f"attempt {attempt}: `ray start` exited with code {proc.returncode}")
                _kill_node(state, spec.name)
            raise fail(f"Ray node {spec.name!r} failed to start ({'; '.join(failures)})", spec.name)

        try:
            head, tiers = specs[0], specs[1:]
            start(
                head,
                [
                    "--head",
                    "--num-cpus",
                    "0",
                    "--port",
                    str(gcs_port),
                    "--ray-client-server-port",
                    str(client_port),
                    "--dashboard-agent-listen-port",
                    str(_free_port()),
                    "--include-dashboard",
                    "false",
                    "--min-worker-port",
                    "0",
                    "--max-worker-port",
                    "0",
                    "--temp-dir",
                    str(temp_dir),
                    "--object-store-memory",
                    str(head.object_store_bytes),
                ],
            )
            state.address = address_file.read_text().strip() or state.address
            host = state.address.rsplit(":", 1)[0]
            state.client_address = f"ray://{host}:{client_port}"
            for spec in tiers:  # one after another: starting them together overloads a small machine
                start(
                    spec,
                    [
                        "--address",
                        state.address,
                        "--num-cpus",
                        str(spec.num_cpus),
                        "--resources",
                        json.dumps(spec.resources),
                        "--dashboard-agent-listen-port",
                        str(_free_port()),
                        "--min-worker-port",
                        "0",
                        "--max-worker-port",
                        "0",
                        # one log monitor per machine (the head's) reads every node's logs
                        "--include-log-monitor",
                        "false",
                        "--temp-dir",
                        str(temp_dir),
                        "--object-store-memory",
                        str(spec.object_store_bytes),
                    ],
                )
            want = [r for s in tiers for r in s.resources]
            remaining = max(5.0, deadline - time.monotonic())
            waiter = subprocess.Popen(
                [sys.executable, "-c", _WAIT_FOR_NODES, state.address, json.dumps(want), str(remaining)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=workdir,
                env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"},
            )
            while waiter.poll() is None:
                dead = [name for name, p in procs.items() if p.poll() is not None]
                if dead:
                    waiter.kill()
                    waiter.wait()
                    code = procs[dead[0]].returncode
                    raise fail(f"Ray node {dead[0]!r} exited with code {code} before joining", dead[0])
                if time.monotonic() > deadline + 30:
                    waiter.kill()
                    waiter.wait()
                    raise fail(f"the nodes did not join within {timeout_s:.0f} s")
                time.sleep(0.1)
            out, err = waiter.communicate()
            try:
                seen = json.loads(out.strip().splitlines()[-1])
            except (json.JSONDecodeError, IndexError):
                raise fail(f"could not query the cluster's nodes:\n{err[-2000:]}") from None
            alive = [n for n in seen["nodes"] if n["alive"]]
            for node in state.nodes:
                match = [
                    n
                    for n in alive
                    if (node.tier is None and "node:__internal_head__" in n["resources"])
                    or (node.tier is not None and device_resource(node.tier) in n["resources"])
                ]
                if not match:
                    raise fail(f"Ray node {node.name!r} did not join within {timeout_s:.0f} s", node.name)
                node.node_id = match[0]["node_id"]
            state.address = seen.get("gcs_address") or state.address
            found = cluster_processes(state)
            for node in state.nodes:
                node.pids = sorted(p.pid for p in found.get(node.name, []))
        except ClusterStartError:
            raise  # fail() has stopped everything
        except BaseException:  # interrupted (Ctrl-C) or a bug: leave no process behind
            _down_locked(data_dir, grace_s=5.0, keep_temp_dir=True)
            raise
        state.start_s = round(time.monotonic() - t0, 2)
        _write_state(data_dir, state)
        return state


# ----------------------------------------------------------------------------- down


@dataclass
class DownReport:
    stopped: bool  # False: there was no cluster state in the data dir
    address: str | None = None
    signalled: list[int] = field(default_factory=list)  # every pid sent SIGTERM
    killed: list[int] = field(default_factory=list)  # pids that needed SIGKILL
    remaining: list[int] = field(default_factory=list)  # pids still alive after SIGKILL (should be empty)
    stop_s: float = 0.0


def down(data_dir: Path, *, grace_s: float = 15.0) -> DownReport:
    """Stop every process of the cluster started from ``data_dir`` and remove its state file (idempotent)."""
    with _locked(Path(data_dir).resolve()):
        return _down_locked(Path(data_dir).resolve(), grace_s=grace_s)


def _down_locked(data_dir: Path, *, grace_s: float, keep_temp_dir: bool = False) -> DownReport:
    t0 = time.monotonic()
    state = read_state(data_dir)
    if state is None:
        return DownReport(stopped=False)
    report = DownReport(stopped=True, address=state.address)
    leaders = {n.name: n.pgid for n in state.nodes}
    procs = cluster_processes(state)
    # 1. tier nodes first: their `ray start` drains the node through the head's GCS and stops its processes
    tier_names = {n.name for n in state.nodes if n.tier is not None}
    first = [p for name in tier_names for p in procs.get(name, []) if p.pid == leaders[name]]
    _signal(first, signal.SIGTERM)
    report.signalled += [p.pid for p in first]
    _wait_gone(state, tier_names, time.monotonic() + grace_s / 2)
    # 2. the head, then everything still there (tier nodes that did not finish, strays)
    procs = cluster_processes(state)
    head = [p for p in procs.get("head", []) if p.pid == leaders["head"]]
    _signal(head, signal.SIGTERM)
    report.signalled += [p.pid for p in head]
    _wait_gone(state, None, time.monotonic() + grace_s / 2)
    rest = [p for ps in cluster_processes(state).values() for p in ps]
    _signal(rest, signal.SIGTERM)
    report.signalled += [p.pid for p in rest]
    left = _wait_gone(state, None, time.monotonic() + 2.0)
    # 3. SIGKILL what is left, until nothing of the cluster remains
    deadline = time.monotonic() + 10.0
    while left and time.monotonic() < deadline:
        stragglers = [p for ps in left.values() for p in ps]
        _signal(stragglers, signal.SIGKILL)
        report.killed += [p.pid for p in stragglers if p.pid not in report.killed]
        left = _wait_gone(state, None, time.monotonic() + 1.0)
    report.remaining = sorted(p.pid for ps in left.values() for p in ps)
    report.signalled = sorted(set(report.signalled))
    if report.remaining:
        report.stop_s = round(time.monotonic() - t0, 2)
        return report  # keep the state file: the processes it names still run
    state_path(data_dir).unlink(missing_ok=True)
    temp = Path(state.temp_dir)
    if not keep_temp_dir and not temp.is_relative_to(data_dir) and temp.name.startswith("hetagent-ray-"):
        shutil.rmtree(temp, ignore_errors=True)  # the /tmp fallback holds only Ray's session files
    report.stop_s = round(time.monotonic() - t0, 2)
    return report


# ----------------------------------------------------------------------------- status


@dataclass
class NodeStatus:
    name: str
    tier: str | None
    cores: list[int]
    num_cpus: int
    leader_alive: bool
    processes: int


def status(data_dir: Path) -> tuple[ClusterState | None, list[NodeStatus], int]:
    """State, per-node liveness (from /proc, no Ray call) and the count of unattributed cluster processes."""
    state = read_state(data_dir)
    if state is None:
        return None, [], 0
    procs = cluster_processes(state)
    rows = []
    for n in state.nodes:
        mine = procs.get(n.name, [])
        rows.append(
            NodeStatus(
                name=n.name,
                tier=n.tier,
                cores=n.cores,
                num_cpus=n.num_cpus,
                leader_alive=any(p.pid == n.pgid for p in mine),
                processes=len(mine),
            )
        )
    return state, rows, len(procs.get("?", []))
