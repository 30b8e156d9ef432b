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


def actor_options(device: str, device_class: str, execution: dict | None) -> dict[str, Any]:
    """Ray ``.options(...)`` for one op replica on ``device`` (a device type id).

    Host ops (tools, transforms, search, embeddings) reserve only MIN_CPUS: they time-share the
    socket the way the planner accounts for them (core-seconds), and their lowered ``threads``
    reach the kernels as OMP_NUM_THREADS. Reserving whole cores per actor would leave a small
    machine unable to place a graph the planner found feasible. GPU-class devices also ask for
    ``num_gpus`` when the execution is an engine (its tensor-parallel size).
    """
    execution = execution or {}
    cpus = MIN_CPUS
    opts: dict[str, Any] = {
        "resources": {device_resource(device): DEVICE_RESOURCE_AMOUNT},
        "num_cpus": cpus,
        "max_restarts": 2,
        "max_task_retries": 0,
    }
    env = {k: str(v) for k, v in (execution.get("env") or {}).items()}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    if device_class == "gpu" and execution.get("kind") == "engine":
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
        for attr in ("model_requested", "model_served", "substituted", "dimension", "top_k", "url", "function"):
            for holder in (self.op, self.llm):
                if holder is not None and hasattr(holder, attr):
                    out[attr] = getattr(holder, attr)
        return out

    async def run(self, graph_inputs: dict[str, Any], upstream_names: list[str], *upstream: dict[str, Any]) -> dict:
        """One call: render templates, run the op; an envelope {output, started_at, service_ms, detail}."""
        import asyncio
        import json
        import time

        from workers.templates import render

        started = time.time()
        values = {n: env["output"] for n, env in zip(upstream_names, upstream)}
        t0 = time.perf_counter()
        detail: dict[str, Any] = {}
        if self.llm is not None:
            node = self.node
            prompt = render(node.prompt, graph_inputs, values) if node.prompt else json.dumps(
                {k: render(v, graph_inputs, values) for k, v in node.inputs.items()})
            result = await self.llm.generate(prompt, max_tokens=node.expected.output_tokens, temperature=node.temperature)
            output = result.pop("text")
            detail = result
        else:
            kwargs = {k: render(v, graph_inputs, values) for k, v in self.node.inputs.items()}
            output = await asyncio.to_thread(self.op, kwargs)
        return {"output": output, "started_at": started, "service_ms": (time.perf_counter() - t0) * 1000.0,
                "detail": detail}
