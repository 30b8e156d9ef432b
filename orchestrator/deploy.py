"""Helm values from a cluster inventory, and the chart rendered offline with Helm's own Go SDK.

`hetagent deploy values` and `hetagent deploy render` (orchestrator/cli_deploy.py) build the chart's values
(deploy/helm/hetagent) from the same loaders the planner uses (`costmodels.load_cluster`, `load_catalog`), so
the RayCluster's worker groups are the inventory's device tiers, never a second list that can drift:

* one worker group per pool of the inventory, named after the device type; it advertises the custom Ray
  resource ``device:<type>`` that the runtime's placement asks for (`workers.actors.device_resource`);
* one pod per node: ``devicesPerNode`` = the pool's ``per_node``, ``maxReplicas`` = its nodes,
  ``ceil(count / per_node)``; ``minReplicas`` 0, since KubeRay's autoscaler adds pods while actors wait;
* the accelerator's resource key and node label by vendor (`ACCELERATORS`, `NODE_LABELS`); CPU pools select
  nodes by a label the operator sets (`CPU_TIER_LABEL`);
* the catalog entries the daemon will read (the inventory's device types, calibrated profiles included, and
  every model) go into the ConfigMap, so the daemon plans with the numbers the values were made from.

`render_chart_text` and `render_chart` render through the ``helm-python-sdk`` package (libhelm_c, a C ABI over
Helm v4's Go SDK, bundled in the wheel): Helm merges the values with the chart's defaults and validates them
against values.schema.json exactly as ``helm install`` would, and no helm binary or cluster is involved.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from costmodels.catalog import Catalog, ClusterInventory, DevicePool, DeviceType

CHART_DIR = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "hetagent"
DEFAULT_RELEASE = "hetagent"
DEFAULT_NAMESPACE = "hetagent"

# Per-node resources of a worker pod, chart defaults the values file states (change them there):
ACCEL_CPUS_PER_DEVICE = 2  # one CPU for each engine's scheduler loop (workers/actors.py) and one spare
ACCEL_HOST_GIB_PER_DEVICE = 16  # host memory per accelerator (weight loading, tokenizers, KV swap)
ACCEL_HOST_GIB_BASE = 8  # the raylet, the object store's share, the Python workers
CPU_REQUEST_FRACTION = 0.9  # a CPU pod asks this share of the node's cores and DRAM (the kubelet keeps some)

# Extended resource of the device plugin, by (vendor, device class) of the catalog.
ACCELERATORS: dict[tuple[str, str], tuple[str, str]] = {
    # (resource key, worker image kind)
    ("nvidia", "gpu"): ("nvidia.com/gpu", "nvidia"),  # NVIDIA device plugin / GPU operator
    ("amd", "gpu"): ("amd.com/gpu", "amd"),  # AMD GPU device plugin / AMD GPU operator
    ("intel", "accelerator"): ("habana.ai/gaudi", "gaudi"),  # Intel Gaudi device plugin / Gaudi base operator
}

# Node label the vendor's node discovery sets, by catalog device type.
# NVIDIA GPU feature discovery (GPU operator): nvidia.com/gpu.product = the product name nvidia-smi reports,
# spaces as hyphens. AMD GPU node labeller (AMD GPU operator): amd.com/gpu.device-id = the PCI device id.
NODE_LABELS: dict[str, tuple[str, str]] = {
    "h100-sxm": ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
    "h200-sxm": ("nvidia.com/gpu.product", "NVIDIA-H200"),
    "b200": ("nvidia.com/gpu.product", "NVIDIA-B200"),
    "a100-80g": ("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-80GB"),
    "a100-40g": ("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-40GB"),
    "l40s": ("nvidia.com/gpu.product", "NVIDIA-L40S"),
    "l4": ("nvidia.com/gpu.product", "NVIDIA-L4"),
    "a10g": ("nvidia.com/gpu.product", "NVIDIA-A10G"),
    "t4": ("nvidia.com/gpu.product", "Tesla-T4"),
    "mi300x": ("amd.com/gpu.device-id", "74a1"),
}
# No discovery label names the model (CPU sockets; Gaudi 2 vs 3): the operator labels those nodes.
CPU_TIER_LABEL = "hetagent.io/cpu-tier"
ACCELERATOR_TIER_LABEL = "hetagent.io/accelerator-tier"


class DeployError(ValueError):
    """The inventory cannot be turned into chart values, or the chart refuses the values (exit code 2)."""


def _node_selector(device: DeviceType) -> dict[str, str]:
    if device.name in NODE_LABELS:
        key, value = NODE_LABELS[device.name]
        return {key: value}
    if device.device_class.value == "cpu":
        return {CPU_TIER_LABEL: device.name}
    return {ACCELERATOR_TIER_LABEL: device.name}


def worker_group(pool: DevicePool, device: DeviceType) -> dict[str, Any]:
    """The chart's worker group of one inventory pool (one Ray node, one pod, per node of the pool)."""
    nodes = math.ceil(pool.count / pool.per_node) if pool.count else 0
    cls = device.device_class.value
    if cls == "cpu":
        resource, image_kind = "", "cpu"
        cores = (device.cores or 1) * pool.per_node
        ray_cpus = cores
        request_cpus = max(1, math.floor(cores * CPU_REQUEST_FRACTION))
        memory_gib = max(1, math.floor(device.memory_gib * pool.per_node * CPU_REQUEST_FRACTION))
        tolerations: list[dict[str, str]] = []
    else:
        key = (device.vendor.lower(), cls)
        if key not in ACCELERATORS:
            raise DeployError(
                f"device type {device.name!r} ({device.vendor} {cls}) has no known Kubernetes device plugin "
                f"resource; known: {', '.join(f'{v} {c}' for v, c in ACCELERATORS)}"
            )
        resource, image_kind = ACCELERATORS[key]
        ray_cpus = request_cpus = ACCEL_CPUS_PER_DEVICE * pool.per_node
        memory_gib = ACCEL_HOST_GIB_BASE + ACCEL_HOST_GIB_PER_DEVICE * pool.per_node
        # GPU node pools are commonly tainted with the device plugin's resource name
        tolerations = [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "deviceType": device.name,
        "deviceClass": cls,
        "vendor": device.vendor.lower(),
        "imageKind": image_kind,
        "devices": pool.count,
        "devicesPerNode": pool.per_node,
        "minReplicas": 0,
        "maxReplicas": nodes,
        "replicas": 0,
        "acceleratorResource": resource,
        "rayCpus": ray_cpus,
        "nodeSelector": _node_selector(device),
        "tolerations": tolerations,
        "resources": {
            "requests": {"cpu": str(request_cpus), "memory": f"{memory_gib}Gi"},
            "limits": {"memory": f"{memory_gib}Gi"},
        },
    }


def _catalog_entries(catalog: Catalog, inventory: ClusterInventory) -> dict[str, list[dict[str, Any]]]:
    hardware = [catalog.device(p.type).model_dump(mode="json", exclude_none=True) for p in inventory.devices]
    models = [m.model_dump(mode="json", exclude_none=True) for _, m in sorted(catalog.models.items())]
    return {"hardware": hardware, "models": models}


def values_from_inventory(
    inventory: ClusterInventory,
    catalog: Catalog,
    *,
    control_window_s: float = 60.0,
    control_dwell_s: float = 60.0,
    include_catalog: bool = True,
) -> dict[str, Any]:
    """Chart values for ``inventory`` (only the keys it decides; the chart's defaults fill in the rest).

    The autoscaler's idle timeout is the control loop's dwell + window: a pod a re-plan freed stays until the
    loop may change that deployment again and has measured a whole window since."""
    catalog.check_cluster(inventory)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", inventory.name):
        raise DeployError(f"cluster name {inventory.name!r} cannot be a file name in the ConfigMap mount")
    groups = [worker_group(pool, catalog.device(pool.type)) for pool in inventory.devices]
    values: dict[str, Any] = {
        "cluster": {"inventory": inventory.model_dump(mode="json", exclude_none=True)},
        "daemon": {"controlWindowS": control_window_s, "controlDwellS": control_dwell_s},
        "rayCluster": {
            "autoscaler": {"idleTimeoutSeconds": math.ceil(control_dwell_s + control_window_s)},
            "workerGroups": groups,
        },
    }
    if include_catalog:
        values["catalog"] = _catalog_entries(catalog, inventory)
    return values


def values_for_cluster(cluster: str | Path, **kwargs: Any) -> dict[str, Any]:
    """`values_from_inventory` for an inventory file or name (configs/clusters), with the repo's catalog."""
    from costmodels.catalog import load_catalog, load_cluster

    catalog = load_catalog()
    return values_from_inventory(load_cluster(cluster, catalog), catalog, **kwargs)


def values_yaml(values: dict[str, Any], *, source: str = "") -> str:
    """The values as a YAML file with a header that says where they came from."""
    head = "# hetagent chart values"
    if source:
        head += f", generated by `hetagent deploy values --cluster {source}`"
    head += "\n# (orchestrator/deploy.py; regenerate rather than edit the cluster, catalog and workerGroups keys)\n"
    return head + yaml.safe_dump(values, sort_keys=False, width=120)


# ----------------------------------------------------------------------------- rendering


def _helm() -> Any:
    try:
        import helm_python
    except ImportError as exc:  # pragma: no cover - the deploy extra is installed by make
        raise DeployError("rendering needs the helm-python-sdk package: pip install 'hetagent[deploy]'") from exc
    return helm_python


def render_chart_text(
    values: dict[str, Any] | None = None,
    *,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    chart_dir: Path = CHART_DIR,
) -> dict[str, str]:
    """Render the chart offline: template path → rendered text (NOTES.txt included, empty templates left out).

    Helm coalesces ``values`` with the chart's values.yaml and validates the result against
    values.schema.json; a refusal (schema or a template's `fail`) raises DeployError with Helm's message."""
    helm = _helm()
    try:
        with helm.Chart.load(str(chart_dir)) as chart:
            rendered: dict[str, str] = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    except helm.HelmError as exc:
        raise DeployError(str(exc).strip()) from None
    return {path: text for path, text in sorted(rendered.items()) if text.strip()}


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of a render (every template but NOTES.txt, split into documents)."""
    objects: list[dict[str, Any]] = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def render_chart(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Render the chart and parse it: the list of objects ``helm install`` would create (see render_chart_text)."""
    return manifests(render_chart_text(values, **kwargs))


def lint_chart(values: dict[str, Any] | None = None, *, chart_dir: Path = CHART_DIR) -> dict[str, Any]:
    """``helm lint --strict`` through the SDK: {"messages": [{"severity", "path", "error"}], "errors": [...]}."""
    result: dict[str, Any] = _helm().lint(str(chart_dir), values, strict=True)
    return result


def object_file_name(obj: dict[str, Any]) -> str:
    """``<kind>-<name>.yaml``, lower case: one file per object in `write_manifests`."""
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def write_manifests(objects: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One YAML file per object under ``out_dir`` (created); returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for obj in objects:
        path = out_dir / object_file_name(obj)
        path.write_text(yaml.safe_dump(obj, sort_keys=False, width=120))
        paths.append(path)
    return paths


def manifest_stream(objects: list[dict[str, Any]]) -> str:
    """All objects as one multi-document YAML stream (``kubectl apply -f -``)."""
    return "".join("---\n" + yaml.safe_dump(obj, sort_keys=False, width=120) for obj in objects)
