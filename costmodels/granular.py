"""The granular graph: what the compiler hands to the cost models and the planner.

A plain-data view of the decomposed, analysed IR (one GranularOp per granular IR op, one
GranularEdge per SSA use), so the planner never walks xDSL objects. It lives in the bottom layer
(costmodels) because both the cost models (which estimate a GranularOp) and the compiler (which
produces the GranularGraph, ``compiler.ir.to_granular_graph``) use it; see CONTRIBUTING.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Granular op kinds. Host ops need a CPU (tokenizers, HTTP tools, Python transforms, FAISS).
GRANULAR_KINDS = ("tokenize", "prefill", "decode", "detokenize", "embed", "vector_search", "tool", "transform")
HOST_ONLY_KINDS = frozenset({"tokenize", "detokenize", "vector_search", "tool", "transform"})


@dataclass(frozen=True)
class GranularOp:
    name: str  # unique, "<node>.<kind>" (e.g. "answer.prefill")
    kind: str  # one of GRANULAR_KINDS
    source_node: str  # spec node it came from
    model: str | None = None  # catalog id (prefill, decode, embed, tokenize, detokenize)
    input_tokens: int = 0  # prompt tokens (LLM), tokens per text (embed)
    output_tokens: int = 0  # generated tokens (decode, detokenize)
    batch: int = 1  # texts per call (embed), queries (vector_search)
    flops: float = 0.0  # one call, batch 1 (analysis)
    bytes_moved: float = 0.0  # one call, batch 1 (analysis)
    weight_bytes: float = 0.0  # resident per replica (weights, FAISS index)
    kv_bytes: float = 0.0  # KV cache produced (prefill) or held at the end (decode)
    fixed_latency_ms: float = 0.0  # tool wall time / transform CPU time
    allowed_devices: tuple[str, ...] | None = None
    pin: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # top_k, index_size, dimension, url, function, ...

    @property
    def host_only(self) -> bool:
        return self.kind in HOST_ONLY_KINDS


@dataclass(frozen=True)
class GranularEdge:
    src: str
    dst: str
    bytes: float  # payload crossing the edge per run (KV cache on prefill→decode)


@dataclass(frozen=True)
class GranularGraph:
    name: str
    sla_e2e_ms: float
    ttft_ms: float | None
    ops: tuple[GranularOp, ...]
    edges: tuple[GranularEdge, ...]

    def op(self, name: str) -> GranularOp:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(name)

    def predecessors(self, name: str) -> list[GranularEdge]:
        return [e for e in self.edges if e.dst == name]

    def topological(self) -> list[GranularOp]:
        """Ops in an order where every edge goes forward (Kahn; stable in declaration order)."""
        indeg = {o.name: 0 for o in self.ops}
        for e in self.edges:
            indeg[e.dst] += 1
        out: dict[str, list[str]] = {o.name: [] for o in self.ops}
        for e in self.edges:
            out[e.src].append(e.dst)
        ready = [o.name for o in self.ops if indeg[o.name] == 0]
        order: list[str] = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for m in out[n]:
                indeg[m] -= 1
                if indeg[m] == 0:
                    ready.append(m)
        if len(order) != len(self.ops):
            raise ValueError(f"granular graph {self.name!r} has a cycle")
        by_name = {o.name: o for o in self.ops}
        return [by_name[n] for n in order]
