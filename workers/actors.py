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

__all__ = ["NodeWorker", "actor_options", "device_resource", "node_from_json"]

DEVICE_RESOURCE_AMOUNT = 0.001
MIN_CPUS = 0.05  # light ops (tools, transforms) time-share cores; the planner counts core-seconds


def device_resource(device: str) -> str:
    """The custom Ray resource that marks nodes of one device tier: ``device:<type>``."""
    return f"device:{device}"


def node_from_json(node_json: dict) -> Any:
    """Rebuild a compiler.spec node model (discriminated by ``kind``) from its JSON dict."""
    from compiler.spec import Node

    return TypeAdapter(Node).validate_python(node_json)


def actor_options(device: str, device_class: str, execution: dict | None, *, llm: bool = False) -> dict[str, Any]:
    """Ray ``.options(...)`` for one op replica on ``device`` (a device type id).

    Host ops (tools, transforms, search, embeddings) reserve only MIN_CPUS: they time-share the
    socket the way the planner accounts for them (core-seconds), and their lowered ``threads``
    reach the kernels as OMP_NUM_THREADS. Reserving whole cores per actor would leave a small
    machine unable to place a graph the planner found feasible. An LLM node's vLLM engine
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
        "num_cpus": 1 if is_engine else MIN_CPUS,
        "max_restarts": 2,
        "max_task_retries": 0,
    }
    if env:
        opts["runtime_env"] = {"env_vars": env}
    if device_class == "gpu" and is_engine:
        opts["num_gpus"] = int((execution.get("engine_args") or {}).get("tensor_parallel_size", 1))
    return opts


class NodeWorker:
    """One replica of one spec node: its op (an LLM engine or a workers.ops op) and the call entry point.

    Wrapped by the executor as ``ray.remote(NodeWorker).options(**actor_options(...))``. ``run``
    receives upstream envelopes as top-level arguments, so Ray resolves the object references on
    this worker and outputs never pass through the driver.
    """

    def __init__(self, node_json: dict, execution: dict, data_dir: str, model_dir: str | None = None):
        self.node = node_from_json(node_json)
        self.llm = None
        self.op = None
        if self.node.kind == "llm":
            from workers.llm import LLMEngine

            self.llm = LLMEngine(execution.get("engine_args", {}), model_dir)
        else:
            from workers.ops import make_op

            self.op = make_op(self.node, execution, Path(data_dir))

    def ping(self) -> str:
        return f"{self.node.kind}:{self.node.name}:{os.getpid()}"

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.node.kind, "name": self.node.name}
        if self.llm is not None:
            out.update(self.llm.info())
        for attr in ("model_requested", "model_served", "substituted", "dimension", "top_k", "url", "function"):
            for holder in (self.op, self.llm):
                if holder is not None and hasattr(holder, attr):
                    out[attr] = getattr(holder, attr)
        return out

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
        """One call: render templates, run the op; an envelope {output, started_at, service_ms, detail}."""
        final: dict[str, Any] = {}
        async for item in self._call(graph_inputs, upstream_names, upstream, stream=False):
            final = item
        return final

    async def run_stream(self, graph_inputs: dict[str, Any], upstream_names: list[str], *upstream: dict[str, Any]):
        """Like ``run`` but an LLM node first yields ``{"delta": text}`` items as tokens arrive; the
        last item is always the envelope. Called with ``num_returns="streaming"``."""
        async for item in self._call(graph_inputs, upstream_names, upstream, stream=True):
            yield item

    async def _call(self, graph_inputs: dict[str, Any], upstream_names: list[str], upstream: tuple, stream: bool):
        import asyncio
        import time

        from workers.templates import render

        started = time.time()
        values = {n: env["output"] for n, env in zip(upstream_names, upstream)}
        t0 = time.perf_counter()
        detail: dict[str, Any] = {}
        if self.llm is not None:
            node = self.node
            result: dict[str, Any] = {}
            async for delta in self.llm.deltas(self._prompt(graph_inputs, values), node.expected.output_tokens,
                                               node.temperature, result):
                if stream:
                    yield {"delta": delta}
            output = result.pop("text")
            result.pop("token_ids", None)
            detail = result
        else:
            kwargs = {k: render(v, graph_inputs, values) for k, v in self.node.inputs.items()}
            output = await asyncio.to_thread(self.op, kwargs)
        yield {"output": output, "started_at": started, "service_ms": (time.perf_counter() - t0) * 1000.0,
               "detail": detail}

    # -- direct engine calls on an LLM node's replica (tests, the daemon's health probes)
    async def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0) -> dict[str, Any]:
        return await self._engine().generate(prompt, max_tokens, temperature)

    async def stream(self, prompt: str, max_tokens: int, temperature: float = 0.0):
        async for delta in self._engine().stream(prompt, max_tokens, temperature):
            yield delta

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()

    def _engine(self):
        if self.llm is None:
            raise TypeError(f"node {self.node.name!r} is a {self.node.kind} node, not an LLM")
        return self.llm
