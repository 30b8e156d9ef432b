"""Hardware, model and cluster catalogs: Pydantic models and YAML loaders.

Every number in a catalog file carries its source in the entry's ``sources`` map (keyed by
field name, dotted for nested fields such as ``peak_tflops.bf16``), so a reader can check it.
A cluster inventory may override the price or capex of any device type.
"""

from __future__ import annotations

import enum
import functools
import os
from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

HOURS_PER_YEAR = 8760.0
GIB = 1024**3


class CatalogError(ValueError):
    """A catalog or inventory file is missing, malformed or refers to an unknown entry."""


class DeviceClass(str, enum.Enum):
    """Where an operator can run: host-only operators (tokenize, tools, FAISS) need a CPU."""

    cpu = "cpu"
    gpu = "gpu"
    accelerator = "accelerator"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Efficiency(_Strict):
    """Fraction of peak a real kernel reaches, and the shape of the roofline; calibrated from measurements.

    Dimensionless fractions of the datasheet peaks, so a fit on one device carries over to another through that
    device's own peaks (docs/costmodel.md has the equations)."""

    compute: float = Field(0.6, gt=0, le=1, description="Achieved / peak FLOP/s for large GEMMs.")
    memory: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Achieved / peak memory bandwidth for streaming reads (GEMM weights, element-wise kernels).",
    )
    attention_compute: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Achieved / peak FLOP/s of attention kernels (prefill: causal QK^T and AV, 2·P²·d_q FLOPs a "
        "layer); flash-attention kernels reach far less than GEMMs. None: the same as `compute`.",
    )
    attention_memory: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Achieved / peak memory bandwidth of attention kernels reading the KV cache (decode). "
        "None: the same as `memory`.",
    )
    ridge_exponent: float | None = Field(
        None,
        ge=1,
        description="p of the smooth roofline (t_compute^p + t_memory^p)^(1/p) of each kernel group: near the "
        "ridge point a kernel reaches neither roof. None: the hard max (p = infinity).",
    )
    kernel_overhead_us: float = Field(
        0.0,
        ge=0,
        description="Fixed time of one kernel, microseconds (the floor a tiny kernel takes from launch to finish), "
        "times the kernels a step runs (costmodels/work.py counts them).",
    )
    link: float = Field(0.8, gt=0, le=1, description="Achieved / peak link bandwidth for bulk transfers.")
    fixed_overhead_ms: float = Field(
        0.0, ge=0, description="Per-kernel-step overhead (launch, scheduling) added to every roofline estimate."
    )
    transfer_fixed_ms: float = Field(
        0.0,
        ge=0,
        description="Fixed cost of one transfer to or from another device type (hand-off set-up, "
        "serialisation, scheduling), added to bytes / link bandwidth; measured by `hetagent calibrate --kv-transfer`.",
    )


class DeviceType(_Strict):
    """One hardware tier: a GPU, accelerator or server CPU socket."""

    name: str = Field(description="Catalog id, e.g. 'h100-sxm'.", pattern=r"^[a-z0-9][a-z0-9-]*$")
    display_name: str
    vendor: str
    device_class: DeviceClass
    peak_tflops: dict[str, float] = Field(
        description="Dense peak TFLOP/s per dtype (bf16, fp16, fp8, int8, fp32). CPUs: measured or vendor AMX/AVX-512."
    )
    memory_gib: float = Field(gt=0, description="Device memory (HBM/GDDR) or, for a CPU socket, DRAM per socket.")
    memory_bandwidth_gb_s: float = Field(gt=0, description="Peak memory bandwidth, GB/s (1e9 bytes/s).")
    intra_node_link_gb_s: float = Field(
        gt=0,
        description="Device-to-device bandwidth inside a node (NVLink, Infinity Fabric, PCIe), GB/s per direction.",
    )
    network_gb_s: float = Field(gt=0, description="Scale-out network bandwidth per device (NIC share), GB/s.")
    max_devices_per_node: int = Field(ge=1, description="Upper bound on tensor parallelism inside one node.")
    cores: int | None = Field(None, ge=1, description="CPU cores per socket (CPU device types only).")
    tdp_w: float = Field(gt=0, description="Board / socket power, W.")
    price_usd_per_h: float | None = Field(None, gt=0, description="Cloud on-demand price of one device-hour, USD.")
    capex_usd: float | None = Field(None, gt=0, description="Purchase price of one device, USD.")
    efficiency: Efficiency = Field(default_factory=Efficiency)
    sources: dict[str, str] = Field(default_factory=dict, description="Field name → where the number comes from.")
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> DeviceType:
        if self.device_class is DeviceClass.cpu and self.cores is None:
            raise ValueError(f"CPU device type {self.name!r} needs 'cores'")
        if not self.peak_tflops:
            raise ValueError(f"device type {self.name!r} needs at least one peak_tflops entry")
        return self

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s at ``dtype``, falling back to the closest wider type."""
        for candidate in (dtype, *_DTYPE_FALLBACK.get(dtype, ())):
            if candidate in self.peak_tflops:
                return self.peak_tflops[candidate] * 1e12
        raise CatalogError(f"device type {self.name!r} has no peak FLOP/s for dtype {dtype!r}")

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB


_DTYPE_FALLBACK = {"bf16": ("fp16", "fp32"), "fp16": ("bf16", "fp32"), "fp8": ("bf16", "fp16"), "int8": ("fp8", "bf16")}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


class ModelKind(str, enum.Enum):
    llm = "llm"
    embedding = "embedding"


class ModelSpec(_Strict):
    """Architecture of a transformer model: enough to count FLOPs, weight and KV bytes."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    display_name: str
    kind: ModelKind
    parameters: float = Field(gt=0, description="Total parameter count.")
    layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    dtype: str = Field("bf16", description="Serving dtype of the weights and KV cache.")
    max_context_tokens: int = Field(ge=1)
    embedding_dim: int | None = Field(None, description="Output vector size (embedding models).")
    sources: dict[str, str] = Field(default_factory=dict)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def weight_bytes(self) -> float:
        return self.parameters * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V, every layer: 2 · layers · kv_heads · head_dim · dtype bytes."""
        return 2.0 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


class DevicePool(_Strict):
    """How many devices of one type a cluster has, and what they cost there."""

    type: str = Field(description="Hardware catalog id.")
    count: int = Field(ge=0, description="Devices in the cluster (GPUs, or CPU sockets).")
    per_node: int = Field(ge=1, description="Devices per node; tensor parallelism stays inside a node.")
    pricing: Annotated[str, Field(pattern="^(cloud|owned)$")] | None = Field(
        None,
        description="'cloud' uses $/h; 'owned' amortises capex and adds power. Default: cloud if a price is known.",
    )
    price_usd_per_h: float | None = Field(None, gt=0, description="Overrides the catalog price.")
    capex_usd: float | None = Field(None, gt=0, description="Overrides the catalog capex.")


class RuntimeCpu(_Strict):
    """The serving runtime's own CPU work where it shares cores with the plan's ops (``local``: one machine runs
    the daemon, Ray, the engines and the host ops). Measured, not modelled: bench/simulator_validation.py prints
    the figures of a machine (its ``runtime_cpu``). The simulator charges it (simulator/core.py, Runtime CPU)."""

    device: str = Field(description="The CPU device type (of this cluster) whose cores the daemon and Ray share.")
    cpu_s_per_run: float = Field(ge=0, description="Core-seconds of the daemon and Ray per run.")
    cpu_s_per_output_token: float = Field(
        ge=0, description="Core-seconds of a CPU engine's front-end per generated token (output processing, streaming)."
    )
    engine_cores_busy: float | None = Field(
        None,
        gt=0,
        description="Cores a CPU engine keeps busy while it steps, measured (its CPU-seconds ÷ its stepping seconds "
        "on an idle machine); below cores_per_replica where part of a step is single-threaded. None: the plan's "
        "cores_per_replica.",
    )
    source: str = Field("", description="Where the figures come from: command, machine, date.")


class ClusterInventory(_Strict):
    """A cluster: device pools plus the economics needed for TCO."""

    name: str
    description: str = ""
    electricity_usd_per_kwh: float = Field(0.10, ge=0)
    pue: float = Field(1.3, ge=1.0, description="Power usage effectiveness of the data centre.")
    amortisation_years: float = Field(4.0, gt=0)
    devices: list[DevicePool] = Field(min_length=1)
    model_overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Serve model A as model B on this cluster (catalog ids): a development machine runs large LLMs "
        "as a small one so the same graphs plan and run there.",
    )
    runtime_cpu: RuntimeCpu | None = Field(
        None, description="The runtime's CPU on cores the plan's ops use; None: the daemon has cores of its own."
    )

    @model_validator(mode="after")
    def _unique(self) -> ClusterInventory:
        names = [d.type for d in self.devices]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"device types listed twice: {sorted(dup)}")
        if self.runtime_cpu is not None and self.runtime_cpu.device not in names:
            raise ValueError(f"runtime_cpu.device {self.runtime_cpu.device!r} is not a device of the cluster: {names}")
        return self

    def pool(self, device_type: str) -> DevicePool:
        for p in self.devices:
            if p.type == device_type:
                return p
        raise CatalogError(f"cluster {self.name!r} has no device type {device_type!r}")


class Catalog(_Strict):
    """Everything the cost models know about hardware and models."""

    hardware: dict[str, DeviceType]
    models: dict[str, ModelSpec]

    def device(self, name: str) -> DeviceType:
        try:
            return self.hardware[name]
        except KeyError:
            raise CatalogError(f"unknown device type {name!r}; known: {', '.join(sorted(self.hardware))}") from None

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise CatalogError(f"unknown model {name!r}; known: {', '.join(sorted(self.models))}") from None

    def check_cluster(self, cluster: ClusterInventory) -> None:
        for pool in cluster.devices:
            self.device(pool.type)
        for src, dst in cluster.model_overrides.items():
            a, b = self.model(src), self.model(dst)
            if a.kind is not b.kind:
                raise CatalogError(
                    f"model_overrides: {src} ({a.kind.value}) cannot be served as {dst} ({b.kind.value})"
                )

    def with_device(self, device: DeviceType) -> Catalog:
        return Catalog(hardware={**self.hardware, device.name: device}, models=self.models)


def device_usd_per_h(device: DeviceType, pool: DevicePool, cluster: ClusterInventory) -> float:
    """TCO of one device-hour: cloud price, or capex amortised + power × PUE × $/kWh."""
    price = pool.price_usd_per_h or device.price_usd_per_h
    capex = pool.capex_usd or device.capex_usd
    pricing = pool.pricing or ("cloud" if price is not None else "owned")
    if pricing == "cloud":
        if price is None:
            raise CatalogError(
                f"{device.name}: pricing 'cloud' but no price_usd_per_h in catalog or cluster {cluster.name!r}"
            )
        return price
    if capex is None:
        raise CatalogError(f"{device.name}: pricing 'owned' but no capex_usd in catalog or cluster {cluster.name!r}")
    amortised = capex / (cluster.amortisation_years * HOURS_PER_YEAR)
    power = device.tdp_w / 1000.0 * cluster.pue * cluster.electricity_usd_per_kwh
    return amortised + power


# --------------------------------------------------------------------------- loading


def repo_configs_dir() -> Path:
    """The ``configs/`` folder shipped beside the packages (editable install / source tree)."""
    return Path(os.environ.get("HETAGENT_CONFIGS", Path(__file__).resolve().parent.parent / "configs"))


def profiles_dir() -> Path:
    """Where ``hetagent calibrate`` writes device profiles that override catalog entries."""
    return Path(os.environ.get("HETAGENT_DATA_DIR", ".hetagent")) / "profiles"


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CatalogError(f"file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: invalid YAML: {exc}") from None


_M = TypeVar("_M", bound=BaseModel)
_Entry = TypeVar("_Entry", "DeviceType", "ModelSpec")


def _parse(model: type[_M], data: object, where: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{where}: {'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()]
        raise CatalogError("\n".join(lines)) from None


def _load_entries(folder: Path, model: type[_Entry]) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for path in sorted(folder.glob("*.yaml")):
        data = _read_yaml(path)
        items = data if isinstance(data, list) else [data]
        for i, item in enumerate(items):
            entry = _parse(model, item, f"{path}[{i}]")
            if entry.name in entries:
                raise CatalogError(f"{path}: duplicate entry {entry.name!r}")
            entries[entry.name] = entry
    return entries


def load_device_profile(path: Path) -> DeviceType:
    return _parse(DeviceType, _read_yaml(path), str(path))


@functools.lru_cache(maxsize=8)
def _load_catalog_cached(configs: str, profiles: str) -> Catalog:
    root = Path(configs)
    hardware = _load_entries(root / "hardware", DeviceType)
    models = _load_entries(root / "models", ModelSpec)
    if not hardware:
        raise CatalogError(f"no hardware catalog entries under {root / 'hardware'}")
    prof = Path(profiles)
    if prof.is_dir():
        for path in sorted(prof.glob("*.yaml")):
            dev = load_device_profile(path)
            hardware[dev.name] = dev  # a measured profile replaces the shipped estimate
    return Catalog(hardware=hardware, models=models)


def load_catalog(configs_dir: Path | None = None, profiles: Path | None = None) -> Catalog:
    return _load_catalog_cached(str(configs_dir or repo_configs_dir()), str(profiles or profiles_dir()))


def load_cluster(path_or_name: str | Path, catalog: Catalog | None = None) -> ClusterInventory:
    """Load a cluster inventory by path, or by name from ``configs/clusters/``."""
    path = Path(path_or_name)
    if not path.exists() and not path.suffix:
        path = repo_configs_dir() / "clusters" / f"{path_or_name}.yaml"
    cluster = _parse(ClusterInventory, _read_yaml(path), str(path))
    try:
        (catalog or load_catalog()).check_cluster(cluster)
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from None
    return cluster


def list_clusters() -> list[str]:
    return sorted(p.stem for p in (repo_configs_dir() / "clusters").glob("*.yaml"))
