"""`hetagent deploy values|render`: Helm values from a cluster inventory, and the chart rendered offline
(orchestrator/deploy.py; the chart is deploy/helm/hetagent, docs/deploy.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

deploy_app = typer.Typer(
    no_args_is_help=True,
    help="Kubernetes: chart values from a cluster inventory (`values`), the chart rendered offline (`render`).",
)

_CLUSTER_HELP = "Cluster inventory (path or name in configs/clusters) whose device tiers become the worker groups."


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of two values files: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_values(path: Path) -> dict[str, Any]:
    import yaml

    from orchestrator.cli import _fail

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        _fail(f"cannot read {path}: {exc}")
    except yaml.YAMLError as exc:
        _fail(f"{path}: invalid YAML: {exc}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        _fail(f"{path}: a values file is a mapping, not {type(data).__name__}")
    return data


def _generated(cluster: str, with_catalog: bool) -> dict[str, Any]:
    from orchestrator.cli import _fail, _user_errors
    from orchestrator.deploy import DeployError, values_for_cluster

    try:
        return values_for_cluster(cluster, include_catalog=with_catalog)
    except (*_user_errors(), DeployError) as exc:
        _fail(str(exc))


@deploy_app.command("values")
def values(
    cluster: str = typer.Option(..., "--cluster", help=_CLUSTER_HELP),
    catalog: bool = typer.Option(
        True, help="Put the inventory's hardware entries and every model into the values (else: the image's catalog)."
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of standard output."),
) -> None:
    """Print chart values for a cluster inventory: `helm install hetagent deploy/helm/hetagent -f my-values.yaml`."""
    from orchestrator.deploy import values_yaml

    text = values_yaml(_generated(cluster, catalog), source=cluster)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


@deploy_app.command("render")
def render(
    cluster: str | None = typer.Option(None, "--cluster", help=_CLUSTER_HELP + " Default: the chart's defaults."),
    values_files: list[Path] = typer.Option(
        [], "--values", "-f", help="Values files merged over the generated values, in order (as helm -f)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Folder: one file per object, <kind>-<name>.yaml. Default: one YAML stream."
    ),
    release: str = typer.Option("hetagent", help="Release name (object names derive from it)."),
    namespace: str = typer.Option("hetagent", help="Namespace of the objects."),
) -> None:
    """Render the chart offline with Helm's Go SDK (helm-python-sdk; no helm binary, no cluster): review, GitOps."""
    from orchestrator.cli import _fail, err
    from orchestrator.deploy import DeployError, manifest_stream, manifests, render_chart_text, write_manifests

    merged: dict[str, Any] = _generated(cluster, True) if cluster else {}
    for path in values_files:
        merged = _deep_merge(merged, _read_values(path))
    try:
        objects = manifests(render_chart_text(merged, release=release, namespace=namespace))
    except DeployError as exc:
        _fail(f"the chart refused the values:\n{exc}")
    if output is None:
        sys.stdout.write(manifest_stream(objects))
        return
    paths = write_manifests(objects, output)
    err.print(f"wrote {len(paths)} objects to {output}/", highlight=False)
