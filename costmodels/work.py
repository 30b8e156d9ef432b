"""Work of each granular op: FLOPs, bytes moved and resident bytes, from the model's architecture.

The single place where operator work is counted: the compiler's analysis pass attaches these
numbers to the IR, and the roofline turns them into seconds on a device. Conventions:
- a matmul of an ``m×k`` activation with a ``k×n`` weight is ``2·m·k·n`` FLOPs;
- causal prefill attention over P tokens is ``2·P²·d_q`` FLOPs per layer (QKᵀ and AV, halved by
  the mask), decode attention over context C is ``4·C·d_q`` per token per layer;
- weights are read once per forward step whatever the batch; KV is read per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.catalog import ModelSpec

BYTES_PER_TOKEN_TEXT = 4.0  # UTF-8 text, ~4 characters per BPE token
TOKEN_ID_BYTES = 4.0  # an int32 token id


@dataclass(frozen=True)
class Work:
    """Work of one forward step (or one call) of an operator."""

    flops: float = 0.0
    bytes_moved: float = 0.0
    weight_bytes: float = 0.0
    kv_bytes: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(
            self.flops + other.flops,
            self.bytes_moved + other.bytes_moved,
            max(self.weight_bytes, other.weight_bytes),
            self.kv_bytes + other.kv_bytes,
        )


def linear_params(model: ModelSpec) -> float:
    """Parameters that take part in per-token matmuls (all but the input embedding table)."""
    return max(model.parameters - model.vocab_size * model.hidden_size, model.parameters * 0.5)


def _q_dim(model: ModelSpec) -> int:
    return model.heads * model.head_dim


def prefill_work(model: ModelSpec, prompt_tokens: int, batch: int = 1) -> Work:
    """One prefill step over ``batch`` prompts of ``prompt_tokens`` each."""
    tokens = prompt_tokens * batch
    attn = 2.0 * prompt_tokens**2 * _q_dim(model) * model.layers * batch
    kv = model.kv_bytes_per_token * tokens
    return Work(
        flops=2.0 * linear_params(model) * tokens + attn,
        bytes_moved=model.weight_bytes + kv,
        weight_bytes=model.weight_bytes,
        kv_bytes=kv,
    )


def decode_step_work(model: ModelSpec, context_tokens: float, batch: int = 1) -> Work:
    """One decode step: ``batch`` sequences each attending over ``context_tokens`` cached tokens."""
    kv_read = model.kv_bytes_per_token * context_tokens * batch
    return Work(
        flops=2.0 * linear_params(model) * batch + 4.0 * context_tokens * _q_dim(model) * model.layers * batch,
        bytes_moved=model.weight_bytes + kv_read,
        weight_bytes=model.weight_bytes,
        kv_bytes=kv_read,
    )


def decode_mean_context(input_tokens: int, output_tokens: int) -> float:
    """Average context over a generation: the cache grows from P to P + N."""
    return input_tokens + output_tokens / 2.0


def kv_cache_bytes(model: ModelSpec, tokens: int) -> float:
    return model.kv_bytes_per_token * tokens


def embed_work(model: ModelSpec, tokens: int, batch: int = 1) -> Work:
    """Encoder forward pass: like a prefill with bidirectional attention (full P² instead of causal)."""
    total = tokens * batch
    attn = 4.0 * tokens**2 * _q_dim(model) * model.layers * batch
    act = total * model.hidden_size * model.dtype_bytes
    return Work(
        flops=2.0 * linear_params(model) * total + attn,
        bytes_moved=model.weight_bytes + act,
        weight_bytes=model.weight_bytes,
    )


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
