"""The cost model's latency of one LLM request for the model a worker actually serves.

A development machine serves a stand-in checkpoint (the offline tiny model on ``local``) where the plan
names another model; the plan's predictions are for the plan's model and stay as they are. To compare a
run's measured LLM latency with the cost model, the runtime re-predicts each LLM request for the served
model (its ``ModelSpec`` read from the checkpoint's config.json, ``calibrate.model_spec_from_dir``) on the
device it ran on, with the request's real prompt and output token counts, through the planner's own
configurations (``roofline.op_configs``) at batch 1 (one request per call).

What a vLLM request runs: one prefill step over the prompt, which yields the first token, then one decode
step per further token, so ``output_tokens − 1`` decode steps over contexts P+1 … P+N−1. Tokenisation and
detokenisation happen inside the engine's request and are part of those measured times; they are not
priced again here (on a CPU device the roofline would add the per-step ``fixed_overhead_ms`` to each).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from costmodels.catalog import Catalog, DeviceType, ModelSpec
from costmodels.granular import GranularOp
from costmodels.roofline import op_configs


@dataclass(frozen=True)
class RequestPrediction:
    """Predicted time of one LLM request's phases, ms, for ``model`` on ``device`` at batch 1."""

    model: str
    device: str
    prompt_tokens: int
    output_tokens: int
    prefill_ms: float  # the prefill step (the first token)
    decode_ms: float  # the output_tokens − 1 decode steps

    @property
    def total_ms(self) -> float:
        return self.prefill_ms + self.decode_ms


def served_model_spec(model_dir: Path) -> ModelSpec:
    """The ``ModelSpec`` of a served checkpoint, named after its folder (e.g. ``tiny-llama``)."""
    from costmodels.calibrate import model_spec_from_dir

    name = re.sub(r"[^a-z0-9.\-]+", "-", Path(model_dir).name.lower()).strip("-.") or "served-model"
    return model_spec_from_dir(Path(model_dir), name=name)


def _batch1_ms(op: GranularOp, device: DeviceType, catalog: Catalog) -> float:
    configs = [c for c in op_configs(op, device, catalog) if c.batch == 1 and c.tensor_parallel == 1]
    if not configs:
        raise ValueError(f"{op.model} cannot run a {op.kind} of {op.input_tokens} tokens on {device.name}")
    return configs[0].latency_ms


def predict_request(model: ModelSpec, device: DeviceType, prompt_tokens: int, output_tokens: int) -> RequestPrediction:
    """Prefill and decode time of one request of ``prompt_tokens`` in, ``output_tokens`` out (batch 1)."""
    if prompt_tokens < 1 or output_tokens < 1:
        raise ValueError(
            f"a request has at least one prompt and one output token, got {prompt_tokens}, {output_tokens}"
        )
    catalog = Catalog(hardware={device.name: device}, models={model.name: model})
    prefill = GranularOp(
        name="request.prefill", kind="prefill", source_node="request", model=model.name, input_tokens=prompt_tokens
    )
    decode_ms = 0.0
    if output_tokens > 1:
        decode = GranularOp(
            name="request.decode",
            kind="decode",
            source_node="request",
            model=model.name,
            input_tokens=prompt_tokens + 1,
            output_tokens=output_tokens - 1,
        )
        decode_ms = _batch1_ms(decode, device, catalog)
    return RequestPrediction(
        model=model.name,
        device=device.name,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        prefill_ms=_batch1_ms(prefill, device, catalog),
        decode_ms=decode_ms,
    )
