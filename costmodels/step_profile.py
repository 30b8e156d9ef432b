"""Time transformer-layer steps with plain PyTorch (no serving engine) into a measured step profile.

For each model shape a few decoder layers are built with random weights (Llama layout: RMSNorm, fused QKV,
RoPE, attention, O, residual add, RMSNorm, fused gate-up, SiLU-and-mul, down, residual add) and timed in three
blocks: the layers without attention (``linear_ms``), their four GEMMs alone (``gemm_ms``) and attention alone
(``attn_ms``: ``torch.nn.functional.scaled_dot_product_attention``, causal over the prompt for a prefill, one
query over a KV cache for a decode step). The median time of a block over ``repeats`` runs, divided by the
layers it ran, times the model's layer count gives the row; ``total_ms = linear_ms + attn_ms``, as in the Vidur
kernel sums of ``configs/profiles/a100_vidur_derived.csv``, whose CSV format the rows follow (plus the model's
shape columns), so ``hetagent costmodel check --profiles`` and its ``--fit`` read them.

On CUDA a block is captured in a CUDA graph and replayed (the GPU's time without Python launch gaps, like a
kernel sum), timed with CUDA events; attention runs over enough KV copies to exceed the L2 cache. On a CPU the
block runs eagerly, timed with ``time.perf_counter``. Imports only the standard library and torch, so
``bench/gpu_profile.py`` runs on a GPU machine that has nothing else.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    """A decoder model's shape (from its config.json)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


SHAPES = {
    s.name: s
    for s in (
        Shape("Llama-2-7b-hf", 32, 4096, 32, 32, 128, 11008, 32000),  # meta-llama/Llama-2-7b-hf config.json
        Shape("Meta-Llama-3-8B", 32, 4096, 32, 8, 128, 14336, 128256),  # meta-llama/Meta-Llama-3-8B config.json
        Shape("qwen2.5-0.5b-shape", 24, 896, 14, 2, 64, 4864, 151936),  # Qwen/Qwen2.5-0.5B config.json
        Shape("tiny-shape", 2, 128, 4, 2, 32, 344, 1000),  # small enough for a test on two CPU cores
    )
}


@dataclass(frozen=True)
class Grid:
    """What to measure: prefill prompt lengths (batch 1), decode batches × contexts, layers built, repeats."""

    shapes: tuple[str, ...]
    prompts: tuple[int, ...]
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    measured_layers: int
    repeats: int


GRIDS = {
    "cuda": Grid(
        ("Llama-2-7b-hf", "Meta-Llama-3-8B"), (128, 256, 512, 1024, 2048, 4096), (1, 8, 32, 128), (1024, 4096), 2, 20
    ),
    "cpu": Grid(("qwen2.5-0.5b-shape",), (32, 128, 512), (1, 8), (256, 1024), 2, 5),
    "quick": Grid(("tiny-shape",), (16, 64), (1, 4), (64,), 2, 3),
}
COLUMNS = (
    "sku",
    "model",
    "phase",
    "tp",
    "prompt_len",
    "batch",
    "ctx_len",
    "tokens_in_step",
    "n_layers",
    "linear_ms",
    "gemm_ms",
    "attn_ms",
    "total_ms",
    "hidden_size",
    "heads",
    "kv_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "dtype",
    "measured_layers",
    "repeats",
)
L2_FLUSH_BYTES = 256 * 2**20  # attention reads at least this much per timed block on CUDA (H200 L2: 60 MB)
MAX_KV_COPIES = 32
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _timer(device: str, repeats: int) -> Callable[[Callable[[], object]], float]:
    """A function that returns the median seconds of ``fn`` (a CUDA graph replay on CUDA, eager on CPU)."""
    import torch

    def cpu_time(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def cuda_time(fn: Callable[[], object]) -> float:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        for _ in range(3):
            graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times: list[float] = []
        for _ in range(repeats):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)) / 1000.0)
        del graph
        return float(statistics.median(times))

    return cuda_time if device.startswith("cuda") else cpu_time


class _Layers:
    """``n`` decoder layers of ``shape`` with random weights, and their three timed blocks."""

    def __init__(self, shape: Shape, n: int, dtype: Any, device: str) -> None:
        import torch

        gen = torch.Generator(device="cpu").manual_seed(0)
        h, dq, dkv, ff = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate

        def weight(rows: int, cols: int) -> Any:
            return (torch.randn(rows, cols, generator=gen) * 0.02).to(device=device, dtype=dtype)

        self.shape, self.dq, self.dkv = shape, dq, dkv
        self.layers = [
            {
                "qkv": weight(dq + 2 * dkv, h),
                "o": weight(h, dq),
                "gate_up": weight(2 * ff, h),
                "down": weight(h, ff),
                "norm1": torch.ones(h, device=device, dtype=dtype),
                "norm2": torch.ones(h, device=device, dtype=dtype),
            }
            for _ in range(n)
        ]
        self.dtype, self.device = dtype, device

    def _rope(self, x: Any, cos: Any, sin: Any) -> Any:
        import torch

        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def linear_block(self, tokens: int) -> Callable[[], object]:
        """Every layer without attention over ``tokens`` tokens (attention's output replaced by q)."""
        import torch
        import torch.nn.functional as F

        s = self.shape
        x0 = torch.randn(tokens, s.hidden, device=self.device, dtype=self.dtype)
        angle = torch.arange(tokens, device=self.device).float()[:, None] * torch.ones(s.head_dim, device=self.device)
        cos, sin = angle.cos().to(self.dtype)[:, None, :], angle.sin().to(self.dtype)[:, None, :]

        def run() -> object:
            x = x0
            for w in self.layers:
                y = F.rms_norm(x, (s.hidden,), w["norm1"], 1e-6)
                q, k, _v = F.linear(y, w["qkv"]).split([self.dq, self.dkv, self.dkv], dim=-1)
                q = self._rope(q.view(tokens, s.heads, s.head_dim), cos, sin)
                self._rope(k.view(tokens, s.kv_heads, s.head_dim), cos, sin)
                x = x + F.linear(q.reshape(tokens, self.dq), w["o"])
                y = F.rms_norm(x, (s.hidden,), w["norm2"], 1e-6)
                gate, up = F.linear(y, w["gate_up"]).chunk(2, dim=-1)
                x = x + F.linear(F.silu(gate) * up, w["down"])
            return x

        return run

    def gemm_block(self, tokens: int) -> Callable[[], object]:
        """The four GEMMs of every layer alone."""
        import torch
        import torch.nn.functional as F

        s = self.shape
        x = torch.randn(tokens, s.hidden, device=self.device, dtype=self.dtype)
        a_q = torch.randn(tokens, self.dq, device=self.device, dtype=self.dtype)
        a_ff = torch.randn(tokens, s.intermediate, device=self.device, dtype=self.dtype)

        def run() -> object:
            out = None
            for w in self.layers:
                F.linear(x, w["qkv"])
                F.linear(a_q, w["o"])
                F.linear(x, w["gate_up"])
                out = F.linear(a_ff, w["down"])
            return out

        return run

    def attention_block(self, phase: str, batch: int, tokens: int) -> tuple[Callable[[], object], int]:
        """Attention of one layer, run over several KV copies (on CUDA enough to exceed the L2 cache, so no copy
        is read from cache); returns (block, copies)."""
        import torch
        import torch.nn.functional as F

        s = self.shape
        q_len = tokens if phase == "prefill" else 1
        kv_bytes = 2 * batch * tokens * self.dkv * torch.finfo(self.dtype).bits // 8
        copies = len(self.layers)
        if self.device.startswith("cuda"):
            copies = max(copies, min(MAX_KV_COPIES, math.ceil(L2_FLUSH_BYTES / max(kv_bytes, 1))))

        def rand(*size: int) -> Any:
            return torch.randn(*size, device=self.device, dtype=self.dtype)

        qs = [rand(batch, s.heads, q_len, s.head_dim) for _ in range(copies)]
        kvs = [
            (rand(batch, s.kv_heads, tokens, s.head_dim), rand(batch, s.kv_heads, tokens, s.head_dim))
            for _ in range(copies)
        ]
        gqa = s.kv_heads != s.heads

        def run() -> object:
            out = None
            for q, (k, v) in zip(qs, kvs, strict=True):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=phase == "prefill", enable_gqa=gqa)
            return out

        return run, copies


def measure(
    grid: Grid,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    sku: str = "local-cpu",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """One row per (shape, prefill prompt length) and (shape, decode batch, context) of ``grid``."""
    import torch

    tdtype = getattr(torch, DTYPES[dtype])
    timer = _timer(device, grid.repeats)
    rows: list[dict[str, object]] = []
    with torch.inference_mode():
        for name in grid.shapes:
            shape = SHAPES[name]
            n = min(grid.measured_layers, shape.layers)
            layers = _Layers(shape, n, tdtype, device)
            points = [("prefill", 1, p) for p in grid.prompts] + [
                ("decode", b, c) for b in grid.batches for c in grid.contexts
            ]
            for phase, batch, tokens in points:
                step_tokens = batch * tokens if phase == "prefill" else batch
                per_layer_linear = timer(layers.linear_block(step_tokens)) / n
                per_layer_gemm = timer(layers.gemm_block(step_tokens)) / n
                attn, copies = layers.attention_block(phase, batch, tokens)
                per_layer_attn = timer(attn) / copies
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                scale = shape.layers * 1000.0
                row: dict[str, object] = {
                    "sku": sku,
                    "model": shape.name,
                    "phase": phase,
                    "tp": 1,
                    "prompt_len": tokens if phase == "prefill" else 0,
                    "batch": batch,
                    "ctx_len": tokens if phase == "decode" else 0,
                    "tokens_in_step": step_tokens,
                    "n_layers": shape.layers,
                    "linear_ms": round(per_layer_linear * scale, 5),
                    "gemm_ms": round(per_layer_gemm * scale, 5),
                    "attn_ms": round(per_layer_attn * scale, 5),
                    "total_ms": round((per_layer_linear + per_layer_attn) * scale, 5),
                    "hidden_size": shape.hidden,
                    "heads": shape.heads,
                    "kv_heads": shape.kv_heads,
                    "head_dim": shape.head_dim,
                    "intermediate_size": shape.intermediate,
                    "vocab_size": shape.vocab,
                    "dtype": dtype,
                    "measured_layers": n,
                    "repeats": grid.repeats,
                }
                rows.append(row)
                if log:
                    log(f"{name} {phase} B={batch} {'P' if phase == 'prefill' else 'C'}={tokens}: {row['total_ms']} ms")
            del layers
    return rows


def profile_csv(rows: Iterable[dict[str, object]], header: Iterable[str]) -> str:
    """The rows as CSV, after ``# `` comment lines (the command that measured them, the machine)."""
    buf = io.StringIO()
    for line in header:
        buf.write(f"# {line}\n")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def machine_line(device: str) -> str:
    """Date, device and library versions, for a profile's header."""
    import platform

    import torch

    if device.startswith("cuda"):
        what = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        cpu = platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:
                cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
        except OSError:
            pass
        what = f"{cpu}, {torch.get_num_threads()} torch threads"
    return f"measured {_dt.date.today().isoformat()} on {what}, torch {torch.__version__}"
