"""Measure prefill and decode steps (and attention apart) with PyTorch on this machine's GPU (or CPU) into a
step profile that `hetagent costmodel check --profiles` and `--fit` read (format: costmodels/check.py).

    python bench/gpu_profile.py --out configs/profiles/h200_torch.csv       # one GPU, about 2-3 minutes
    python bench/gpu_profile.py --device cpu --quick --out /tmp/cpu.csv     # tiny shapes, seconds (the test)

On CUDA: Llama-2-7B and Llama-3-8B layer shapes (2 layers built, times scaled to 32), bf16, prefill of
128…4096 tokens at batch 1 and decode of batch 1…128 at context 1024/4096, each timed as the layers without
attention, their GEMMs alone and attention alone (CUDA graphs, CUDA events; costmodels/step_profile.py). The
file's header holds the command line and the machine. Then fit the device's efficiencies:

    hetagent costmodel check --profiles configs/profiles/h200_torch.csv --device h200-sxm --fit

Needs only torch (no vLLM, no pydantic).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from costmodels import step_profile as S  # noqa: E402

GPU_SKUS = (("H200", "h200-sxm"), ("H100", "h100-sxm"), ("A100", "a100-80g"), ("L40S", "l40s"), ("L4", "l4"))


def _sku(device: str) -> str:
    import torch

    if not device.startswith("cuda"):
        return "local-cpu"
    name = torch.cuda.get_device_name(device)
    for key, sku in GPU_SKUS:
        if key in name:
            return sku
    raise SystemExit(f"no catalog id known for {name!r}: pass --sku")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few points (a test on a CPU)")
    p.add_argument("--dtype", choices=sorted(S.DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--sku", default=None, help="catalog device id of the rows (default: from the device name)")
    p.add_argument("--out", type=Path, required=True, help="profile CSV to write")
    a = p.parse_args(argv)
    import torch

    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --device cpu")
    grid = S.GRIDS["quick" if a.quick else ("cuda" if cuda else "cpu")]
    dtype = a.dtype or ("bf16" if cuda else "fp32")
    sku = a.sku or _sku(a.device)
    rows = S.measure(grid, device=a.device, dtype=dtype, sku=sku, log=lambda m: print(m, flush=True))
    command = "python bench/gpu_profile.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    header = [
        f"command: {command}",
        S.machine_line(a.device),
        f"method: costmodels/step_profile.py; {grid.measured_layers} layers built, per-layer median of "
        f"{grid.repeats} runs x n_layers; {'CUDA graph replays, CUDA events' if cuda else 'eager, perf_counter'}; "
        "transformer layers only (no embedding, LM head or sampling); total_ms = linear_ms + attn_ms",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(S.profile_csv(rows, header))
    print(f"wrote {a.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
