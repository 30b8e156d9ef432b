"""The Ray actors that run a graph's nodes, and the Ray options that place them on a device tier.

Resource naming: every device tier (hardware catalog id, e.g. ``local-cpu``, ``c7i-16``) is a
custom Ray resource ``device:<type>``. In a KubeRay deployment each worker group serves one tier
and advertises it in its ``rayStartParams`` (``resources: '{"device:<type>": 1000}'``); locally,
``ray.init(resources={"device:local-cpu": 100})``. Actors request a token amount (0.001) so the
resource only *selects* the tier; CPU/GPU quantities do the actual packing.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

__all__ = ["HostWorker", "LLMWorker", "NodeError", "actor_options", "device_resource", "node_from_json"]

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
    what the planner found feasible. A vLLM engine (``llm=True``) gets the vLLM environment; on a
    CPU tier it time-shares the cores like a host op (two engines on a one-core tier are what the
    planner may ask for: it counts core-seconds, not processes); on GPU-class devices it holds one
    CPU for its scheduler loop and ``num_gpus`` = its tensor-parallel size. (Embeddings are lowered
    as engines too, but this runtime serves them with sentence-transformers, a host op.)
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
        "num_cpus": 1 if is_engine and device_class != "cpu" else HOST_OP_CPUS,
        "max_restarts": 2,
        "max_task_retries": 0,
    }
    if env:
        opts["runtime_env"] = {"env_vars": env}
    if device_class == "gpu" and is_engine:
        opts["num_gpus"] = int((execution.get("engine_args") or {}).get("tensor_parallel_size", 1))
    return opts


class NodeError(RuntimeError):
    """An op failed inside a worker (after its in-worker retries): names the node and the cause."""

    def __init__(self, node: str, cause: str):
        super().__init__(node, cause)
        self.node, self.cause = node, cause

    def __str__(self) -> str:
        return f"{self.node}: {self.cause}"


def _upstream_values(upstream_results: tuple) -> dict[str, Any]:
    """Outputs by node name from upstream task results (each ``{node: envelope}``)."""
    return {n: env["output"] for result in upstream_results for n, env in result.items()}


def _envelope(output: Any, started: float, t0: float, attempts: int = 1, detail: dict | None = None) -> dict[str, Any]:
    import time

    return {
        "output": output,
        "started_at": started,
        "service_ms": (time.perf_counter() - t0) * 1000.0,
        "finished_at": time.time(),
        "attempts": attempts,
        "detail": detail or {},
    }


class HostWorker:
    """A replica of a *segment*: one or more embed / vector_search / tool / transform nodes that the
    plan puts on the same device, run in one call.

    Fusing co-located host ops into one task removes a Ray round trip (about 1 ms on 2 cores) per
    op; inside the call, ops run on a thread pool as soon as their inputs exist, so independent
    branches (a fan-out of tool calls) still run in parallel. Each op keeps its own timeout and
    bounded retries (idempotent ops only) here; a failure raises NodeError naming the op.

    A threaded actor (sync methods, ``max_concurrency`` threads): no event loop on the call path.
    """

    def __init__(self, nodes: list[tuple[dict, dict]], data_dir: str, model_dir: str | None = None):
        from concurrent.futures import ThreadPoolExecutor

        from compiler.spec import node_upstream
        from workers.ops import make_op

        self.nodes = [node_from_json(n) for n, _ in nodes]
        self.ops = {
            node.name: make_op(node, execution, Path(data_dir))
            for node, (_, execution) in zip(self.nodes, nodes, strict=True)
        }
        names = {n.name for n in self.nodes}
        self._by_name = {n.name: n for n in self.nodes}
        self._local_ups = {n.name: [u for u in node_upstream(n) if u in names] for n in self.nodes}
        self._local_succs: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n, ups in self._local_ups.items():
            for u in ups:
                self._local_succs[u].append(n)
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="op")

    def ping(self) -> str:
        return f"host:{'+'.join(n.name for n in self.nodes)}:{os.getpid()}"

    def info(self) -> list[dict[str, Any]]:
        out = []
        for node in self.nodes:
            op = self.ops[node.name]
            row: dict[str, Any] = {"kind": node.kind, "name": node.name}
            for attr in ("model_requested", "model_served", "substituted", "dimension", "top_k", "url", "function"):
                if hasattr(op, attr):
                    row[attr] = getattr(op, attr)
            out.append(row)
        return out

    def _call_op(self, node: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        import time

        retries = node.retries if getattr(node, "idempotent", True) and not getattr(node, "url", None) else 0
        started, t0 = time.time(), time.perf_counter()
        errors: list[str] = []
        for attempt in range(1, retries + 2):
            try:
                output = self.ops[node.name](kwargs)
                return _envelope(output, started, t0, attempt, {"retried_errors": errors} if errors else None)
            except Exception as exc:  # noqa: BLE001 - any op error is the node's error
                errors.append(f"{type(exc).__name__}: {exc}")
                if attempt > retries:
                    raise NodeError(node.name, errors[-1]) from exc
        raise AssertionError("unreachable")

    def _render_and_call(self, node: Any, graph_inputs: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        from workers.templates import render

        return self._call_op(node, {k: render(v, graph_inputs, values) for k, v in node.inputs.items()})

    def run(self, graph_inputs: dict[str, Any], *upstream: dict[str, dict]) -> dict[str, dict]:
        """Run the segment's nodes: ``{node: envelope}`` with envelope
        ``{output, started_at, service_ms, finished_at, attempts, detail}``.

        Each op is launched from its last upstream op's completion callback, so a chain of fused ops
        costs a thread hand-off per op, and the calling thread only watches the deadlines."""
        import threading
        import time

        values = _upstream_values(upstream)
        out: dict[str, dict] = {}
        remaining = {n: len(ups) for n, ups in self._local_ups.items()}
        deadlines: dict[str, float] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()
        all_done = threading.Event()

        def launch(name: str) -> None:
            node = self._by_name[name]
            with lock:
                deadlines[name] = time.monotonic() + node.timeout_s
            fut = self._pool.submit(self._render_and_call, node, graph_inputs, values)
            fut.add_done_callback(functools.partial(finished, name))

        def finished(name: str, fut: Any) -> None:
            try:
                env = fut.result()
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                errors.append(exc)
                all_done.set()
                return
            ready = []
            with lock:
                out[name] = env
                values[name] = env["output"]
                for s in self._local_succs[name]:
                    remaining[s] -= 1
                    if remaining[s] == 0:
                        ready.append(s)
                if len(out) == len(self.nodes):
                    all_done.set()
            for s in ready:
                launch(s)

        for name, count in list(remaining.items()):
            if count == 0:
                launch(name)
        while not all_done.is_set():
            with lock:
                running = {n: d for n, d in deadlines.items() if n not in out}
            if running:
                name, deadline = min(running.items(), key=lambda kv: kv[1])
                if time.monotonic() >= deadline:
                    raise NodeError(name, f"timed out after {self._by_name[name].timeout_s:g} s")
                all_done.wait(timeout=max(0.0, deadline - time.monotonic()))
            else:
                all_done.wait(timeout=0.05)
        if errors:
            raise errors[0]
        return out


STREAM_INTERVAL_S = 0.05  # a streamed LLM node's text reaches the caller in chunks at most this often


class LLMWorker:
    """A replica of one engine group of the plan: one vLLM ``AsyncLLM`` serving one or more LLM nodes
    (on a CPU tier every node of one model shares an engine, as the lowering groups them).

    Unsplit nodes: ``run`` returns ``{node: envelope}``; ``run_stream`` (``num_returns="streaming"``)
    first yields ``{"delta": text}`` items as tokens arrive (the first token at once, then what came in
    each ``STREAM_INTERVAL_S``), then that result. Split nodes (prefill
    and decode in different engine groups): ``prefill`` computes the prompt's KV cache under a fresh
    handle and returns a *hand-off* (token ids, KV payload); Ray moves it to the decode replica, whose
    ``decode``/``decode_stream`` injects the KV and generates. On CPU the payload is the KV blocks'
    bytes (``workers.kv_connector``); on GPUs it is the NIXL connector's transfer parameters, and the
    blocks go engine to engine. ``generate``/``stream`` call the engine directly (tests, probes).
    A failed generation is retried up to the node's ``retries`` when no token has been streamed yet.
    """

    def __init__(self, nodes: list[tuple[dict, dict]], data_dir: str, model_dir: str | None = None):
        from workers.llm import LLMEngine

        if not nodes:
            raise ValueError("an LLMWorker serves at least one LLM node")
        self.nodes = {n.name: n for n in (node_from_json(node_json) for node_json, _ in nodes)}
        execution = nodes[0][1]
        if model_dir is None:
            raise ValueError(f"LLM nodes {sorted(self.nodes)} need model weights (model_dir)")
        self.cores = _bind_to_own_cores(execution)
        self.llm = LLMEngine(execution.get("engine_args", {}), model_dir)

    def ping(self) -> str:
        return f"llm:{'+'.join(self.nodes)}:{os.getpid()}"

    def info(self) -> list[dict[str, Any]]:
        import ray

        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return [
            {"kind": "llm", "name": name, "cores": self.cores, "node_id": node_id, **self.llm.info()}
            for name in self.nodes
        ]

    def _prompt(self, node: Any, graph_inputs: dict[str, Any], values: dict[str, Any]) -> str:
        import json

        from workers.templates import render

        if node.prompt:
            prompt = render(node.prompt, graph_inputs, values)
        else:
            prompt = json.dumps({k: render(v, graph_inputs, values) for k, v in node.inputs.items()})
        return f"{node.system}\n\n{prompt}" if node.system else prompt

    def _node(self, name: str) -> Any:
        try:
            return self.nodes[name]
        except KeyError:
            raise ValueError(f"this engine serves {sorted(self.nodes)}, not {name!r}") from None

    async def run(self, name: str, graph_inputs: dict[str, Any], *upstream: dict[str, dict]) -> dict[str, dict]:
        final: dict[str, Any] = {}
        async for item in self._call(self._node(name), graph_inputs, upstream, stream=False):
            final = item
        return final

    async def run_stream(self, name: str, graph_inputs: dict[str, Any], *upstream: dict[str, dict]):
        async for item in self._call(self._node(name), graph_inputs, upstream, stream=True):
            yield item

    async def _call(
        self,
        node: Any,
        graph_inputs: dict[str, Any],
        upstream: tuple,
        stream: bool,
        *,
        prompt: str | list[int] | None = None,
        kv_params: dict | None = None,
        detail: dict | None = None,
        started: float | None = None,
    ):
        import time

        t0 = time.perf_counter()
        started = time.time() if started is None else started
        if prompt is None:
            prompt = self._prompt(node, graph_inputs, _upstream_values(upstream))
        for attempt in range(1, node.retries + 2):
            result: dict[str, Any] = {}
            sent = False
            held, held_since = "", 0.0  # text not yet streamed: the first token goes at once, then a chunk a
            try:  # STREAM_INTERVAL_S (a Ray item and a daemon event per token cost ~1.5 ms of CPU each)
                async for delta in self.llm.deltas(
                    prompt, node.expected.output_tokens, node.temperature, result, kv_transfer_params=kv_params
                ):
                    if stream:
                        now = time.perf_counter()
                        held += delta
                        if not sent or now - held_since >= STREAM_INTERVAL_S:
                            sent = True
                            yield {"delta": held}
                            held, held_since = "", now
                if held:
                    yield {"delta": held}
                break
            except Exception as exc:  # noqa: BLE001
                if sent or attempt > node.retries or kv_params is not None:  # injected KV is used once
                    raise NodeError(node.name, f"{type(exc).__name__}: {exc}") from exc
        output = result.pop("text")
        result.pop("token_ids", None)
        result.pop("kv_transfer_params", None)
        yield {node.name: _envelope(output, started, t0, attempt, {**result, **(detail or {})})}

    # -- split requests: prefill here, decode on another replica (another node)
    async def prefill(self, name: str, graph_inputs: dict[str, Any], *upstream: dict[str, dict]) -> dict[str, Any]:
        """Compute the prompt's KV cache (one generated token) and hand it off: ``{handle, prompt_ids,
        kv, kv_bytes, kv_tokens, ...timings}``. The KV leaves this engine's shared-memory folder."""
        import time
        import uuid

        from workers.kv_connector import HANDLE_KEY, OP_KEY, handle_dir, safetensors_payload_bytes

        node = self._node(name)
        started, t0 = time.time(), time.perf_counter()
        prompt = self._prompt(node, graph_inputs, _upstream_values(upstream))
        ids, truncated = self.llm.prompt_ids(prompt, node.expected.output_tokens)
        handle = uuid.uuid4().hex
        on_cpu_connector = self.llm.kv_dir is not None
        params = {HANDLE_KEY: handle, OP_KEY: "save"} if on_cpu_connector else {"do_remote_decode": True}
        result: dict[str, Any] = {}
        try:
            async for _ in self.llm.deltas(ids, 1, node.temperature, result, kv_transfer_params=params):
                pass
        except Exception as exc:  # noqa: BLE001
            raise NodeError(node.name, f"prefill: {type(exc).__name__}: {exc}") from exc
        kv_ready_at = time.time()
        handoff: dict[str, Any] = {
            "handle": handle,
            "prompt_ids": ids,
            "truncated_tokens": truncated,
            "prefill_started_at": started,
            "prefill_service_ms": (time.perf_counter() - t0) * 1e3,
            "kv_ready_at": kv_ready_at,
            "prefill_pid": os.getpid(),
            "ttft_prefill_ms": result.get("ttft_ms"),
        }
        if self.llm.kv_dir is not None:
            folder = handle_dir(self.llm.kv_dir, handle)
            try:
                files = {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}
            except FileNotFoundError:
                files = {}
            finally:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
            handoff["kv"] = files
            handoff["kv_bytes"] = sum(
                safetensors_payload_bytes(b) for n, b in files.items() if n.endswith(".safetensors")
            )
        else:
            handoff["kv_transfer_params"] = result.get("kv_transfer_params")
            handoff["kv_bytes"] = None
        handoff["sent_at"] = time.time()
        return handoff

    def _receive(self, handoff: dict[str, Any]) -> tuple[dict | None, dict]:
        """Put a hand-off's KV where this engine's connector reads it; (kv params, transfer detail)."""
        import time

        from workers.kv_connector import HANDLE_KEY, OP_KEY, handle_dir, read_manifest, transferable_tokens

        received_at = time.time()
        if "kv" not in handoff:  # GPU connectors: the engines move the blocks themselves
            return handoff.get("kv_transfer_params"), {
                "kv_bytes": None,
                "handoff_ms": (received_at - handoff["sent_at"]) * 1e3,
            }
        if self.llm.kv_dir is None:
            raise ValueError("this engine has no KV connector: the plan did not make it a decode engine")
        folder = handle_dir(self.llm.kv_dir, handoff["handle"])
        folder.mkdir(parents=True, exist_ok=True)
        for fname, blob in handoff["kv"].items():  # the manifest last: it marks the folder complete
            if fname != "manifest.json":
                (folder / fname).write_bytes(blob)
        if "manifest.json" in handoff["kv"]:
            (folder / "manifest.json").write_bytes(handoff["kv"]["manifest.json"])
        written_at = time.time()
        block_size = self.llm.block_size
        want = transferable_tokens(len(handoff["prompt_ids"]), block_size)
        manifest = read_manifest(folder) or {}
        if int(manifest.get("num_tokens", 0)) != want:  # refuse rather than silently recompute the prefill here
            raise ValueError(
                f"KV hand-off {handoff['handle']} carries {manifest.get('num_tokens', 0)} tokens of KV; "
                f"the {len(handoff['prompt_ids'])}-token prompt needs {want} (block size {block_size})"
            )
        detail = {
            "kv_bytes": handoff["kv_bytes"],
            "kv_tokens": want,
            "kv_files": len(handoff["kv"]),
            "transfer_measured_ms": (written_at - handoff["kv_ready_at"]) * 1e3,
        }
        return {HANDLE_KEY: handoff["handle"], OP_KEY: "load"}, detail

    def _decode_detail(self, handoff: dict[str, Any], transfer: dict) -> dict[str, Any]:
        return {
            "prefill": {
                "service_ms": handoff["prefill_service_ms"],
                "started_at": handoff["prefill_started_at"],
                "finished_at": handoff["kv_ready_at"],
                "pid": handoff["prefill_pid"],
            },
            "kv_transfer": transfer,
            "prompt_tokens_prefilled": len(handoff["prompt_ids"]),
        }

    async def decode(self, name: str, handoff: dict[str, Any]) -> dict[str, dict]:
        final: dict[str, Any] = {}
        async for item in self._decode(name, handoff, stream=False):
            final = item
        return final

    async def decode_stream(self, name: str, handoff: dict[str, Any]):
        async for item in self._decode(name, handoff, stream=True):
            yield item

    async def _decode(self, name: str, handoff: dict[str, Any], stream: bool):
        import shutil
        import time

        node = self._node(name)
        started = time.time()
        try:
            kv_params, transfer = self._receive(handoff)
        except (OSError, ValueError) as exc:
            raise NodeError(node.name, f"decode: {exc}") from exc
        try:
            async for item in self._call(
                node,
                {},
                (),
                stream,
                prompt=list(handoff["prompt_ids"]),
                kv_params=kv_params,
                detail=self._decode_detail(handoff, transfer),
                started=started,
            ):
                yield item
        finally:
            if self.llm.kv_dir is not None:
                from workers.kv_connector import handle_dir

                shutil.rmtree(handle_dir(self.llm.kv_dir, handoff["handle"]), ignore_errors=True)

    async def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0) -> dict[str, Any]:
        return await self.llm.generate(prompt, max_tokens, temperature)

    async def stream(self, prompt: str, max_tokens: int, temperature: float = 0.0):
        async for delta in self.llm.stream(prompt, max_tokens, temperature):
            yield delta

    def metrics_text(self) -> str:
        """This engine's own Prometheus metrics (vLLM's ``vllm:*`` series live in this process)."""
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(REGISTRY).decode()

    async def shutdown(self) -> None:
        self.llm.shutdown()


def _bind_to_own_cores(execution: dict) -> list[int]:
    """Translate the lowering's core range (relative to the tier's cores) into this process's own CPUs.

    A Ray node of one tier is pinned to its share of the machine (``hetagent cluster up``); vLLM's
    CPU backend binds its OpenMP threads to absolute CPU ids, so "0-0" on the tier of CPU 1 must
    become "1" — binding outside the node's share would steal another tier's core."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    bind = (execution.get("env") or {}).get("VLLM_CPU_OMP_THREADS_BIND")
    if not allowed or not bind or bind in ("auto", "all") or "-" not in bind:
        return allowed
    lo, hi = (int(x) for x in bind.split("-", 1))
    cores = sorted({allowed[i % len(allowed)] for i in range(lo, hi + 1)})
    contiguous = cores == list(range(cores[0], cores[-1] + 1))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"{cores[0]}-{cores[-1]}" if contiguous else ",".join(map(str, cores))
    return cores
