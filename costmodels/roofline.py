"""Roofline latency and throughput of granular ops on device types.

For one op on one device type the model enumerates *configurations* — batch size and tensor-
parallel degree — and for each gives the latency of one call, the calls/s one replica sustains,
its memory footprint and what it occupies (whole devices on accelerators; core-seconds on a
time-shared CPU socket). A step is a sum over its kernel groups g (costmodels/work.py: GEMMs,
attention, element-wise), each on a smooth roofline, plus a fixed time per kernel:

    t = Σ_g ((F_g / (peak · e_c,g · tp))^p + (B_g / (bandwidth · e_m,g · tp))^p)^(1/p)
        + kernels · kernel_overhead_us + tensor-parallel all-reduce time + fixed_overhead_ms

e_c,g / e_m,g are the GEMM efficiencies (``compute``, ``memory``) or the attention ones
(``attention_compute``, ``attention_memory``); p (``ridge_exponent``) rounds the corner at the ridge
point, where a kernel reaches neither roof (p → ∞ is the classic max). Prefill is one step over the
prompt; decode is ``output_tokens`` steps at the mean context (weights once per step plus every
sequence's KV). Every parameter is per device in the catalog, fitted from measurements by
``hetagent costmodel check --fit`` (docs/costmodel.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from costmodels import work as W
from costmodels.catalog import Catalog, CatalogError, DeviceClass, DeviceType
from costmodels.granular import GranularOp

MEMORY_HEADROOM = 0.9  # vLLM's gpu_memory_utilization default: leave 10% for activations/fragmentation
TP_DEGREES = (1, 2, 4, 8)
BATCH_OPTIONS: dict[str, tuple[int, ...]] = {
    "prefill": (1, 4),
    "decode": (1, 8, 32, 128),
    "embed": (1, 32),
    "vector_search": (1, 16),
}
TOOL_CONCURRENCY = 256  # in-flight HTTP calls one async worker holds
TOOL_CPU_S_PER_CALL = 0.0002  # client-side CPU per HTTP call (parse, TLS), core-seconds
HOST_PROCESS_BYTES = 256 * 2**20  # RSS of one engine / FAISS worker process before its data
LIGHT_WORKER_BYTES = 64 * 2**20  # tokenizers, HTTP clients, transforms: share pooled Python workers
VECTOR_SEARCH_MAX_THREADS = 16
MIN_LATENCY_S = 1e-6  # floor for degenerate (zero-work) calls, keeps throughput finite


@dataclass(frozen=True)
class OpConfig:
    """One way to run an op on a device type."""

    device: str
    batch: int
    tensor_parallel: int  # devices per replica on accelerators; 1 on CPU
    cores_per_replica: int  # CPU threads of one replica (0 on accelerators)
    latency_ms: float  # one call, per request, at this batch
    throughput_per_replica: float  # calls/s one replica sustains
    memory_bytes: float  # resident per replica (per device on accelerators)
    core_s_per_call: float  # CPU core-seconds per call (0 on accelerators)
    bound: str  # "compute" | "memory" | "fixed"
    # where latency and throughput come from: "roofline", "calibrated" (a device measured by `hetagent
    # calibrate`) or "profile:<file>" (an imported measured profile; costmodels/profiles.py sets the last two)
    estimate_source: str = "roofline"

    @property
    def devices_per_replica(self) -> int:
        return self.tensor_parallel if self.cores_per_replica == 0 else 0


def _allreduce_s(device: DeviceType, tp: int, tokens: float, hidden: int, dtype_bytes: int, layers: int) -> float:
    """Two ring all-reduces per layer of the activations (Megatron-style tensor parallelism)."""
    if tp <= 1:
        return 0.0
    payload = tokens * hidden * dtype_bytes * 2.0 * (tp - 1) / tp
    return 2 * layers * payload / (device.intra_node_link_gb_s * 1e9 * device.efficiency.link)


def smooth_max(a: float, b: float, p: float | None) -> float:
    """(a^p + b^p)^(1/p) for non-negative a, b: the roofline's max with a rounded corner (p None: max)."""
    m = max(a, b)
    if p is None or m <= 0.0:
        return m
    return float(m * ((a / m) ** p + (b / m) ** p) ** (1.0 / p))


def roofline_parts_s(
    work: W.Work, device: DeviceType, dtype: str, *, tp: int = 1, cores: int | None = None
) -> dict[str, float]:
    """Seconds of one step of ``work`` by part: each kernel kind (costmodels/work.py), ``kernels`` (the fixed time
    per kernel), ``fixed`` (per step), and the pure ``compute`` / ``memory`` times (the two roofs, summed over
    groups; not part of the total)."""
    share = float(tp)
    if device.device_class is DeviceClass.cpu and cores is not None and device.cores:
        share = min(cores, device.cores) / device.cores
    eff = device.efficiency
    flops_per_s = device.peak_flops(dtype) * share
    bytes_per_s = device.memory_bandwidth_gb_s * 1e9 * share
    parts = {kind: 0.0 for kind in W.KERNEL_KINDS}
    parts.update(kernels=0.0, fixed=eff.fixed_overhead_ms / 1000.0, compute=0.0, memory=0.0)
    for g in work.groups or (W.KernelGroup("gemm", work.flops, work.bytes_moved),):
        if g.kind == "attention":
            e_c, e_m = eff.attention_compute or eff.compute, eff.attention_memory or eff.memory
        else:
            e_c, e_m = eff.compute, eff.memory
        compute_s, memory_s = g.flops / (flops_per_s * e_c), g.bytes_moved / (bytes_per_s * e_m)
        parts[g.kind] += smooth_max(compute_s, memory_s, eff.ridge_exponent)
        parts["kernels"] += g.kernels * eff.kernel_overhead_us * 1e-6
        parts["compute"] += compute_s
        parts["memory"] += memory_s
    if eff.ridge_exponent is None and eff.attention_compute is None and eff.attention_memory is None:
        # a profile without kernel-level parameters (hetagent calibrate's CPU profiles) was fitted to one
        # roofline over the whole step: cost it the same way, or its fitted overhead no longer holds
        for kind in W.KERNEL_KINDS:
            parts[kind] = 0.0
        parts["gemm"] = max(parts["compute"], parts["memory"])
    return parts


def roofline_step_s(
    work: W.Work, device: DeviceType, dtype: str, *, tp: int = 1, cores: int | None = None
) -> tuple[float, str]:
    """Seconds for one step of ``work`` on ``tp`` devices (or ``cores`` of a CPU socket), and which roof binds."""
    parts = roofline_parts_s(work, device, dtype, tp=tp, cores=cores)
    total = sum(parts[k] for k in (*W.KERNEL_KINDS, "kernels", "fixed"))
    return total, "compute" if parts["compute"] >= parts["memory"] else "memory"


def link_transfer_ms(nbytes: float, gb_s: float, fixed_ms: float) -> float:
    """Time for ``nbytes`` over a link of ``gb_s`` effective GB/s with ``fixed_ms`` per hand-off (a plan's
    edge carries both: the runtime predicts a request's KV transfer with them); 0 for no bytes."""
    if nbytes <= 0:
        return 0.0
    return fixed_ms + nbytes / (gb_s * 1e9) * 1000.0


def nic_transfer_ms(nbytes: float, device: DeviceType) -> float:
    """Time for ``nbytes`` through one device's share of the scale-out network: its fixed hand-off
    cost plus bytes over its effective bandwidth."""
    return link_transfer_ms(nbytes, device.network_gb_s * device.efficiency.link, device.efficiency.transfer_fixed_ms)


def binding_link(nbytes: float, src: DeviceType, dst: DeviceType) -> tuple[float, float]:
    """(effective GB/s, fixed ms) of the end that limits a transfer of ``nbytes`` between two types."""
    end = max((src, dst), key=lambda d: nic_transfer_ms(nbytes, d))
    return end.network_gb_s * end.efficiency.link, end.efficiency.transfer_fixed_ms


def transfer_ms(nbytes: float, src: DeviceType, dst: DeviceType) -> float:
    """Time to move ``nbytes`` between two device types: the slower NIC limits; 0 on the same type."""
    if src.name == dst.name or nbytes <= 0:
        return 0.0
    return max(nic_transfer_ms(nbytes, src), nic_transfer_ms(nbytes, dst))


def op_configs(op: GranularOp, device: DeviceType, catalog: Catalog, *, per_node: int | None = None) -> list[OpConfig]:
    """Every feasible configuration of ``op`` on ``device`` (the planner prunes dominated ones for its rate)."""
    is_cpu = device.device_class is DeviceClass.cpu
    if op.host_only and not is_cpu:
        return []
    max_tp = min(device.max_devices_per_node, per_node or device.max_devices_per_node)
    kind = op.kind
    if kind in ("prefill", "decode", "embed"):
        try:
            configs = _model_configs(op, device, catalog, max_tp)
        except CatalogError:  # no peak for the model's dtype: this device cannot run it
            return []
    elif kind == "vector_search":
        configs = _vector_search_configs(op, device)
    else:
        configs = [_host_config(op, device)]
    return configs


def _model_configs(op: GranularOp, device: DeviceType, catalog: Catalog, max_tp: int) -> list[OpConfig]:
    model = catalog.model(op.model or "")
    is_cpu = device.device_class is DeviceClass.cpu
    cores = (device.cores or 0) if is_cpu else 0  # a CPU device type always has cores (validated)
    out: list[OpConfig] = []
    tps = (1,) if is_cpu else tuple(t for t in TP_DEGREES if t <= max_tp)
    for tp in tps:
        for batch in BATCH_OPTIONS[op.kind]:
            if op.kind == "prefill":
                step = W.prefill_work(model, op.input_tokens, batch)
                steps, tokens_per_step = 1, op.input_tokens * batch
                kv_resident = step.kv_bytes
            elif op.kind == "decode":
                ctx = W.decode_mean_context(op.input_tokens, op.output_tokens)
                step = W.decode_step_work(model, ctx, batch)
                steps, tokens_per_step = op.output_tokens, batch
                kv_resident = W.kv_cache_bytes(model, op.input_tokens + op.output_tokens) * batch
            else:  # embed
                step = W.embed_work(model, op.input_tokens, batch * op.batch)
                steps, tokens_per_step = 1, op.input_tokens * batch * op.batch
                kv_resident = 0.0
            memory = (model.weight_bytes + kv_resident) / tp + (HOST_PROCESS_BYTES if is_cpu else 0.0)
            if memory > device.memory_bytes * MEMORY_HEADROOM:
                continue
            step_s, bound = roofline_step_s(step, device, model.dtype, tp=tp, cores=cores or None)
            step_s += _allreduce_s(device, tp, tokens_per_step, model.hidden_size, model.dtype_bytes, model.layers)
            latency_s = max(step_s * steps, MIN_LATENCY_S)
            out.append(
                OpConfig(
                    device=device.name,
                    batch=batch,
                    tensor_parallel=tp,
                    cores_per_replica=cores,
                    latency_ms=latency_s * 1000.0,
                    throughput_per_replica=batch / latency_s,
                    memory_bytes=memory,
                    core_s_per_call=latency_s * cores / batch if is_cpu else 0.0,
                    bound=bound,
                )
            )
    return out


def _vector_search_configs(op: GranularOp, device: DeviceType) -> list[OpConfig]:
    threads = min(device.cores or 1, VECTOR_SEARCH_MAX_THREADS)
    dim = int(op.params.get("dimension", 384))
    out = []
    for batch in BATCH_OPTIONS["vector_search"]:
        step = W.vector_search_work(int(op.params.get("index_size", 1)), dim, queries=batch * op.batch)
        memory = step.weight_bytes + HOST_PROCESS_BYTES
        if memory > device.memory_bytes * MEMORY_HEADROOM:
            continue
        step_s, bound = roofline_step_s(step, device, "fp32", cores=threads)
        step_s = max(step_s, MIN_LATENCY_S)
        out.append(
            OpConfig(
                device.name, batch, 1, threads, step_s * 1000.0, batch / step_s, memory, step_s * threads / batch, bound
            )
        )
    return out


def _host_config(op: GranularOp, device: DeviceType) -> OpConfig:
    if op.kind == "tool":
        latency_s = op.fixed_latency_ms / 1000.0 + TOOL_CPU_S_PER_CALL
        return OpConfig(
            device.name,
            1,
            1,
            1,
            latency_s * 1000.0,
            TOOL_CONCURRENCY / latency_s,
            LIGHT_WORKER_BYTES,
            TOOL_CPU_S_PER_CALL,
            "fixed",
        )
    if op.kind == "transform":
        latency_s = max(op.fixed_latency_ms / 1000.0, 1e-5)
        return OpConfig(
            device.name, 1, 1, 1, latency_s * 1000.0, 1.0 / latency_s, LIGHT_WORKER_BYTES, latency_s, "fixed"
        )
    # tokenize / detokenize: one core
    tokens = op.input_tokens if op.kind == "tokenize" else op.output_tokens
    step_s, bound = roofline_step_s(W.tokenize_work(max(tokens, 1)), device, "fp32", cores=1)
    step_s = max(step_s, MIN_LATENCY_S)
    return OpConfig(device.name, 1, 1, 1, step_s * 1000.0, 1.0 / step_s, LIGHT_WORKER_BYTES, step_s, bound)


def replicas_needed(rate_per_s: float, c: OpConfig, max_utilisation: float) -> int:
    return max(1, math.ceil(rate_per_s / (c.throughput_per_replica * max_utilisation) - 1e-9))
