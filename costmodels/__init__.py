"""Cost models, the bottom layer: hardware/model/cluster catalogs, operator work, roofline latency,
calibration, and the granular graph the compiler hands to the planner.

Imports nothing else of the project (see CONTRIBUTING.md). The names below are the public API;
they load on first use, so ``import costmodels`` costs nothing.
"""

from __future__ import annotations

import collections.abc  # not `from ... import`: tests/test_layers.py reads this file's from-imports as the API
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from costmodels.calibrate import calibrate_cpu as calibrate_cpu, write_profile as write_profile
    from costmodels.catalog import (
        Catalog as Catalog,
        CatalogError as CatalogError,
        ClusterInventory as ClusterInventory,
        DeviceClass as DeviceClass,
        DevicePool as DevicePool,
        DeviceType as DeviceType,
        ModelSpec as ModelSpec,
        list_clusters as list_clusters,
        load_catalog as load_catalog,
        load_cluster as load_cluster,
        profiles_dir as profiles_dir,
    )
    from costmodels.check import check_rows as check_rows, load_profile_rows as load_profile_rows
    from costmodels.fit import fit_efficiency as fit_efficiency
    from costmodels.granular import (
        GranularEdge as GranularEdge,
        GranularGraph as GranularGraph,
        GranularOp as GranularOp,
    )
    from costmodels.link_calibration import apply_link_fit as apply_link_fit, measure_link as measure_link
    from costmodels.online import (
        Observation as Observation,
        observations_from_records as observations_from_records,
        refit as refit,
    )

# public name -> the module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "Catalog": "costmodels.catalog",
    "CatalogError": "costmodels.catalog",
    "ClusterInventory": "costmodels.catalog",
    "DeviceClass": "costmodels.catalog",
    "DevicePool": "costmodels.catalog",
    "DeviceType": "costmodels.catalog",
    "ModelSpec": "costmodels.catalog",
    "list_clusters": "costmodels.catalog",
    "load_catalog": "costmodels.catalog",
    "load_cluster": "costmodels.catalog",
    "profiles_dir": "costmodels.catalog",
    "GranularEdge": "costmodels.granular",
    "GranularGraph": "costmodels.granular",
    "GranularOp": "costmodels.granular",
    "calibrate_cpu": "costmodels.calibrate",
    "write_profile": "costmodels.calibrate",
    "apply_link_fit": "costmodels.link_calibration",
    "measure_link": "costmodels.link_calibration",
    "Observation": "costmodels.online",
    "observations_from_records": "costmodels.online",
    "refit": "costmodels.online",
    "load_profile_rows": "costmodels.check",
    "check_rows": "costmodels.check",
    "fit_efficiency": "costmodels.fit",
}
__all__ = list(_EXPORTS)


def lazy_exports(
    namespace: dict[str, Any], exports: collections.abc.Mapping[str, str]
) -> tuple[collections.abc.Callable[[str], Any], collections.abc.Callable[[], list[str]]]:
    """A package's module-level ``__getattr__`` and ``__dir__`` (PEP 562) for its public API: each name of
    ``exports`` (name -> the module defining it) is imported on first use and kept in ``namespace`` (the
    package's ``globals()``), so importing the package imports none of its modules. Every package uses it::

        __getattr__, __dir__ = costmodels.lazy_exports(globals(), _EXPORTS)
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
