"""Ways to serve the requests of one size bucket on one device type, for request-size slicing (planner/slicing.py).

One engine serves a sliced LLM node's whole requests — prefill and decode on the same devices, as Mélange
assumes. An option gives the requests/s one device sustains (μ) and the time of a request's prefill and decode:

* where a request-rate profile covers (device, model, size): μ is the table's rate under its TPOT SLO, the
  decode time is bounded by ``output_tokens × SLO``, and the prefill time (which the table does not give) is
  the step model's at batch 1 (roofline, or a step-latency profile);
* elsewhere, from the step model: for every tensor-parallel degree and pair of prefill and decode batches that
  fit in memory together (and meet the TPOT target), one replica time-shares its devices between the two
  phases, so μ = 1 / (tp · (1/μ_prefill + 1/μ_decode)).

Only accelerators are offered: CPU tiers time-share cores and hold one engine per model (see planner/ilp.py),
which request slicing does not model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from costmodels.catalog import Catalog, DeviceClass, DeviceType
from costmodels.granular import GranularOp
from costmodels.profiles import ProfileStore, estimated_configs
from costmodels.roofline import MEMORY_HEADROOM

MIN_RATE_PER_S = 1e-6  # a rate below this is "cannot serve" (Mélange's inputs write 1e-9 for that)


@dataclass(frozen=True)
class RequestOption:
    """One way to serve requests of one size on one device type."""

    device: str
    tensor_parallel: int  # devices per engine
    batch: int | None  # decode batch (None: a request-rate profile, whose batching is the engine's own)
    rate_per_device: float  # requests/s one device sustains (μ)
    prefill_ms: float  # time of one request's prefill
    decode_ms: float  # time of one request's decode (all output tokens)
    memory_bytes: float  # per device: weights and both phases' KV (a request-rate profile: the weights only)
    prefill_source: str
    decode_source: str  # also the source of rate_per_device
    tpot_slo_ms: float | None = None  # the SLO of a request-rate profile


def _pareto(options: list[RequestOption]) -> list[RequestOption]:
    """Drop an option another on the same device beats on rate, prefill and decode time at once."""

    def key(o: RequestOption) -> tuple[float, float, float]:
        return (-o.rate_per_device, o.prefill_ms, o.decode_ms)

    keep = []
    for i, o in enumerate(options):
        k = key(o)
        beaten = any(
            j != i and all(a <= b for a, b in zip(key(q), k, strict=True)) and (key(q) != k or j < i)
            for j, q in enumerate(options)
        )
        if not beaten:
            keep.append(o)
    return keep


def request_options(
    prefill: GranularOp,
    decode: GranularOp,
    device: DeviceType,
    catalog: Catalog,
    *,
    input_tokens: int,
    output_tokens: int,
    tpot_ms: float | None,
    per_node: int | None = None,
    store: ProfileStore | None = None,
) -> list[RequestOption]:
    """The non-dominated options for requests of (input_tokens, output_tokens) on ``device`` (may be empty)."""
    if device.device_class is DeviceClass.cpu:
        return []
    pre = replace(prefill, input_tokens=input_tokens, output_tokens=output_tokens)
    dec = replace(decode, input_tokens=input_tokens, output_tokens=output_tokens)
    pre_cfgs = estimated_configs(pre, device, catalog, per_node=per_node, store=store)
    weights = catalog.model(decode.model or "").weight_bytes
    rates = [
        r
        for r in (store.request_rates(device.name, decode.model or "", input_tokens, output_tokens) if store else [])
        if tpot_ms is None or r.tpot_slo_ms <= tpot_ms  # a table under a tighter SLO also meets a looser one
    ]
    if rates:  # the profile covers this size: it decides, the step model only times the prefill
        first = min((c for c in pre_cfgs if c.batch == 1), key=lambda c: c.latency_ms, default=None)
        out = [
            RequestOption(
                device=device.name,
                tensor_parallel=1,
                batch=None,
                rate_per_device=r.max_req_per_s,
                prefill_ms=first.latency_ms if first else 0.0,
                decode_ms=output_tokens * r.tpot_slo_ms,
                memory_bytes=weights,
                prefill_source=first.estimate_source if first else r.source,
                decode_source=r.source,
                tpot_slo_ms=r.tpot_slo_ms,
            )
            for r in rates
            if r.max_req_per_s >= MIN_RATE_PER_S
        ]
        return _pareto(out)
    dec_cfgs = estimated_configs(dec, device, catalog, per_node=per_node, store=store)
    out = []
    for pc in pre_cfgs:
        for dc in dec_cfgs:
            if pc.tensor_parallel != dc.tensor_parallel:
                continue
            if tpot_ms is not None and dc.latency_ms / output_tokens > tpot_ms:
                continue
            tp = dc.tensor_parallel
            memory = pc.memory_bytes + dc.memory_bytes - weights / tp
            if memory > device.memory_bytes * MEMORY_HEADROOM:
                continue  # one engine holds the weights once and both phases' KV caches
            busy_s = 1.0 / pc.throughput_per_replica + 1.0 / dc.throughput_per_replica
            out.append(
                RequestOption(
                    device=device.name,
                    tensor_parallel=tp,
                    batch=dc.batch,
                    rate_per_device=1.0 / (tp * busy_s),
                    prefill_ms=pc.latency_ms,
                    decode_ms=dc.latency_ms,
                    memory_bytes=memory,
                    prefill_source=pc.estimate_source,
                    decode_source=dc.estimate_source,
                )
            )
    return _pareto(out)
