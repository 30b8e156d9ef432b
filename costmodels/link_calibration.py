"""Measure the KV hand-off between two tiers of a Ray cluster: a fixed cost and a bandwidth.

The runtime moves a split request's KV cache from the prefill engine to the decode engine as
bytes through Ray's object store (``workers.actors.LLMWorker.prefill`` → ``decode``) and writes
them to the decode node's shared memory. Its cost is not the NIC's datasheet figure: it carries a
fixed part (task scheduling, serialisation, a file per layer) that dominates small prompts. This
module times that same path on a running cluster, with payloads shaped like a hand-off (one blob
per layer), and fits, by least squares over the per-size medians,

    t(bytes) = fixed_ms + bytes / (GB/s · 1e9) · 1e3

Both numbers go into the two device types' profiles (``network_gb_s`` with ``efficiency.link``
= 1, and ``efficiency.transfer_fixed_ms``), which the planner's link model reads
(``costmodels.roofline.nic_transfer_ms``). Ray is imported lazily: nothing here runs without it.
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass, field
from typing import Any

from costmodels.catalog import DeviceType

DEFAULT_SIZES_BYTES = (64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024, 16 * 1024 * 1024)
LAYER_BLOBS = 2  # the tiny model's layers: one safetensors blob per layer, as a hand-off carries


@dataclass
class LinkFit:
    src_device: str
    dst_device: str
    fixed_ms: float
    gb_s: float
    median_ms_by_bytes: dict[int, float]
    repeats: int
    samples_ms: dict[int, list[float]] = field(default_factory=dict)

    def predict_ms(self, nbytes: float) -> float:
        return self.fixed_ms + nbytes / (self.gb_s * 1e9) * 1e3

    def to_json(self) -> dict[str, Any]:
        return {
            "src_device": self.src_device,
            "dst_device": self.dst_device,
            "fixed_ms": self.fixed_ms,
            "gb_s": self.gb_s,
            "repeats": self.repeats,
            "median_ms_by_bytes": {str(k): v for k, v in self.median_ms_by_bytes.items()},
        }


def fit_link(median_ms_by_bytes: dict[int, float]) -> tuple[float, float]:
    """(fixed ms, GB/s) by ordinary least squares of time on bytes; the intercept is clipped at 0."""
    xs = list(median_ms_by_bytes)
    ys = [median_ms_by_bytes[x] for x in xs]
    if len(xs) < 2:
        raise ValueError("a link fit needs at least two payload sizes")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx  # ms per byte
    if slope <= 0:
        raise ValueError(f"transfer time does not grow with size ({median_ms_by_bytes}); more repeats are needed")
    fixed = max(0.0, my - slope * mx)
    return fixed, 1.0 / (slope * 1e-3) / 1e9


class _Sender:
    """Plays the prefill side: the engine has written the blobs to shared memory (untimed); the clock
    starts, and the sender reads them back and returns them, as ``LLMWorker.prefill`` does."""

    def send(self, nbytes: int, blobs: int) -> dict[str, Any]:
        import os
        import shutil
        import tempfile
        import time

        folder = tempfile.mkdtemp(prefix="hetagent-linkcal-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        part = os.urandom(max(1, nbytes // blobs))
        for i in range(blobs):
            with open(os.path.join(folder, f"layer{i}.safetensors"), "wb") as fh:
                fh.write(part)
        ready_at = time.time()
        kv = {}
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as fh:
                kv[name] = fh.read()
        shutil.rmtree(folder, ignore_errors=True)
        return {"ready_at": ready_at, "kv": kv}


class _Receiver:
    """Plays the decode side: writes every blob to its node's shared memory, then stops the clock."""

    def __init__(self) -> None:
        import os
        import tempfile

        self.root = tempfile.mkdtemp(prefix="hetagent-linkcal-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)

    def receive(self, handoff: dict[str, Any]) -> float:
        import os
        import shutil
        import time

        folder = os.path.join(self.root, "h")
        os.makedirs(folder, exist_ok=True)
        for name, blob in handoff["kv"].items():
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(blob)
        done = time.time()
        shutil.rmtree(folder, ignore_errors=True)
        ready_at: float = handoff["ready_at"]
        return (done - ready_at) * 1e3

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


def measure_link(
    src_device: str,
    dst_device: str,
    *,
    sizes_bytes: tuple[int, ...] = DEFAULT_SIZES_BYTES,
    repeats: int = 15,
    blobs: int = LAYER_BLOBS,
) -> LinkFit:
    """Time hand-offs from a ``device:<src>`` node to a ``device:<dst>`` node of the connected Ray cluster.

    The clock starts when the sender's payload is ready (as the prefill's KV is) and stops when the
    receiver has written every blob to its shared memory (as the decode side does before the engine
    reads them), so the figure is the one the runtime reports as a hand-off's ``measured_ms``."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("connect to the Ray cluster first (hetagent calibrate --kv-transfer --address ...)")
    # actor handles: Ray types `handle.method.remote(...)` only for methods decorated with @ray.method
    sender: Any = ray.remote(_Sender).options(num_cpus=0, resources={f"device:{src_device}": 0.001}).remote()
    receiver: Any = ray.remote(_Receiver).options(num_cpus=0, resources={f"device:{dst_device}": 0.001}).remote()
    try:
        ray.get(receiver.receive.remote(sender.send.remote(1024, blobs)), timeout=120)  # warm both workers
        samples: dict[int, list[float]] = {}
        for nbytes in sizes_bytes:
            samples[nbytes] = [
                float(ray.get(receiver.receive.remote(sender.send.remote(nbytes, blobs)), timeout=120))
                for _ in range(repeats)
            ]
        ray.get(receiver.close.remote())
    finally:
        ray.kill(sender)
        ray.kill(receiver)
    medians = {n: statistics.median(v) for n, v in samples.items()}
    fixed, gb_s = fit_link(medians)
    return LinkFit(src_device, dst_device, fixed, gb_s, medians, repeats, samples)


def apply_link_fit(device: DeviceType, fit: LinkFit, when: dt.date | None = None) -> DeviceType:
    """``device`` with its scale-out link replaced by the measured hand-off (sources say how)."""
    day = (when or dt.date.today()).isoformat()
    how = (
        f"measured by hetagent calibrate --kv-transfer on {day}: Ray object-store hand-off "
        f"{fit.src_device} -> {fit.dst_device} (payload of {LAYER_BLOBS} blobs, written to the receiver's "
        f"/dev/shm), sizes {', '.join(f'{n // 1024} KiB' for n in fit.median_ms_by_bytes)}, median of "
        f"{fit.repeats} each, least-squares fit t = fixed + bytes / bandwidth"
    )
    sources = {
        **device.sources,
        "network_gb_s": how,
        "efficiency.link": how + " (bandwidth is the achieved figure)",
        "efficiency.transfer_fixed_ms": how,
    }
    efficiency = device.efficiency.model_copy(update={"link": 1.0, "transfer_fixed_ms": round(fit.fixed_ms, 4)})
    return device.model_copy(update={"network_gb_s": round(fit.gb_s, 4), "efficiency": efficiency, "sources": sources})
