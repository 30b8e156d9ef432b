"""The Ray actor that runs one spec node, and the Ray options that place it on a device tier.

Resource naming: every device tier (hardware catalog id, e.g. ``local-cpu``, ``c7i-16``) is a
custom Ray resource ``device:<type>``. In a KubeRay deployment each worker group serves one tier
and advertises it in its ``rayStartParams`` (``resources: '{"device:<type>": 1000}'``); locally,
``ray.init(resources={"device:local-cpu": 100})``. Actors request a token amount (0.001) so the
resource only *selects* the tier; CPU/GPU quantities do the actual packing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

__all__ = ["HostWorker", "LLMWorker", "actor_options", "device_resource", "node_from_json", "worker_class"]

DEVICE_RESOURCE_AMOUNT = 0.001
HOST_OP_CPUS = 0.0  # host ops time-share cores (the planner counts core-seconds), so any number fit


def device_resource(device: str) -> str:
    """The custom Ray resource that marks nodes of one device tier: ``device:<type>``."""
    return f"device:{device}"


def node_from_json(node_json: dict) -> Any:
    """Rebuild a compiler.spec node model (discriminated by ``kind``) from its JSON dict."""
    from compiler.spec import Node

    return TypeAdapter(Node).validate_python(node_json)


def actor_options(device: str, device_class: str, execution: dict | None, *, llm: bool = False) -> dict[str, Any]:
    """Ray ``.options(...)`` for one op replica on ``device`` (a device type id).

    Host ops (tools, transforms, search, embeddings) reserve no CPU: they time-share the socket
    the way the planner accounts for them (core-seconds), the ``device:<type>`` resource alone
    picks their tier, and their lowered ``threads`` reach the kernels as OMP_NUM_THREADS. Any CPU
    reservation per actor would cap the pools a node can hold (0.05 each: 40 on 2 cores) below
    what the planner found feasible. An LLM node's vLLM engine
    (``llm=True``) holds one CPU for its scheduler loop, gets the vLLM environment, and on
    GPU-class devices ``num_gpus`` = its tensor-parallel size. (Embeddings are lowered as engines
    too, but this runtime serves them with sentence-transformers, a host op.)
    """
    execution = execution or {}
    is_engine = llm and execution.get("kind") == "engine"
    env: dict[str, str] = {}
    if is_engine:
        from workers.llm import VLLM_ENV

        env.update(VLLM_ENV)
    env.update({k: str(v) for k, v in (execution.get("env") or {}).items()})
    opts: dict[str, Any] = {
        "resources": {device_resource(device): DEVICE_RESOURCE_AMOUNT},
        "num_cpus": 1 if is_engine else HOST_OP_CPUS,
        "max_restarts": 2,
        "max_task_retries": 0,
    }
    if env:
        opts["runtime_env"] = {"env_vars": env}
    if device_class == "gpu" and is_engine:
        opts["num_gpus"] = int((execution.get("engine_args") or {}).get("tensor_parallel_size", 1))
    return opts


class _Worker:
    """What every replica has: its node, a health ping and a description."""

    def __init__(self, node_json: dict):
        self.node = node_from_json(node_json)

    def ping(self) -> str:
        return f"{self.node.kind}:{self.node.name}:{os.getpid()}"

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.node.kind, "name": self.node.name}
        holder = getattr(self, "llm", None) or getattr(self, "op", None)
        if hasattr(holder, "info"):
            out.update(holder.info())
        for attr in ("model_requested", "model_served", "substituted", "dimension", "top_k", "url", "function"):
            if hasattr(holder, attr):
                out[attr] = getattr(holder, attr)
        return out


def _envelope(output: Any, started: float, t0: float, detail: dict | None = None) -> dict[str, Any]:
    import time

    return {"output": output, "started_at": started, "service_ms": (time.perf_counter() - t0) * 1000.0,
            "detail": detail or {}}


class HostWorker(_Worker):
    """A replica of an embed, vector_search, tool or transform node (workers.ops).

    A threaded actor (sync methods, ``max_concurrency`` threads): concurrent calls run in parallel
    without an event loop, which keeps Ray's per-call overhead at its floor (bench/runtime_overhead.py).
    ``run`` receives upstream envelopes as top-level arguments, so Ray resolves them before the call
    (small values inline in the task, large ones from the object store, never via the driver's Python).
    """

    def __init__(self, node_json: dict, execution: dict, data_dir: str, model_dir: str | None = None):
        from workers.ops import make_op

        super().__init__(node_json)
        self.op = make_op(self.node, execution, Path(data_dir))

    def run(self, graph_inputs: dict[str, Any], upstream_names: list[str], *upstream: dict[str, Any]) -> dict:
        """One call: render the node's input templates, run the op; the envelope
        ``{output, started_at, service_ms, detail}``."""
        import time

        from workers.templates import render

        started, t0 = time.time(), time.perf_counter()
        values = {n: env["output"] for n, env in zip(upstream_names, upstream)}
        kwargs = {k: render(v, graph_inputs, values) for k, v in self.node.inputs.items()}
        return _envelope(self.op(kwargs), started, t0)


class LLMWorker(_Worker):
    """A replica of an LLM node: one vLLM ``AsyncLLM`` engine (an async actor).

    ``run`` returns the envelope; ``run_stream`` (``num_returns="streaming"``) first yields
    ``{"delta": text}`` items as tokens arrive, then the envelope. ``generate``/``stream`` call the
    engine directly (tests, health probes).
    """

    def __init__(self, node_json: dict, execution: dict, data_dir: str, model_dir: str | None = None):
        from workers.llm import LLMEngine

        super().__init__(node_json)
        if model_dir is None:
            raise ValueError(f"LLM node {self.node.name!r} needs model weights (model_dir)")
        self.llm = LLMEngine(execution.get("engine_args", {}), model_dir)

    def _prompt(self, graph_inputs: dict[str, Any], values: dict[str, Any]) -> str:
        import json

        from workers.templates import render

        node = self.node
        if node.prompt:
            prompt = render(node.prompt, graph_inputs, values)
        else:
            prompt = json.dumps({k: render(v, graph_inputs, values) for k, v in node.inputs.items()})
        return f"{node.system}\n\n{prompt}" if node.system else prompt

    async def run(self, graph_inputs: dict[str, Any], upstream_names: list[str], *upstream: dict[str, Any]) -> dict:
        final: dict[str, Any] = {}
        async for item in self._call(graph_inputs, upstream_names, upstream, stream=False):
            final = item
        return final

    async def run_stream(self, graph_inputs: dict[str, Any], upstream_names: list[str], *upstream: dict[str, Any]):
        async for item in self._call(graph_inputs, upstream_names, upstream, stream=True):
            yield item

    async def _call(self, graph_inputs: dict[str, Any], upstream_names: list[str], upstream: tuple, stream: bool):
        import time

        started, t0 = time.time(), time.perf_counter()
        values = {n: env["output"] for n, env in zip(upstream_names, upstream)}
        result: dict[str, Any] = {}
        async for delta in self.llm.deltas(self._prompt(graph_inputs, values), self.node.expected.output_tokens,
                                           self.node.temperature, result):
            if stream:
                yield {"delta": delta}
        output = result.pop("text")
        result.pop("token_ids", None)
        yield _envelope(output, started, t0, result)

    async def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0) -> dict[str, Any]:
        return await self.llm.generate(prompt, max_tokens, temperature)

    async def stream(self, prompt: str, max_tokens: int, temperature: float = 0.0):
        async for delta in self.llm.stream(prompt, max_tokens, temperature):
            yield delta

    async def shutdown(self) -> None:
        self.llm.shutdown()


def worker_class(node: Any) -> type[_Worker]:
    """The actor class of a spec node's operator family."""
    return LLMWorker if node.kind == "llm" else HostWorker
