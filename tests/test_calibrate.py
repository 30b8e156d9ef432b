"""CPU calibration and the offline tiny model (torch + transformers; no network)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from costmodels.calibrate import calibrate_cpu, model_spec_from_dir, write_profile  # noqa: E402
from costmodels.catalog import DeviceClass, load_catalog, load_device_profile, repo_configs_dir  # noqa: E402
from costmodels.tiny_model import build_tiny_model, default_tiny_model_dir  # noqa: E402

# The catalog entry `tiny-llama` (configs/models) that the built model must match.
TINY_LLAMA = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 32,
    "vocab_size": 2048,
    "max_position_embeddings": 4096,
}


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir) -> Path:
    return tiny_model_dir  # the session's cached build (tests/conftest.py)


@pytest.fixture(scope="module")
def calibrated(tiny_model):
    t0 = time.perf_counter()
    device, raw = calibrate_cpu(name="local-cpu", quick=True, model_dir=tiny_model)
    return device, raw, time.perf_counter() - t0


def test_tiny_model_matches_catalog_entry(tiny_model):
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    for key, value in TINY_LLAMA.items():
        assert cfg[key] == value, key
    assert cfg["dtype"] == "float32"
    spec = model_spec_from_dir(tiny_model)
    assert spec.dtype == "fp32" and spec.head_dim == 32 and spec.kv_heads == 4
    assert 800_000 < spec.parameters < 900_000

    catalog = load_catalog()
    if "tiny-llama" in catalog.models:  # the shipped entry must describe the same architecture
        entry = catalog.model("tiny-llama")
        for field in (
            "layers",
            "hidden_size",
            "heads",
            "kv_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
            "dtype",
        ):
            assert getattr(entry, field) == getattr(spec, field), field
        assert entry.max_context_tokens == cfg["max_position_embeddings"]
        assert entry.parameters == spec.parameters


def test_tiny_tokenizer_round_trips(tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    text = "def hello(world):\n    return 1  # ünïcode ✓"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert all(0 <= i < TINY_LLAMA["vocab_size"] for i in ids)
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_build_twice_reuses_cache(tiny_model):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_model.iterdir()}
    t0 = time.perf_counter()
    assert build_tiny_model(tiny_model) == tiny_model
    assert time.perf_counter() - t0 < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in tiny_model.iterdir()} == before


def test_default_tiny_model_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HETAGENT_DATA_DIR", str(tmp_path))
    assert default_tiny_model_dir() == tmp_path / "models" / "tiny-llama"
    monkeypatch.delenv("HETAGENT_DATA_DIR")
    assert default_tiny_model_dir() == Path(".hetagent") / "models" / "tiny-llama"


def test_build_rejects_small_head_dim(tmp_path):
    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_model(tmp_path / "bad", hidden=64, heads=4)


def test_quick_calibration_is_plausible(calibrated):
    device, raw, _ = calibrated  # its duration is bench material, not a pass/fail check (a shared machine)
    assert device.name == "local-cpu" and device.device_class is DeviceClass.cpu
    assert device.max_devices_per_node == 1 and device.cores >= 1
    per_core = device.peak_flops("fp32") / device.cores
    assert 1e9 / 2 < per_core < 50e12 / 2  # 1 GFLOP/s < matmul < 50 TFLOP/s per 2 cores
    assert device.peak_flops("bf16") >= device.peak_flops("fp32") * 0.999  # bf16 recorded only if faster
    assert 1 < device.memory_bandwidth_gb_s < 500
    assert 0.01 < device.network_gb_s < 500
    assert 0 < device.memory_gib < 65536
    assert device.tdp_w > 0 and device.price_usd_per_h > 0
    assert device.efficiency.compute == 1.0 and device.efficiency.memory == 1.0
    assert 0 <= device.efficiency.fixed_overhead_ms < 1000
    m = raw["tiny_model"]
    assert m["prefill_ms_measured"] > 0 and m["decode_step_ms_measured"] > 0
    assert m["prefill_ms_roofline"] > 0 and m["decode_step_ms_roofline"] > 0


def test_every_number_has_a_source(calibrated):
    device, _, _ = calibrated
    numbers = [
        "memory_gib",
        "memory_bandwidth_gb_s",
        "intra_node_link_gb_s",
        "network_gb_s",
        "max_devices_per_node",
        "cores",
        "tdp_w",
        "price_usd_per_h",
    ]
    numbers += [f"peak_tflops.{k}" for k in device.peak_tflops]
    numbers += [f"efficiency.{k}" for k in ("compute", "memory", "link", "fixed_overhead_ms")]
    for key in numbers:
        assert key in device.sources, key
    measured = [v for v in device.sources.values() if v.startswith("measured by hetagent calibrate on ")]
    assert len(measured) >= 10
    assert device.sources["price_usd_per_h"].startswith("estimate")


def test_profile_round_trips_and_overrides_catalog(calibrated, tmp_path):
    device, _, _ = calibrated
    path = write_profile(device, tmp_path / "profiles" / "local-cpu.yaml")
    assert load_device_profile(path) == device

    catalog = load_catalog(profiles=tmp_path / "profiles")
    assert catalog.device("local-cpu") == device
    shipped = load_catalog(profiles=tmp_path / "no-profiles")
    if "local-cpu" in shipped.hardware:
        assert shipped.device("local-cpu") != device  # the profile, not the shipped estimate, won


def test_shipped_local_cpu_entry_loads():
    path = repo_configs_dir() / "hardware" / "local-cpu.yaml"
    if not path.exists():
        pytest.skip("configs/hardware/local-cpu.yaml not shipped")
    dev = load_device_profile(path)
    assert dev.name == "local-cpu" and dev.device_class is DeviceClass.cpu
    assert all(k in dev.sources for k in ("memory_bandwidth_gb_s", "efficiency.fixed_overhead_ms"))


def test_other_load_tells_this_process_tree_from_other_cpu_users():
    """A child spinning ~0.6 CPU-s: with ``tree=True`` it is ours (own_cpu_s), without it is another process's."""
    import subprocess
    import sys

    from costmodels.calibrate import OtherLoad

    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    with OtherLoad(tree=True) as ours:
        subprocess.run([sys.executable, "-c", spin], check=True)
    with OtherLoad(tree=False) as other:
        subprocess.run([sys.executable, "-c", spin], check=True)
    assert ours.own_cpu_s is not None and ours.own_cpu_s >= 0.55  # the waited-for child counts in the tree
    assert other.own_cpu_s is not None and other.own_cpu_s < 0.3  # this process alone barely ran
    assert other.fraction is not None and other.fraction > 0.1  # the child's spin is another's CPU here
    for load in (ours, other):
        assert load.steal_fraction is not None and 0.0 <= load.steal_fraction <= 1.0
