"""Work of each granular op: FLOPs, bytes moved and resident bytes, from the model's architecture.

The single place where operator work is counted: the compiler's analysis pass attaches these
numbers to the IR, and the roofline turns them into seconds on a device. A model step is split
into kernel groups, counted as the kernels of a serving engine run them (docs/costmodel.md):
- ``gemm``: the four weight matmuls of every layer (QKV, O, MLP up(+gate), down); a matmul of an
  ``m×k`` activation with a ``k×n`` weight is ``2·m·k·n`` FLOPs and reads the weight once per step
  whatever the batch, plus its activations in and out; the LM head over the last token of each
  sequence (what vLLM computes logits for), reading its ``vocab × hidden`` weight;
- ``attention``: causal prefill attention over P tokens is ``2·P²·d_q`` FLOPs a layer (QKᵀ and AV,
  halved by the mask), decode attention over context C is ``4·C·d_q`` a token and reads the
  sequence's whole KV cache;
- ``vector``: element-wise kernels (RMSNorm ×2, RoPE, SiLU-and-mul, residual add a layer; the
  embedding gather and the final norm), bandwidth-bound on their activations.
The embedding table is gathered, not streamed: only the rows of the step's tokens are read.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.catalog import ModelKind, ModelSpec

BYTES_PER_TOKEN_TEXT = 4.0  # UTF-8 text, ~4 characters per BPE token
TOKEN_ID_BYTES = 4.0  # an int32 token id
GEMMS_PER_LAYER = 4  # QKV, O, MLP up (fused with the gate), MLP down
VECTOR_KERNELS_PER_LAYER = 5  # input norm, RoPE, post-attention norm, activation, residual add
ATTENTION_KERNELS_PER_LAYER = 1
KERNEL_KINDS = ("gemm", "attention", "vector")


@dataclass(frozen=True)
class KernelGroup:
    """Kernels of one kind in a step: their FLOPs, the bytes they move and how many kernels run."""

    kind: str  # one of KERNEL_KINDS
    flops: float = 0.0
    bytes_moved: float = 0.0
    kernels: float = 0.0


@dataclass(frozen=True)
class Work:
    """Work of one forward step (or one call) of an operator.

    ``flops`` and ``bytes_moved`` are totals; ``groups`` splits them by kernel kind for the roofline
    (empty: the whole is one GEMM-like group, as for vector search or a tokenizer)."""

    flops: float = 0.0
    bytes_moved: float = 0.0
    weight_bytes: float = 0.0
    kv_bytes: float = 0.0
    groups: tuple[KernelGroup, ...] = ()

    def __add__(self, other: Work) -> Work:
        return Work(
            self.flops + other.flops,
            self.bytes_moved + other.bytes_moved,
            max(self.weight_bytes, other.weight_bytes),
            self.kv_bytes + other.kv_bytes,
            self.groups + other.groups,
        )


def _work(groups: list[KernelGroup], weight_bytes: float, kv_bytes: float) -> Work:
    return Work(
        flops=sum(g.flops for g in groups),
        bytes_moved=sum(g.bytes_moved for g in groups),
        weight_bytes=weight_bytes,
        kv_bytes=kv_bytes,
        groups=tuple(groups),
    )


def _q_dim(model: ModelSpec) -> int:
    return model.heads * model.head_dim


def _kv_dim(model: ModelSpec) -> int:
    return model.kv_heads * model.head_dim


def _mlp_matrices(model: ModelSpec) -> int:
    """Gated MLPs (SwiGLU: gate, up, down) in the decoder LLMs; encoders have up and down."""
    return 3 if model.kind is ModelKind.llm else 2


def layer_linear_params(model: ModelSpec) -> float:
    """Weights one layer's matmuls read: QKV, O and the MLP."""
    h, dq, dkv = model.hidden_size, _q_dim(model), _kv_dim(model)
    return h * (dq + 2 * dkv) + dq * h + _mlp_matrices(model) * h * model.intermediate_size


def _layer_groups(model: ModelSpec, tokens: float, attn_flops: float, attn_bytes: float) -> list[KernelGroup]:
    """Every transformer layer over ``tokens`` tokens; attention's FLOPs and bytes come from the caller."""
    h, dq, dkv, ff = model.hidden_size, _q_dim(model), _kv_dim(model), model.intermediate_size
    layers, db = model.layers, model.dtype_bytes
    up_out = (_mlp_matrices(model) - 1) * ff
    # activations in and out of QKV, O, up(+gate) and down, per token
    gemm_io = (h + dq + 2 * dkv) + (dq + h) + (h + up_out) + (ff + h)
    # two norms (read, write), RoPE on q and k (in place), the activation (gate and up in, one out), residual add
    vector_io = 2 * (2 * h) + 2 * (dq + dkv) + (up_out + ff) + 3 * h
    return [
        KernelGroup(
            "gemm",
            2.0 * tokens * layer_linear_params(model) * layers,
            (layer_linear_params(model) + tokens * gemm_io) * db * layers,
            GEMMS_PER_LAYER * layers,
        ),
        KernelGroup("attention", attn_flops, attn_bytes, ATTENTION_KERNELS_PER_LAYER * layers),
        KernelGroup("vector", 0.0, tokens * vector_io * db * layers, VECTOR_KERNELS_PER_LAYER * layers),
    ]


def _end_groups(model: ModelSpec, tokens: float, sequences: float) -> list[KernelGroup]:
    """The embedding gather over every token; for an LLM the final norm and the LM head over the last token of
    each sequence (the logits a serving engine computes)."""
    h, db = model.hidden_size, model.dtype_bytes
    groups = [KernelGroup("vector", 0.0, tokens * (2 * h * db + TOKEN_ID_BYTES), 1)]
    if model.kind is ModelKind.llm:
        vocab = model.vocab_size
        groups += [
            KernelGroup("vector", 0.0, tokens * 2 * h * db, 1),
            KernelGroup("gemm", 2.0 * sequences * vocab * h, (vocab * h + sequences * (h + vocab)) * db, 1),
        ]
    return groups


def prefill_work(model: ModelSpec, prompt_tokens: int, batch: int = 1, *, layers_only: bool = False) -> Work:
    """One prefill step over ``batch`` prompts of ``prompt_tokens`` each.

    ``layers_only``: the transformer layers without the embedding gather and the LM head (what kernel
    profiles such as Vidur's time)."""
    tokens = prompt_tokens * batch
    db, dq, dkv = model.dtype_bytes, _q_dim(model), _kv_dim(model)
    attn_flops = 2.0 * prompt_tokens**2 * dq * model.layers * batch
    # read Q, K, V, write O and the new K, V into the cache
    attn_bytes = tokens * (2 * dq + 4 * dkv) * db * model.layers
    groups = _layer_groups(model, tokens, attn_flops, attn_bytes)
    if not layers_only:
        groups += _end_groups(model, tokens, batch)
    return _work(groups, model.weight_bytes, model.kv_bytes_per_token * tokens)


def decode_step_work(model: ModelSpec, context_tokens: float, batch: int = 1, *, layers_only: bool = False) -> Work:
    """One decode step: ``batch`` sequences each attending over ``context_tokens`` cached tokens."""
    db, dq, dkv = model.dtype_bytes, _q_dim(model), _kv_dim(model)
    kv_read = model.kv_bytes_per_token * context_tokens * batch
    attn_flops = 4.0 * context_tokens * dq * model.layers * batch
    # the whole cache, plus q in, the output out and the new K, V written
    attn_bytes = kv_read + batch * (2 * dq + 2 * dkv) * db * model.layers
    groups = _layer_groups(model, batch, attn_flops, attn_bytes)
    if not layers_only:
        groups += _end_groups(model, batch, batch)
    return _work(groups, model.weight_bytes, kv_read)


def decode_mean_context(input_tokens: int, output_tokens: int) -> float:
    """Average context over a generation: the cache grows from P to P + N."""
    return input_tokens + output_tokens / 2.0


def kv_cache_bytes(model: ModelSpec, tokens: int) -> float:
    return model.kv_bytes_per_token * tokens


def embed_work(model: ModelSpec, tokens: int, batch: int = 1) -> Work:
    """Encoder forward pass: like a prefill with bidirectional attention (full P² instead of causal)."""
    total = tokens * batch
    db, dq, dkv = model.dtype_bytes, _q_dim(model), _kv_dim(model)
    attn_flops = 4.0 * tokens**2 * dq * model.layers * batch
    attn_bytes = total * (2 * dq + 2 * dkv) * db * model.layers
    groups = _layer_groups(model, total, attn_flops, attn_bytes) + _end_groups(model, total, batch)
    return _work(groups, model.weight_bytes, 0.0)


def vector_search_work(index_size: int, dimension: int, queries: int = 1, bytes_per_dim: int = 4) -> Work:
    """Exact (flat) inner-product search: every query scans every vector once."""
    index_bytes = float(index_size) * dimension * bytes_per_dim
    return Work(
        flops=2.0 * index_size * dimension * queries,
        bytes_moved=index_bytes,
        weight_bytes=index_bytes,
    )


def tokenize_work(tokens: int) -> Work:
    """BPE tokenisation: ~200 ops per token on a CPU core, trivially memory-light."""
    return Work(flops=200.0 * tokens, bytes_moved=tokens * (BYTES_PER_TOKEN_TEXT + TOKEN_ID_BYTES))
