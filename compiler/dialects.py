"""The two xDSL dialects of the compiler.

``agent`` mirrors the spec one op per node, so the IR reads like the YAML; ``granular``
is the decomposed form the cost models and the planner reason about (an LLM call becomes
tokenize → prefill → decode → detokenize, because prefill is compute-bound and decode is
memory-bound and they may be best placed on different hardware).

Conventions:
- every granular op has ``sym_name`` = ``"<source_node>.<kind>"`` (unique in the graph);
- the KV cache is a type, ``!granular.kv<bytes>``, so its size shows on the prefill → decode
  edge of the printed IR and on any ``granular.kv_transfer`` between devices;
- work counters set by analysis are integers (FLOPs as i128, since a long prompt on a large
  model passes 2^63; bytes as i64): exact, and printed as plain decimals;
- placement attributes (``device``, ``replicas``) appear only after placement.
"""

from collections.abc import Sequence
from typing import Annotated, ClassVar

from xdsl.dialects.builtin import (
    I64,
    ArrayAttr,
    Float64Type,
    FloatAttr,
    IntAttr,
    IntegerAttr,
    IntegerType,
    StringAttr,
    UnitAttr,
)
from xdsl.ir import Attribute, Dialect, Operation, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import (
    IRDLOperation,
    attr_def,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_attr_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.traits import HasParent, IsTerminator
from xdsl.utils.exceptions import VerifyException

I128 = Annotated[IntegerType, IntegerType(128)]
F64Attr = FloatAttr[Float64Type]
I64Attr = IntegerAttr[I64]
I128Attr = IntegerAttr[I128]
StrList = ArrayAttr[StringAttr]
# request-size buckets of an LLM node's traffic: [[input_tokens: i64, output_tokens: i64, share: f64], ...]
Buckets = ArrayAttr[ArrayAttr[Attribute]]

# --------------------------------------------------------------------------- types


@irdl_attr_definition
class AgentValueType(ParametrizedAttribute, TypeAttribute):
    """Output of an agent node (text, vectors, JSON): opaque at graph level."""

    name = "agent.value"


@irdl_attr_definition
class TokensType(ParametrizedAttribute, TypeAttribute):
    """Token ids (tokenize → prefill, decode → detokenize)."""

    name = "granular.tokens"


@irdl_attr_definition
class ValueType(ParametrizedAttribute, TypeAttribute):
    """A host-side payload between granular ops (text, vectors, documents, JSON)."""

    name = "granular.value"


@irdl_attr_definition
class KVCacheType(ParametrizedAttribute, TypeAttribute):
    """A KV cache of ``size_bytes``: what moves if prefill and decode sit on different devices."""

    name = "granular.kv"

    size_bytes: IntAttr

    def __init__(self, size_bytes: int | IntAttr):
        super().__init__(size_bytes if isinstance(size_bytes, IntAttr) else IntAttr(int(size_bytes)))

    def print_parameters(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            printer.print_int(self.size_bytes.data)

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> tuple[IntAttr]:
        with parser.in_angle_brackets():
            return (IntAttr(parser.parse_integer(allow_negative=False, allow_boolean=False)),)

    def verify(self) -> None:
        super().verify()
        if self.size_bytes.data <= 0:
            raise VerifyException(f"!granular.kv size must be > 0 bytes, got {self.size_bytes.data}")


# --------------------------------------------------------------------------- helpers


def _int(op: Operation, key: str) -> int | None:
    attr = op.attributes.get(key)
    return attr.value.data if isinstance(attr, IntegerAttr) else None


def _require_positive(op: Operation, *keys: str) -> None:
    for key in keys:
        value = _int(op, key)
        if value is not None and value <= 0:
            raise VerifyException(f"{op.name} {_sym(op)!r}: {key} must be > 0, got {value}")


def _require_non_negative(op: Operation, *keys: str) -> None:
    for key in keys:
        attr = op.attributes.get(key)
        if isinstance(attr, IntegerAttr | FloatAttr) and attr.value.data < 0:
            raise VerifyException(f"{op.name} {_sym(op)!r}: {key} must be >= 0, got {attr.value.data}")


def _sym(op: Operation) -> str:
    attr = op.attributes.get("sym_name")
    return attr.data if isinstance(attr, StringAttr) else "?"


# --------------------------------------------------------------------------- agent dialect


@irdl_op_definition
class GraphOp(IRDLOperation):
    """The whole agent graph with its SLA; its block holds the nodes (agent or granular form)."""

    name = "agent.graph"

    sym_name = attr_def(StringAttr)
    sla_e2e_ms = attr_def(F64Attr)
    ttft_ms = opt_attr_def(F64Attr)
    body = region_def("single_block")

    assembly_format = "$sym_name attr-dict-with-keyword $body"

    def verify_(self) -> None:
        if self.sla_e2e_ms.value.data <= 0:
            raise VerifyException(f"agent.graph {self.sym_name.data!r}: sla_e2e_ms must be > 0")
        if self.ttft_ms is not None and self.ttft_ms.value.data <= 0:
            raise VerifyException(f"agent.graph {self.sym_name.data!r}: ttft_ms must be > 0")
        block = self.body.block
        if not isinstance(block.last_op, OutputOp):
            raise VerifyException(f"agent.graph {self.sym_name.data!r}: the body must end with agent.output")
        seen: set[str] = set()
        for op in block.ops:
            if isinstance(op, InputOp | OutputOp):
                continue
            name = _sym(op)
            if name in seen:
                raise VerifyException(f"agent.graph {self.sym_name.data!r}: duplicate sym_name {name!r}")
            seen.add(name)


@irdl_op_definition
class InputOp(IRDLOperation):
    """A graph input (``{{ inputs.<name> }}``)."""

    name = "agent.input"

    input_name = attr_def(StringAttr, attr_name="name")
    res = result_def(AgentValueType)
    traits = traits_def(HasParent(GraphOp))

    assembly_format = "attr-dict"


@irdl_op_definition
class OutputOp(IRDLOperation):
    """Terminator: the values the graph returns, under the spec's output names."""

    name = "agent.output"

    ins = var_operand_def()
    names = attr_def(StrList)
    traits = traits_def(IsTerminator(), HasParent(GraphOp))

    assembly_format = "`(` $ins `)` attr-dict `:` type($ins)"


class _AgentNodeOp(IRDLOperation):
    """One spec node; operands are its upstream nodes (and referenced graph inputs)."""

    KIND: ClassVar[str] = ""

    ups = var_operand_def(AgentValueType)
    res = result_def(AgentValueType)
    sym_name = attr_def(StringAttr)
    allowed_devices = opt_attr_def(StrList)
    pin = opt_attr_def(StringAttr)
    timeout_s = opt_attr_def(F64Attr)
    retries = opt_attr_def(I64Attr)

    traits = traits_def(HasParent(GraphOp))

    assembly_format = "`(` $ups `)` attr-dict"

    def verify_(self) -> None:
        _require_positive(self, "input_tokens", "output_tokens", "batch", "top_k", "index_size", "dimension")
        _require_non_negative(self, "latency_ms", "response_bytes", "output_bytes", "retries")
        if self.timeout_s is not None and self.timeout_s.value.data <= 0:
            raise VerifyException(f"{self.name} {self.sym_name.data!r}: timeout_s must be > 0")


@irdl_op_definition
class LLMOp(_AgentNodeOp):
    name = "agent.llm"
    KIND: ClassVar[str] = "llm"

    model = attr_def(StringAttr)
    input_tokens = attr_def(I64Attr)
    output_tokens = attr_def(I64Attr)
    stream = opt_attr_def(UnitAttr)
    traffic = opt_attr_def(Buckets)
    tpot_ms = opt_attr_def(F64Attr)


@irdl_op_definition
class EmbedOp(_AgentNodeOp):
    name = "agent.embed"
    KIND: ClassVar[str] = "embed"

    model = attr_def(StringAttr)
    input_tokens = attr_def(I64Attr)
    batch = attr_def(I64Attr)


@irdl_op_definition
class VectorSearchOp(_AgentNodeOp):
    name = "agent.vector_search"
    KIND: ClassVar[str] = "vector_search"

    index = attr_def(StringAttr)
    top_k = attr_def(I64Attr)
    index_size = attr_def(I64Attr)
    dimension = attr_def(I64Attr)
    metric = attr_def(StringAttr)


@irdl_op_definition
class ToolOp(_AgentNodeOp):
    name = "agent.tool"
    KIND: ClassVar[str] = "tool"

    url = opt_attr_def(StringAttr)
    function = opt_attr_def(StringAttr)
    method = attr_def(StringAttr)
    latency_ms = attr_def(F64Attr)
    response_bytes = attr_def(I64Attr)
    idempotent = opt_attr_def(UnitAttr)

    def verify_(self) -> None:
        super().verify_()
        if (self.url is None) == (self.function is None):
            raise VerifyException(f"agent.tool {self.sym_name.data!r}: needs exactly one of url or function")


@irdl_op_definition
class TransformOp(_AgentNodeOp):
    name = "agent.transform"
    KIND: ClassVar[str] = "transform"

    function = attr_def(StringAttr)
    latency_ms = attr_def(F64Attr)
    output_bytes = attr_def(I64Attr)


AGENT_NODE_OPS: dict[str, type[_AgentNodeOp]] = {
    op.KIND: op for op in (LLMOp, EmbedOp, VectorSearchOp, ToolOp, TransformOp)
}

Agent = Dialect(
    "agent",
    [GraphOp, InputOp, OutputOp, LLMOp, EmbedOp, VectorSearchOp, ToolOp, TransformOp],
    [AgentValueType],
)

# --------------------------------------------------------------------------- granular dialect

_GRANULAR_FORMAT_VAR = "`(` $ins `)` attr-dict `:` functional-type($ins, $out)"


class _GranularOp(IRDLOperation):
    """A schedulable unit of work: one per placement decision the planner makes."""

    KIND: ClassVar[str] = ""

    sym_name = attr_def(StringAttr)
    source_node = attr_def(StringAttr)
    allowed_devices = opt_attr_def(StrList)
    pin = opt_attr_def(StringAttr)
    # analysis (costmodels.work): one call at batch 1
    flops = opt_attr_def(I128Attr)
    bytes_moved = opt_attr_def(I64Attr)
    weight_bytes = opt_attr_def(I64Attr)
    kv_bytes = opt_attr_def(I64Attr)
    memory_bytes = opt_attr_def(I64Attr)
    output_bytes = opt_attr_def(I64Attr)
    # placement
    device = opt_attr_def(StringAttr)
    replicas = opt_attr_def(I64Attr)

    traits = traits_def(HasParent(GraphOp))

    def verify_(self) -> None:
        want = f"{self.source_node.data}.{self.KIND}"
        if self.sym_name.data != want:
            raise VerifyException(
                f"{self.name}: sym_name must be {want!r} (<source_node>.<kind>), got {self.sym_name.data!r}"
            )
        _require_positive(
            self, "input_tokens", "output_tokens", "batch", "top_k", "index_size", "dimension", "replicas"
        )
        _require_non_negative(
            self,
            "flops",
            "bytes_moved",
            "weight_bytes",
            "kv_bytes",
            "memory_bytes",
            "output_bytes",
            "latency_ms",
            "response_bytes",
            "retries",
        )


@irdl_op_definition
class TokenizeOp(_GranularOp):
    name = "granular.tokenize"
    KIND: ClassVar[str] = "tokenize"

    ins = var_operand_def()
    out = result_def(TokensType)
    model = attr_def(StringAttr)
    input_tokens = attr_def(I64Attr)

    assembly_format = _GRANULAR_FORMAT_VAR


@irdl_op_definition
class PrefillOp(_GranularOp):
    """Prompt forward pass; produces the KV cache that exactly one decode consumes."""

    name = "granular.prefill"
    KIND: ClassVar[str] = "prefill"

    ins = operand_def(TokensType)
    out = result_def(KVCacheType)
    model = attr_def(StringAttr)
    dtype = opt_attr_def(StringAttr)
    input_tokens = attr_def(I64Attr)
    stream = opt_attr_def(UnitAttr)
    traffic = opt_attr_def(Buckets)
    tpot_ms = opt_attr_def(F64Attr)

    assembly_format = _GRANULAR_FORMAT_VAR

    def verify_(self) -> None:
        super().verify_()
        uses = [use.operation for use in self.out.uses]
        if not any(isinstance(u, DecodeOp | KVTransferOp) for u in uses):
            raise VerifyException(f"granular.prefill {self.sym_name.data!r}: its KV cache must feed a granular.decode")
        for user in uses:
            if not isinstance(user, DecodeOp | KVTransferOp):
                raise VerifyException(
                    f"granular.prefill {self.sym_name.data!r}: KV cache used by {user.name}; "
                    "only decode or kv_transfer may use it"
                )
        kv_type = self.out.type
        if (
            self.kv_bytes is not None
            and isinstance(kv_type, KVCacheType)
            and self.kv_bytes.value.data != kv_type.size_bytes.data
        ):
            raise VerifyException(
                f"granular.prefill {self.sym_name.data!r}: kv_bytes {self.kv_bytes.value.data} "
                f"!= result type size {kv_type.size_bytes.data}"
            )


@irdl_op_definition
class DecodeOp(_GranularOp):
    """Token-by-token generation over the KV cache of its prefill."""

    name = "granular.decode"
    KIND: ClassVar[str] = "decode"

    ins = operand_def(KVCacheType)
    out = result_def(TokensType)
    model = attr_def(StringAttr)
    dtype = opt_attr_def(StringAttr)
    input_tokens = attr_def(I64Attr)
    output_tokens = attr_def(I64Attr)
    stream = opt_attr_def(UnitAttr)
    traffic = opt_attr_def(Buckets)
    tpot_ms = opt_attr_def(F64Attr)

    assembly_format = _GRANULAR_FORMAT_VAR

    def verify_(self) -> None:
        super().verify_()
        producer = self.ins.owner
        if not isinstance(producer, PrefillOp | KVTransferOp):
            raise VerifyException(
                f"granular.decode {self.sym_name.data!r}: "
                "its KV cache must come from a granular.prefill or granular.kv_transfer"
            )
        if producer.source_node.data != self.source_node.data:
            raise VerifyException(
                f"granular.decode {self.sym_name.data!r}: "
                f"KV cache comes from node {producer.source_node.data!r}, not its own"
            )


@irdl_op_definition
class DetokenizeOp(_GranularOp):
    name = "granular.detokenize"
    KIND: ClassVar[str] = "detokenize"

    ins = operand_def(TokensType)
    out = result_def(ValueType)
    model = attr_def(StringAttr)
    output_tokens = attr_def(I64Attr)
    stream = opt_attr_def(UnitAttr)

    assembly_format = _GRANULAR_FORMAT_VAR


@irdl_op_definition
class GEmbedOp(_GranularOp):
    """Encoder forward pass; embedding models tokenize inside, so no separate tokenize op."""

    name = "granular.embed"
    KIND: ClassVar[str] = "embed"

    ins = var_operand_def()
    out = result_def(ValueType)
    model = attr_def(StringAttr)
    dtype = opt_attr_def(StringAttr)
    input_tokens = attr_def(I64Attr)
    batch = attr_def(I64Attr)

    assembly_format = _GRANULAR_FORMAT_VAR


@irdl_op_definition
class GVectorSearchOp(_GranularOp):
    name = "granular.vector_search"
    KIND: ClassVar[str] = "vector_search"

    ins = var_operand_def()
    out = result_def(ValueType)
    index = attr_def(StringAttr)
    top_k = attr_def(I64Attr)
    index_size = attr_def(I64Attr)
    dimension = attr_def(I64Attr)
    metric = attr_def(StringAttr)

    assembly_format = _GRANULAR_FORMAT_VAR


@irdl_op_definition
class GToolOp(_GranularOp):
    name = "granular.tool"
    KIND: ClassVar[str] = "tool"

    ins = var_operand_def()
    out = result_def(ValueType)
    url = opt_attr_def(StringAttr)
    function = opt_attr_def(StringAttr)
    method = attr_def(StringAttr)
    latency_ms = attr_def(F64Attr)
    response_bytes = attr_def(I64Attr)
    timeout_s = opt_attr_def(F64Attr)
    retries = opt_attr_def(I64Attr)
    idempotent = opt_attr_def(UnitAttr)

    assembly_format = _GRANULAR_FORMAT_VAR

    def verify_(self) -> None:
        super().verify_()
        if (self.url is None) == (self.function is None):
            raise VerifyException(f"granular.tool {self.sym_name.data!r}: needs exactly one of url or function")


@irdl_op_definition
class GTransformOp(_GranularOp):
    name = "granular.transform"
    KIND: ClassVar[str] = "transform"

    ins = var_operand_def()
    out = result_def(ValueType)
    function = attr_def(StringAttr)
    latency_ms = attr_def(F64Attr)
    timeout_s = opt_attr_def(F64Attr)
    retries = opt_attr_def(I64Attr)

    assembly_format = _GRANULAR_FORMAT_VAR


@irdl_op_definition
class KVTransferOp(_GranularOp):
    """Moves a KV cache from the prefill device to the decode device (disaggregated serving)."""

    name = "granular.kv_transfer"
    KIND: ClassVar[str] = "kv_transfer"

    ins = operand_def(KVCacheType)
    out = result_def(KVCacheType)
    src_device = attr_def(StringAttr)
    dst_device = attr_def(StringAttr)

    assembly_format = _GRANULAR_FORMAT_VAR

    def verify_(self) -> None:
        super().verify_()
        if self.src_device.data == self.dst_device.data:
            raise VerifyException(
                f"granular.kv_transfer {self.sym_name.data!r}: "
                f"src_device and dst_device are both {self.src_device.data!r}"
            )
        if self.ins.type != self.out.type:
            raise VerifyException(f"granular.kv_transfer {self.sym_name.data!r}: result type must equal operand type")
        if not isinstance(self.ins.owner, PrefillOp):
            raise VerifyException(
                f"granular.kv_transfer {self.sym_name.data!r}: operand must be a granular.prefill result"
            )
        if not any(isinstance(use.operation, DecodeOp) for use in self.out.uses):
            raise VerifyException(f"granular.kv_transfer {self.sym_name.data!r}: must feed a granular.decode")


GRANULAR_OPS: dict[str, type[_GranularOp]] = {
    op.KIND: op
    for op in (
        TokenizeOp,
        PrefillOp,
        DecodeOp,
        DetokenizeOp,
        GEmbedOp,
        GVectorSearchOp,
        GToolOp,
        GTransformOp,
        KVTransferOp,
    )
}

Granular = Dialect("granular", list(GRANULAR_OPS.values()), [TokensType, ValueType, KVCacheType])


def is_granular(op: Operation) -> bool:
    return isinstance(op, _GranularOp)


def is_agent_node(op: Operation) -> bool:
    return isinstance(op, _AgentNodeOp)


def granular_kind(op: Operation) -> str:
    """``prefill``, ``decode``, ... of a granular op (raises TypeError for anything else)."""
    if not isinstance(op, _GranularOp):
        raise TypeError(f"{op.name} is not a granular op")
    return op.KIND


def str_list(values: Sequence[str]) -> ArrayAttr[StringAttr]:
    return ArrayAttr([StringAttr(v) for v in values])


def attr_to_py(attr: Attribute) -> object:
    """Plain Python value of an attribute used in these dialects (for the planner's plain data)."""
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, IntegerAttr):
        return attr.value.data
    if isinstance(attr, FloatAttr):
        return attr.value.data
    if isinstance(attr, UnitAttr):
        return True
    if isinstance(attr, ArrayAttr):
        return [attr_to_py(a) for a in attr.data]
    raise TypeError(f"no plain value for attribute {attr}")
