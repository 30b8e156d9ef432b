"""Spec → agent IR → granular IR → analysed IR → GranularGraph (the planner's plain data).

Passes return a new module and leave their input untouched, so a caller can keep every stage
(e.g. print the agent form and the granular form side by side).

One call from a spec to the planner's input::

    module, granular = compile_graph(load_graph(path, catalog), catalog)
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Protocol

from xdsl.context import Context
from xdsl.dialects.builtin import (
    ArrayAttr,
    Builtin,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    UnitAttr,
    f64,
    i64,
)
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.parser import Parser
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern
from xdsl.printer import Printer
from xdsl.utils.exceptions import ParseError, VerifyException

from compiler.dialects import (
    AGENT_NODE_OPS,
    Agent,
    AgentValueType,
    DecodeOp,
    DetokenizeOp,
    EmbedOp,
    GEmbedOp,
    Granular,
    GraphOp,
    GToolOp,
    GTransformOp,
    GVectorSearchOp,
    InputOp,
    KVCacheType,
    KVTransferOp,
    LLMOp,
    OutputOp,
    PrefillOp,
    TokenizeOp,
    TokensType,
    ToolOp,
    TransformOp,
    ValueType,
    VectorSearchOp,
    _AgentNodeOp,
    _GranularOp,
    attr_to_py,
    granular_kind,
    str_list,
)
from compiler.spec import (
    TEMPLATE_REF,
    AgentGraph,
    EmbedNode,
    LLMNode,
    ToolNode,
    TransformNode,
    VectorSearchNode,
    _templates,
    validate_graph,
)
from costmodels import work
from costmodels.catalog import CatalogError, ModelKind, ModelSpec
from costmodels.granular import GranularEdge, GranularGraph, GranularOp

# A retrieved document chunk handed downstream by vector_search (typical RAG chunking).
RETRIEVED_CHUNK_TOKENS = 256
# Embedding vectors leave the encoder as fp32, like the FAISS index stores them.
VECTOR_ELEMENT_BYTES = 4
I128 = IntegerType(128)


class CompileError(ValueError):
    """The spec cannot be compiled, or an IR text does not parse or verify."""


class CatalogLike(Protocol):
    def model(self, name: str) -> ModelSpec: ...


# --------------------------------------------------------------------------- small helpers


def _i64(value: float) -> IntegerAttr:
    return IntegerAttr(int(round(value)), i64)


def _f64(value: float) -> FloatAttr:
    return FloatAttr(float(value), f64)


def _s(value: str) -> StringAttr:
    return StringAttr(value)


def _model(catalog: CatalogLike | None, name: str, where: str) -> ModelSpec:
    if catalog is None:
        raise CompileError(f"{where}: a model catalog is needed to compile model {name!r}")
    try:
        return catalog.model(name)
    except (CatalogError, KeyError) as exc:
        raise CompileError(f"{where}: {exc}") from None


def graph_op(module: ModuleOp) -> GraphOp:
    """The module's single agent.graph."""
    found = [op for op in module.ops if isinstance(op, GraphOp)]
    if len(found) != 1:
        raise CompileError(f"expected exactly one agent.graph in the module, found {len(found)}")
    return found[0]


def granular_ops(module: ModuleOp) -> list[_GranularOp]:
    return [op for op in graph_op(module).body.block.ops if isinstance(op, _GranularOp)]


def verify_module(module: ModuleOp) -> None:
    """Verify, turning xDSL's exception into CompileError (a ValueError users can catch)."""
    try:
        module.verify()
    except VerifyException as exc:
        raise CompileError(f"IR does not verify: {exc}") from None


# --------------------------------------------------------------------------- spec → agent IR


def _input_refs(node: Any) -> list[str]:
    seen: dict[str, None] = {}
    for text in _templates(node):
        for scope, ref in TEMPLATE_REF.findall(text):
            if scope == "inputs":
                seen.setdefault(ref)
    return list(seen)


def _output_refs(graph: AgentGraph) -> list[str]:
    seen: dict[str, None] = {}
    for text in graph.spec.outputs.values():
        for scope, ref in TEMPLATE_REF.findall(text):
            if scope == "nodes":
                seen.setdefault(ref)
    return list(seen) or graph.sinks()


def _vector_dimension(graph: AgentGraph, node: VectorSearchNode, catalog: CatalogLike | None, where: str) -> int:
    """The spec's dimension, else the output size of the upstream embedding model."""
    if node.dimension is not None:
        return node.dimension
    for up in graph.upstream(node):
        upnode = graph.node(up)
        if isinstance(upnode, EmbedNode):
            model = _model(catalog, upnode.model, where)
            return model.embedding_dim or model.hidden_size
    raise CompileError(f"{where}.dimension: no 'dimension' and no upstream embed node to take it from")


def _node_attrs(graph: AgentGraph, node: Any, index: int, catalog: CatalogLike | None) -> dict[str, Attribute]:
    where = f"spec.nodes[{index}]"
    attrs: dict[str, Attribute] = {"sym_name": _s(node.name)}
    if node.placement is not None:
        if node.placement.allowed_devices is not None:
            attrs["allowed_devices"] = str_list(node.placement.allowed_devices)
        if node.placement.pin is not None:
            attrs["pin"] = _s(node.placement.pin)
    if node.retries:
        attrs["retries"] = _i64(node.retries)
    if isinstance(node, LLMNode | EmbedNode) and catalog is not None:
        model = _model(catalog, node.model, f"{where}.model")
        want = ModelKind.llm if isinstance(node, LLMNode) else ModelKind.embedding
        if model.kind is not want:
            raise CompileError(f"{where}.model: {node.model!r} is a {model.kind.value} model, not {want.value}")
    if isinstance(node, LLMNode):
        attrs |= {
            "model": _s(node.model),
            "input_tokens": _i64(node.expected.input_tokens),
            "output_tokens": _i64(node.expected.output_tokens),
        }
        if node.stream:
            attrs["stream"] = UnitAttr()
        if node.traffic is not None:
            attrs["traffic"] = ArrayAttr(
                [ArrayAttr([_i64(b.input_tokens), _i64(b.output_tokens), _f64(b.share)]) for b in node.traffic.buckets]
            )
            if node.traffic.tpot_ms is not None:
                attrs["tpot_ms"] = _f64(node.traffic.tpot_ms)
    elif isinstance(node, EmbedNode):
        attrs |= {
            "model": _s(node.model),
            "input_tokens": _i64(node.expected.input_tokens),
            "batch": _i64(node.expected.batch),
        }
    elif isinstance(node, VectorSearchNode):
        attrs |= {
            "index": _s(node.index),
            "top_k": _i64(node.top_k),
            "index_size": _i64(node.index_size),
            "dimension": _i64(_vector_dimension(graph, node, catalog, where)),
            "metric": _s(node.metric),
        }
    elif isinstance(node, ToolNode):
        if node.url is not None:
            attrs["url"] = _s(node.url)
        if node.function is not None:
            attrs["function"] = _s(node.function)
        attrs |= {
            "method": _s(node.method),
            "latency_ms": _f64(node.expected.latency_ms),
            "response_bytes": _i64(node.expected.response_bytes),
            "timeout_s": _f64(node.timeout_s),
        }
        if node.idempotent:
            attrs["idempotent"] = UnitAttr()
    elif isinstance(node, TransformNode):
        attrs |= {
            "function": _s(node.function),
            "latency_ms": _f64(node.expected.latency_ms),
            "output_bytes": _i64(node.expected.output_bytes),
            "timeout_s": _f64(node.timeout_s),
        }
    return attrs


def build_agent_module(graph: AgentGraph, catalog: CatalogLike | None = None) -> ModuleOp:
    """One agent op per spec node in topological order; operands = upstream nodes, then referenced inputs.

    The catalog checks model ids/kinds and supplies a vector_search's default dimension.
    """
    validate_graph(graph)  # cycles and dangling references would break topological_order
    block = Block()
    inputs: dict[str, SSAValue] = {}
    for name in graph.spec.inputs:
        inp = InputOp.create(result_types=[AgentValueType()], attributes={"name": _s(name)})
        inp.results[0].name_hint = name
        block.add_op(inp)
        inputs[name] = inp.results[0]

    values: dict[str, SSAValue] = {}
    index_of = {n.name: i for i, n in enumerate(graph.spec.nodes)}
    for name in graph.topological_order():
        node = graph.node(name)
        operands = [values[u] for u in graph.upstream(node)] + [inputs[i] for i in _input_refs(node) if i in inputs]
        op_cls = AGENT_NODE_OPS[node.kind]
        op = op_cls.create(
            operands=operands,
            result_types=[AgentValueType()],
            attributes=_node_attrs(graph, node, index_of[name], catalog),
        )
        op.results[0].name_hint = name
        block.add_op(op)
        values[name] = op.results[0]

    outs = _output_refs(graph)
    block.add_op(
        OutputOp.create(
            operands=[values[n] for n in outs], attributes={"names": str_list(list(graph.spec.outputs) or outs)}
        )
    )
    gattrs: dict[str, Attribute] = {"sym_name": _s(graph.metadata.name), "sla_e2e_ms": _f64(graph.spec.sla.e2e_ms)}
    if graph.spec.sla.ttft_ms is not None:
        gattrs["ttft_ms"] = _f64(graph.spec.sla.ttft_ms)
    module = ModuleOp([GraphOp.create(attributes=gattrs, regions=[Region(block)])])
    verify_module(module)
    return module


# --------------------------------------------------------------------------- agent IR → granular IR


def _host_constraints(op: _AgentNodeOp, catalog: Any) -> dict[str, Attribute]:
    """Placement limits for tokenize/detokenize: they need a CPU, so known non-CPU devices are dropped."""
    hardware = getattr(catalog, "hardware", None) or {}

    def cpu_ok(dev: str) -> bool:
        spec = hardware.get(dev)
        return spec is None or getattr(spec.device_class, "value", spec.device_class) == "cpu"

    out: dict[str, Attribute] = {}
    if op.allowed_devices is not None:
        keep = [a.data for a in op.allowed_devices.data if cpu_ok(a.data)]
        if keep:
            out["allowed_devices"] = str_list(keep)
    if op.pin is not None and cpu_ok(op.pin.data):
        out["pin"] = op.pin
    return out


def _copy(op: Operation, *keys: str) -> dict[str, Attribute]:
    return {k: op.attributes[k] for k in keys if k in op.attributes}


@dataclass
class _DecomposeNode(RewritePattern):
    catalog: Any

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if not isinstance(op, _AgentNodeOp):
            return
        node = op.sym_name.data

        def base(kind: str, *, host: bool = False) -> dict[str, Attribute]:
            attrs: dict[str, Attribute] = {"sym_name": _s(f"{node}.{kind}"), "source_node": _s(node)}
            attrs |= _host_constraints(op, self.catalog) if host else _copy(op, "allowed_devices", "pin")
            return attrs

        new: list[Operation]
        if isinstance(op, LLMOp):
            model = _model(self.catalog, op.model.data, f"node {node!r}")
            prompt = op.input_tokens.value.data
            kv = work.kv_cache_bytes(model, prompt)
            llm = _copy(op, "model", "stream")
            typed = llm | {"dtype": _s(model.dtype)} | _copy(op, "traffic", "tpot_ms")
            tok = TokenizeOp.create(
                operands=list(op.operands),
                result_types=[TokensType()],
                attributes=base("tokenize", host=True) | _copy(op, "model", "input_tokens"),
            )
            pre = PrefillOp.create(
                operands=[tok.results[0]],
                result_types=[KVCacheType(int(round(kv)))],
                attributes=base("prefill") | typed | _copy(op, "input_tokens"),
            )
            dec = DecodeOp.create(
                operands=[pre.results[0]],
                result_types=[TokensType()],
                attributes=base("decode") | typed | _copy(op, "input_tokens", "output_tokens"),
            )
            det = DetokenizeOp.create(
                operands=[dec.results[0]],
                result_types=[ValueType()],
                attributes=base("detokenize", host=True) | llm | _copy(op, "output_tokens"),
            )
            for o, suffix in ((tok, "_tokens"), (pre, "_kv"), (dec, "_gen")):
                o.results[0].name_hint = node + suffix
            new = [tok, pre, dec, det]
        elif isinstance(op, EmbedOp):
            model = _model(self.catalog, op.model.data, f"node {node!r}")
            new = [
                GEmbedOp.create(
                    operands=list(op.operands),
                    result_types=[ValueType()],
                    attributes=base("embed") | _copy(op, "model", "input_tokens", "batch") | {"dtype": _s(model.dtype)},
                )
            ]
        elif isinstance(op, VectorSearchOp):
            new = [
                GVectorSearchOp.create(
                    operands=list(op.operands),
                    result_types=[ValueType()],
                    attributes=base("vector_search") | _copy(op, "index", "top_k", "index_size", "dimension", "metric"),
                )
            ]
        elif isinstance(op, ToolOp):
            new = [
                GToolOp.create(
                    operands=list(op.operands),
                    result_types=[ValueType()],
                    attributes=base("tool")
                    | _copy(
                        op,
                        "url",
                        "function",
                        "method",
                        "latency_ms",
                        "response_bytes",
                        "timeout_s",
                        "retries",
                        "idempotent",
                    ),
                )
            ]
        elif isinstance(op, TransformOp):
            new = [
                GTransformOp.create(
                    operands=list(op.operands),
                    result_types=[ValueType()],
                    attributes=base("transform")
                    | _copy(op, "function", "latency_ms", "output_bytes", "timeout_s", "retries"),
                )
            ]
        else:  # pragma: no cover - every agent node kind is handled above
            raise CompileError(f"no decomposition for {op.name}")
        new[-1].results[0].name_hint = node
        rewriter.replace(op, new, [new[-1].results[0]])


@dataclass(frozen=True)
class DecomposePass(ModulePass):
    """agent.* node ops → granular.* ops (llm → tokenize, prefill, decode, detokenize)."""

    name = "agent-decompose"
    catalog: Any = None

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(_DecomposeNode(self.catalog), apply_recursively=False).rewrite_module(op)


def decompose(module: ModuleOp, catalog: CatalogLike) -> ModuleOp:
    """A decomposed copy of an agent-form module (the input is left as is)."""
    out = module.clone()
    DecomposePass(catalog).apply(make_context(), out)
    verify_module(out)
    return out


# --------------------------------------------------------------------------- analysis


def _int_attr(op: Operation, key: str) -> int:
    attr = op.attributes[key]
    assert isinstance(attr, IntegerAttr)
    return attr.value.data


def _work_of(op: _GranularOp, catalog: CatalogLike | None) -> tuple[work.Work, float, float]:
    """(work of one call at batch 1, bytes handed downstream, resident memory bytes)."""
    where = f"op {op.sym_name.data!r}"
    if isinstance(op, TokenizeOp):
        p = _int_attr(op, "input_tokens")
        return work.tokenize_work(p), p * work.TOKEN_ID_BYTES, 0.0
    if isinstance(op, PrefillOp):
        model = _model(catalog, op.model.data, where)
        w = work.prefill_work(model, _int_attr(op, "input_tokens"))
        return w, w.kv_bytes, w.weight_bytes + w.kv_bytes
    if isinstance(op, DecodeOp):
        model = _model(catalog, op.model.data, where)
        p, n = _int_attr(op, "input_tokens"), _int_attr(op, "output_tokens")
        step = work.decode_step_work(model, work.decode_mean_context(p, n))
        kv_end = work.kv_cache_bytes(model, p + n)
        w = work.Work(
            flops=step.flops * n, bytes_moved=step.bytes_moved * n, weight_bytes=step.weight_bytes, kv_bytes=kv_end
        )
        return w, n * work.TOKEN_ID_BYTES, w.weight_bytes + kv_end
    if isinstance(op, DetokenizeOp):
        n = _int_attr(op, "output_tokens")
        return work.tokenize_work(n), n * work.BYTES_PER_TOKEN_TEXT, 0.0
    if isinstance(op, GEmbedOp):
        model = _model(catalog, op.model.data, where)
        batch = _int_attr(op, "batch")
        w = work.embed_work(model, _int_attr(op, "input_tokens"), batch)
        dim = model.embedding_dim or model.hidden_size
        return w, batch * dim * VECTOR_ELEMENT_BYTES, w.weight_bytes
    if isinstance(op, GVectorSearchOp):
        w = work.vector_search_work(_int_attr(op, "index_size"), _int_attr(op, "dimension"))
        out = _int_attr(op, "top_k") * RETRIEVED_CHUNK_TOKENS * work.BYTES_PER_TOKEN_TEXT
        return w, out, w.weight_bytes
    if isinstance(op, GToolOp):
        b = _int_attr(op, "response_bytes")
        return work.Work(bytes_moved=b), b, 0.0
    if isinstance(op, GTransformOp):
        b = _int_attr(op, "output_bytes")
        return work.Work(bytes_moved=b), b, 0.0
    if isinstance(op, KVTransferOp):
        kv = op.out.type.size_bytes.data
        return work.Work(bytes_moved=kv, kv_bytes=kv), kv, 0.0
    raise CompileError(f"no work model for {op.name}")  # pragma: no cover


@dataclass(frozen=True)
class AnalysePass(ModulePass):
    """Attach flops / bytes_moved / weight_bytes / kv_bytes / memory_bytes / output_bytes (costmodels.work)."""

    name = "granular-analyse"
    catalog: Any = None

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for g in granular_ops(op):
            w, out_bytes, mem = _work_of(g, self.catalog)
            g.attributes["flops"] = IntegerAttr(int(round(w.flops)), I128)
            g.attributes["bytes_moved"] = _i64(w.bytes_moved)
            g.attributes["weight_bytes"] = _i64(w.weight_bytes)
            g.attributes["kv_bytes"] = _i64(w.kv_bytes)
            g.attributes["memory_bytes"] = _i64(mem)
            g.attributes["output_bytes"] = _i64(out_bytes)


def analyse(module: ModuleOp, catalog: CatalogLike) -> ModuleOp:
    """An analysed copy of a granular-form module."""
    if any(isinstance(op, _AgentNodeOp) for op in graph_op(module).body.block.ops):
        raise CompileError("analyse needs the granular form; run decompose first")
    out = module.clone()
    AnalysePass(catalog).apply(make_context(), out)
    verify_module(out)
    return out


# --------------------------------------------------------------------------- granular IR → plain data

_CORE_ATTRS = frozenset(
    {
        "sym_name",
        "source_node",
        "model",
        "input_tokens",
        "output_tokens",
        "batch",
        "flops",
        "bytes_moved",
        "weight_bytes",
        "kv_bytes",
        "latency_ms",
        "allowed_devices",
        "pin",
    }
)


def _producer(value: SSAValue) -> _GranularOp | None:
    """The granular op whose output this is, looking through kv_transfer (a link, not a planner op)."""
    owner = value.owner
    if isinstance(owner, KVTransferOp):
        owner = owner.ins.owner
    return owner if isinstance(owner, _GranularOp) else None


def _edge_bytes(value: SSAValue, producer: _GranularOp) -> float:
    if isinstance(value.type, KVCacheType):
        return float(value.type.size_bytes.data)
    if producer.output_bytes is None:
        raise CompileError(f"op {producer.sym_name.data!r} has no output_bytes; run analyse first")
    return float(producer.output_bytes.value.data)


def to_granular_graph(module: ModuleOp) -> GranularGraph:
    """Plain-data view of an analysed granular module (kv_transfer ops fold into their prefill → decode edge)."""
    g = graph_op(module)
    ops: list[GranularOp] = []
    edges: list[GranularEdge] = []
    for op in granular_ops(module):
        if isinstance(op, KVTransferOp):
            continue
        if op.flops is None:
            raise CompileError(f"op {op.sym_name.data!r} has no work attributes; run analyse first")
        a = op.attributes

        def num(key: str, default: float | None = 0.0) -> Any:
            return attr_to_py(a[key]) if key in a else default  # noqa: B023 - called in this iteration only

        ops.append(
            GranularOp(
                name=op.sym_name.data,
                kind=granular_kind(op),
                source_node=op.source_node.data,
                model=num("model", None),
                input_tokens=int(num("input_tokens", 0)),
                output_tokens=int(num("output_tokens", 0)),
                batch=int(num("batch", 1)),
                flops=float(num("flops")),
                bytes_moved=float(num("bytes_moved")),
                weight_bytes=float(num("weight_bytes")),
                kv_bytes=float(num("kv_bytes")),
                fixed_latency_ms=float(num("latency_ms")),
                allowed_devices=tuple(num("allowed_devices")) if "allowed_devices" in a else None,
                pin=num("pin", None),
                params={k: attr_to_py(v) for k, v in a.items() if k not in _CORE_ATTRS},
            )
        )
        seen: set[str] = set()
        for value in op.operands:
            src = _producer(value)
            if src is None or src.sym_name.data in seen:
                continue
            seen.add(src.sym_name.data)
            edges.append(GranularEdge(src=src.sym_name.data, dst=op.sym_name.data, bytes=_edge_bytes(value, src)))
    return GranularGraph(
        name=g.sym_name.data,
        sla_e2e_ms=g.sla_e2e_ms.value.data,
        ttft_ms=g.ttft_ms.value.data if g.ttft_ms is not None else None,
        ops=tuple(ops),
        edges=tuple(edges),
    )


def compile_graph(graph: AgentGraph, catalog: CatalogLike) -> tuple[ModuleOp, GranularGraph]:
    """Spec → analysed granular module and its GranularGraph, in one call."""
    module = analyse(decompose(build_agent_module(graph, catalog), catalog), catalog)
    return module, to_granular_graph(module)


# --------------------------------------------------------------------------- text form


def make_context() -> Context:
    """An xDSL context with builtin, agent and granular dialects loaded."""
    ctx = Context()
    for dialect in (Builtin, Agent, Granular):
        ctx.load_dialect(dialect)
    return ctx


def print_module(module: ModuleOp) -> str:
    stream = io.StringIO()
    Printer(stream=stream).print_op(module)
    return stream.getvalue() + "\n"


def parse_module(text: str, *, verify: bool = True) -> ModuleOp:
    """Parse IR text (either form); raises CompileError with the parser's or verifier's message."""
    parser = Parser(make_context(), text)
    try:
        module = parser.parse_module()
    except ParseError as exc:
        raise CompileError(f"IR does not parse: {exc}") from None
    except VerifyException as exc:  # attribute constraints are checked while parsing
        line_no = text.count("\n", 0, len(text[: parser.pos].rstrip())) + 1  # the op just parsed
        line = text.splitlines()[line_no - 1].strip() if text.splitlines() else ""
        raise CompileError(f"IR does not verify (line {line_no}): {exc}\n  {line[:200]}") from None
    if verify:
        verify_module(module)
    return module


__all__ = [
    "AnalysePass",
    "CompileError",
    "DecomposePass",
    "RETRIEVED_CHUNK_TOKENS",
    "VECTOR_ELEMENT_BYTES",
    "analyse",
    "build_agent_module",
    "compile_graph",
    "decompose",
    "graph_op",
    "granular_ops",
    "make_context",
    "parse_module",
    "print_module",
    "to_granular_graph",
    "verify_module",
]
