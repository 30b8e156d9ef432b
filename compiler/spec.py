"""The agent graph spec: a versioned envelope (apiVersion/kind/metadata/spec) around a DAG of nodes.

Nodes reference upstream outputs with ``{{ nodes.<name>.output }}`` and graph inputs with
``{{ inputs.<name> }}``; such references imply dependencies, and ``dependencies`` may add more
(ordering without data). Errors carry the path in the document (``spec.nodes[2].top_k``) and
the reason; a cycle is reported as the cycle itself (``a -> b -> a``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

API_VERSION = "hetagent.dev/v1alpha1"
_NAME = r"^[a-z][a-z0-9_]*$"
# A template reference: ``{{ inputs.<name> }}`` or ``{{ nodes.<name>.output }}``; groups (scope, name).
# The compiler reads dependencies from it; the runtime (workers/templates.py) fills templates with it.
TEMPLATE_REF = re.compile(r"\{\{\s*(inputs|nodes)\.([A-Za-z_][A-Za-z0-9_]*)(?:\.output)?\s*\}\}")


# Sane ranges of the numbers a spec holds: larger values are typos or attacks, and would overflow the
# cost model's arithmetic (a day of latency, a billion tokens, a terabyte of output).
MAX_MS = 86_400_000.0
MAX_TOKENS = 1_000_000_000
MAX_BYTES = 1 << 40


class SpecError(ValueError):
    """An invalid agent graph spec: one line per problem, each ``path: reason``."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{path}: {reason}" if path else reason for path, reason in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metadata(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=63, description="DNS-style graph name.")
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class SLA(_Strict):
    e2e_ms: float = Field(gt=0, le=MAX_MS, description="End-to-end latency target of one run, ms.")
    percentile: float = Field(
        50,
        gt=0,
        lt=100,
        description="Runs that must meet the target (planning uses the mean; the daemon measures this).",
    )
    ttft_ms: float | None = Field(
        None, gt=0, le=MAX_MS, description="Optional target for the first token of the final LLM."
    )


class InputSpec(_Strict):
    type: Literal["string", "number", "integer", "boolean", "object", "array"] = "string"
    required: bool = True
    default: Any = None
    max_chars: int | None = Field(None, ge=1, le=1 << 30, description="Strings only: longest accepted value.")
    description: str = ""


class Placement(_Strict):
    allowed_devices: list[str] | None = Field(
        None, description="Device types this node may use (hardware catalog ids)."
    )
    pin: str | None = Field(None, description="Force every granular op of this node onto one device type.")


class _NodeBase(_Strict):
    name: str = Field(pattern=_NAME, max_length=63, description="Unique node name, referenced as nodes.<name>.")
    dependencies: list[str] = Field(default_factory=list, description="Upstream nodes (ordering), beyond references.")
    inputs: dict[str, str] = Field(
        default_factory=dict, description="Named inputs; templates may reference upstream outputs."
    )
    placement: Placement | None = None
    timeout_s: float = Field(60.0, gt=0, le=86_400, description="Per-op timeout at run time.")
    retries: int = Field(0, ge=0, le=10, description="Bounded retries at run time (idempotent ops only).")


class LLMExpected(_Strict):
    input_tokens: int = Field(ge=1, le=MAX_TOKENS, description="Expected prompt length, tokens.")
    output_tokens: int = Field(ge=1, le=MAX_TOKENS, description="Expected generated tokens.")


class TrafficBucket(_Strict):
    input_tokens: int = Field(
        ge=1, le=MAX_TOKENS, description="Prompt tokens of the bucket's requests (its costing size)."
    )
    output_tokens: int = Field(ge=1, le=MAX_TOKENS, description="Generated tokens of the bucket's requests.")
    share: float = Field(ge=0, le=1, description="Fraction of the node's requests in this bucket.")


class LLMTraffic(_Strict):
    """The node's requests as a distribution of sizes: the planner may serve each bucket on other hardware."""

    buckets: list[TrafficBucket] = Field(
        min_length=1, max_length=1000, description="Request-size buckets; shares sum to 1, sizes are distinct."
    )
    tpot_ms: float | None = Field(
        None, gt=0, le=MAX_MS, description="Time-per-output-token target of every request (Mélange's SLO), ms."
    )


class LLMNode(_NodeBase):
    kind: Literal["llm"]
    model: str = Field(description="Model catalog id.")
    prompt: str = Field("", description="Prompt template; may reference inputs and upstream outputs.")
    system: str = ""
    expected: LLMExpected
    temperature: float = Field(0.0, ge=0, le=100)
    stream: bool = Field(False, description="Stream this node's tokens to the caller.")
    traffic: LLMTraffic | None = Field(
        None, description="Request sizes as buckets: the planner slices the node's traffic across device types."
    )


class EmbedExpected(_Strict):
    input_tokens: int = Field(128, ge=1, le=MAX_TOKENS)
    batch: int = Field(1, ge=1, le=1_000_000, description="Texts embedded per run (e.g. chunks).")


class EmbedNode(_NodeBase):
    kind: Literal["embed"]
    model: str = Field(description="Embedding model catalog id.")
    expected: EmbedExpected = Field(default_factory=EmbedExpected)


class VectorSearchNode(_NodeBase):
    kind: Literal["vector_search"]
    index: str = Field(description="Name of an index the deployment knows (FAISS file or documents file).")
    top_k: int = Field(8, ge=1, le=10_000)
    index_size: int = Field(100_000, ge=1, le=10**13, description="Vectors in the index (for the cost model).")
    dimension: int | None = Field(
        None, ge=1, le=1 << 20, description="Vector size; default: the upstream embedding model's."
    )
    metric: Literal["ip", "l2"] = "ip"


class ToolExpected(_Strict):
    latency_ms: float = Field(ge=0, le=MAX_MS, description="Expected wall time of one call (remote service time).")
    response_bytes: int = Field(4096, ge=0, le=MAX_BYTES)


class ToolNode(_NodeBase):
    kind: Literal["tool"]
    url: str | None = Field(None, description="HTTP endpoint; the node's inputs are sent as JSON.")
    method: Literal["GET", "POST", "PUT"] = "POST"
    function: str | None = Field(None, description="Import path 'package.module:callable' instead of a URL.")
    expected: ToolExpected
    idempotent: bool = True


class TransformExpected(_Strict):
    latency_ms: float = Field(1.0, ge=0, le=MAX_MS, description="CPU time of one call on one reference core, ms.")
    output_bytes: int = Field(4096, ge=0, le=MAX_BYTES)


class TransformNode(_NodeBase):
    kind: Literal["transform"]
    function: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="Import path 'package.module:callable'."
    )
    expected: TransformExpected = Field(default_factory=TransformExpected)


Node = Annotated[LLMNode | EmbedNode | VectorSearchNode | ToolNode | TransformNode, Field(discriminator="kind")]
NODE_KINDS = ("llm", "embed", "vector_search", "tool", "transform")


class GraphBody(_Strict):
    sla: SLA
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    nodes: list[Node] = Field(min_length=1, max_length=5000)
    outputs: dict[str, str] = Field(default_factory=dict, description="Named outputs, templates over node outputs.")


class AgentGraph(_Strict):
    apiVersion: Literal["hetagent.dev/v1alpha1"] = Field(description="Spec version.")
    kind: Literal["AgentGraph"]
    metadata: Metadata
    spec: GraphBody

    # ------------------------------------------------------------------ derived structure
    def node(self, name: str) -> Node:
        for n in self.spec.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def upstream(self, node: Node) -> list[str]:
        return node_upstream(node)

    def topological_order(self) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str) -> None:
            state[name] = 1
            for up in self.upstream(self.node(name)):
                if state.get(up) != 2:
                    visit(up)
            state[name] = 2
            order.append(name)

        for n in self.spec.nodes:
            if n.name not in state:
                visit(n.name)
        return order

    def sinks(self) -> list[str]:
        used = {u for n in self.spec.nodes for u in self.upstream(n)}
        return [n.name for n in self.spec.nodes if n.name not in used]


def node_upstream(node: Any) -> list[str]:
    """Explicit dependencies plus every node referenced by a template, in first-seen order."""
    seen: dict[str, None] = dict.fromkeys(node.dependencies)
    for text in _templates(node):
        for scope, ref in TEMPLATE_REF.findall(text):
            if scope == "nodes":
                seen.setdefault(ref)
    return list(seen)


def _templates(node: Any) -> list[str]:
    texts = list(node.inputs.values())
    if isinstance(node, LLMNode):
        texts += [node.prompt, node.system]
    return texts


def _loc(loc: tuple[Any, ...], raw: Any) -> str:
    """Pydantic's error location as a document path: spec.nodes[2].top_k (tagged-union keys dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in NODE_KINDS and out.endswith("]"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    color: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        color[u] = 1
        stack.append(u)
        for v in edges.get(u, []):
            if color.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if v not in color and (found := dfs(v)):
                return found
        stack.pop()
        color[u] = 2
        return None

    for u in edges:
        if u not in color and (found := dfs(u)):
            return found
    return None


def validate_graph(graph: AgentGraph, catalog: Any | None = None) -> None:
    """Semantic checks the schema cannot express. Raises SpecError listing every problem."""
    problems: list[tuple[str, str]] = []
    names = [n.name for n in graph.spec.nodes]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            problems.append((f"spec.nodes[{i}].name", f"duplicate node name {name!r}"))
        seen.add(name)

    for i, node in enumerate(graph.spec.nodes):
        base = f"spec.nodes[{i}]"
        for j, dep in enumerate(node.dependencies):
            if dep not in seen:
                problems.append((f"{base}.dependencies[{j}]", f"unknown node {dep!r}"))
            elif dep == node.name:
                problems.append((f"{base}.dependencies[{j}]", f"node {dep!r} depends on itself"))
        for key, text in [
            *(("inputs." + k, v) for k, v in node.inputs.items()),
            *((("prompt", node.prompt), ("system", node.system)) if isinstance(node, LLMNode) else ()),
        ]:
            for scope, ref in TEMPLATE_REF.findall(text):
                if scope == "nodes" and ref not in seen:
                    problems.append((f"{base}.{key}", f"reference to unknown node {ref!r}"))
                if scope == "inputs" and ref not in graph.spec.inputs:
                    problems.append((f"{base}.{key}", f"reference to unknown graph input {ref!r}"))
        if isinstance(node, ToolNode) and (node.url is None) == (node.function is None):
            problems.append((base, "a tool needs exactly one of 'url' or 'function'"))
        if isinstance(node, LLMNode) and node.traffic is not None:
            problems += _traffic_problems(node.name, node.traffic, f"{base}.traffic.buckets")
        if catalog is not None:
            problems += _catalog_problems(graph, node, base, catalog)

    for key, text in graph.spec.outputs.items():
        for scope, ref in TEMPLATE_REF.findall(text):
            if (scope == "nodes" and ref not in seen) or (scope == "inputs" and ref not in graph.spec.inputs):
                problems.append((f"spec.outputs.{key}", f"reference to unknown {scope[:-1]} {ref!r}"))

    if not problems:
        cycle = _find_cycle({n.name: graph.upstream(n) for n in graph.spec.nodes})
        if cycle:
            # edges point downstream → upstream; print the data-flow direction
            problems.append(("spec.nodes", "dependency cycle: " + " -> ".join(reversed(cycle))))
    if problems:
        raise SpecError(problems)


TRAFFIC_SHARE_TOL = 1e-6


def _traffic_problems(name: str, traffic: LLMTraffic, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    total = sum(b.share for b in traffic.buckets)
    if abs(total - 1.0) > TRAFFIC_SHARE_TOL:
        out.append((where, f"node {name!r}: bucket shares sum to {total:.6g}, not 1"))
    seen: dict[tuple[int, int], int] = {}
    for j, b in enumerate(traffic.buckets):
        first = seen.setdefault((b.input_tokens, b.output_tokens), j)
        if first != j:
            out.append(
                (
                    f"{where}[{j}]",
                    f"node {name!r}: bucket ({b.input_tokens}, {b.output_tokens}) tokens repeats bucket {first}",
                )
            )
    return out


def _catalog_problems(graph: AgentGraph, node: Any, base: str, catalog: Any) -> list[tuple[str, str]]:
    from costmodels.catalog import CatalogError, ModelKind

    out: list[tuple[str, str]] = []
    if isinstance(node, (LLMNode, EmbedNode)):
        try:
            model = catalog.model(node.model)
        except CatalogError as exc:
            out.append((f"{base}.model", str(exc)))
        else:
            want = ModelKind.llm if isinstance(node, LLMNode) else ModelKind.embedding
            if model.kind is not want:
                out.append((f"{base}.model", f"{node.model!r} is a {model.kind.value} model, not {want.value}"))
            elif isinstance(node, LLMNode):
                total = node.expected.input_tokens + node.expected.output_tokens
                if total > model.max_context_tokens:
                    out.append(
                        (
                            f"{base}.expected",
                            f"{total} tokens exceed {node.model}'s context of {model.max_context_tokens}",
                        )
                    )
    if isinstance(node, VectorSearchNode) and node.dimension is None:
        ups = [graph.node(u) for u in graph.upstream(node) if u in {n.name for n in graph.spec.nodes}]
        if not any(isinstance(u, EmbedNode) for u in ups):
            out.append((f"{base}.dimension", "no 'dimension' and no upstream embed node to take it from"))
    if node.placement:
        for key in ("allowed_devices", "pin"):
            value = getattr(node.placement, key)
            for dev in [value] if isinstance(value, str) else value or []:
                if dev not in catalog.hardware:
                    out.append((f"{base}.placement.{key}", f"unknown device type {dev!r}"))
    return out


def parse_graph(data: Any, catalog: Any | None = None) -> AgentGraph:
    """Validate a parsed document (dict) into an AgentGraph; raises SpecError."""
    if not isinstance(data, dict):
        raise SpecError([("", f"an agent graph must be a mapping, got {type(data).__name__}")])
    try:
        graph = AgentGraph.model_validate(data)
    except ValidationError as exc:
        raise SpecError([(_loc(e["loc"], data), e["msg"]) for e in exc.errors()]) from None
    validate_graph(graph, catalog)
    return graph


def parse_graph_text(text: str, catalog: Any | None = None, *, source: str = "<text>") -> AgentGraph:
    """Parse YAML or JSON text within compiler.limits' bounds (depth, expanded aliases, JSON types)."""
    from compiler.limits import DocumentError, check_document, load_yaml

    try:
        data = load_yaml(text)  # JSON is YAML
        check_document(data)
    except DocumentError as exc:
        raise SpecError([(exc.path, f"{source}: {exc}")]) from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. an integer of more than 4300 digits
        raise SpecError([("", f"{source}: not valid YAML or JSON: {exc}")]) from None
    return parse_graph(data, catalog)


def load_graph(path: str | Path, catalog: Any | None = None) -> AgentGraph:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError([("", f"cannot read {p}: {exc.strerror}")]) from None
    return parse_graph_text(text, catalog, source=str(p))


def graph_json_schema() -> dict[str, Any]:
    return AgentGraph.model_json_schema()


def dump_graph(graph: AgentGraph) -> str:
    return json.dumps(graph.model_dump(mode="json", exclude_defaults=True), indent=2)
