"""`hetagent costmodel check`: the cost model against measured step timings, the fit, the PyTorch step profiler.

The error bounds are the issue's targets on the shipped Vidur A100 kernel timings; the fit is checked on synthetic
timings made by the equations of docs/costmodel.md written out here (not the model's code), with parameters the
catalog does not hold.
"""

import json
import math
import random
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from costmodels.catalog import load_catalog
from costmodels.check import (
    SHIPPED_PROFILES,
    VIDUR_MODELS,
    ProfileFormatError,
    ProfileRow,
    check_rows,
    load_profile_rows,
    read_profile_csv,
    summarise,
)
from costmodels.fit import fit_efficiency
from orchestrator.cli import app

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def a100_summary(catalog):
    return summarise(check_rows(load_profile_rows(SHIPPED_PROFILES, catalog), catalog))["a100-80g"]


def test_a100_prefill_and_decode_within_targets(a100_summary):
    """Issue 9's targets on the Vidur A100 data: median |error| ≤ 10% and p90 ≤ 25%, prefill and decode apart (the
    old model, attention at the GEMM efficiency and a hard max, had a prefill median of 18%: 0.82×)."""
    prefill, decode = a100_summary["prefill"], a100_summary["decode"]
    assert (prefill.n, decode.n) == (10, 16)  # Llama-2-7B and Llama-3-8B at TP 1
    assert prefill.median_abs_error <= 0.10, prefill
    assert decode.median_abs_error <= 0.10, decode
    assert prefill.p90_abs_error <= 0.25, prefill
    assert decode.p90_abs_error <= 0.25, decode
    # neither phase is biased much to one side (the old prefill median ratio was 0.82)
    assert 0.9 <= prefill.median_ratio <= 1.1 and 0.9 <= decode.median_ratio <= 1.1


def test_a100_70b_layers_without_attention(a100_summary):
    """The 70B rows time the layers without attention: the GEMM/element-wise part alone, on other shapes."""
    for phase in ("prefill_linear", "decode_linear"):
        s = a100_summary[phase]
        assert s.n >= 10 and s.median_abs_error <= 0.10 and s.p90_abs_error <= 0.25, (phase, s)


def test_cli_json_and_png(tmp_path):
    png = tmp_path / "check.png"
    result = CliRunner().invoke(app, ["costmodel", "check", "--format", "json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    a100 = doc["devices"]["a100-80g"]
    for phase, n in (("prefill", 10), ("decode", 16)):
        assert {"n", "median_abs_error", "p90_abs_error"} <= a100[phase].keys()
        assert a100[phase]["n"] == n
        assert 0 < a100[phase]["median_abs_error"] <= a100[phase]["p90_abs_error"] <= 0.25
        assert len(a100[phase]["worst"]) == 3
    assert doc["profiles"] == ["a100_vidur_derived.csv"]
    assert Path(doc["plot"]) == png
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR
    assert width >= 400 and height >= 400


def test_cli_table_device_filter_and_errors(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["costmodel", "check", "--device", "a100-80g", "--plot", str(tmp_path / "a.png")])
    assert ok.exit_code == 0, ok.output
    assert "prefill" in ok.output and "decode" in ok.output and "a100-80g" in ok.output
    none = runner.invoke(app, ["costmodel", "check", "--device", "h100-sxm", "--plot", str(tmp_path / "b.png")])
    assert none.exit_code == 2 and "no measured rows" in none.output
    unknown = runner.invoke(app, ["costmodel", "check", "--device", "nope", "--plot", str(tmp_path / "c.png")])
    assert unknown.exit_code == 2 and "unknown device type" in unknown.output
    bad = tmp_path / "bad.csv"
    bad.write_text("sku,model,phase\na100,Llama-2-7b-hf,prefill\n")
    missing = runner.invoke(app, ["costmodel", "check", "--profiles", str(bad), "--plot", str(tmp_path / "d.png")])
    assert missing.exit_code == 2 and "no column" in missing.output


def test_profile_rows_name_known_models_and_devices(tmp_path, catalog):
    header = "sku,model,phase,tp,prompt_len,batch,ctx_len,n_layers,linear_ms,attn_ms,total_ms\n"
    path = tmp_path / "p.csv"
    path.write_text("# command: by hand\n" + header + "a100,Mystery-7B,prefill,1,128,1,0,32,10,1,11\n")
    with pytest.raises(ProfileFormatError, match="unknown model 'Mystery-7B'"):
        read_profile_csv(path, catalog)
    path.write_text(header + "z100,Llama-2-7b-hf,prefill,1,128,1,0,32,10,1,11\n")
    with pytest.raises(ProfileFormatError, match="unknown device type 'z100'"):
        read_profile_csv(path, catalog)
    path.write_text(header + "a100,Llama-2-7b-hf,decode,1,0,8,1024,32,10,,\n")
    (row,) = read_profile_csv(path, catalog)
    assert (row.device, row.scope, row.measured_ms, row.group) == ("a100-80g", "linear", 10.0, "decode_linear")


# ------------------------------------------------------------------------------------------- the fit


def _synthetic_ms(row: ProfileRow, peak_flops: float, bandwidth: float, p: dict[str, float]) -> float:
    """docs/costmodel.md's equations for the layers of one step, written out independently of costmodels/."""
    m = row.spec
    h, dq, dkv, ff, n_layers, db = (
        m.hidden_size,
        m.heads * m.head_dim,
        m.kv_heads * m.head_dim,
        m.intermediate_size,
        m.layers,
        2,
    )
    tokens = row.tokens * row.batch if row.phase == "prefill" else row.batch
    weights = h * (dq + 2 * dkv) + dq * h + 3 * h * ff
    gemm_flops = 2 * tokens * weights
    gemm_bytes = (weights + tokens * (h + dq + 2 * dkv + dq + h + h + 2 * ff + ff + h)) * db
    vector_bytes = tokens * (4 * h + 2 * (dq + dkv) + 3 * ff + 3 * h) * db
    if row.phase == "prefill":
        attn_flops = 2 * row.tokens**2 * dq * row.batch
        attn_bytes = tokens * (2 * dq + 4 * dkv) * db
    else:
        attn_flops = 4 * row.tokens * dq * row.batch
        attn_bytes = row.batch * row.tokens * 2 * dkv * db + row.batch * (2 * dq + 2 * dkv) * db

    def soft(a: float, b: float) -> float:
        return (a ** p["ridge_exponent"] + b ** p["ridge_exponent"]) ** (1 / p["ridge_exponent"])

    per_layer = (
        soft(gemm_flops / (peak_flops * p["compute"]), gemm_bytes / (bandwidth * p["memory"]))
        + vector_bytes / (bandwidth * p["memory"])
        + 9 * p["kernel_overhead_us"] * 1e-6
    )
    if row.scope == "step":
        per_layer += (
            soft(attn_flops / (peak_flops * p["attention_compute"]), attn_bytes / (bandwidth * p["attention_memory"]))
            + p["kernel_overhead_us"] * 1e-6
        )
    return per_layer * n_layers * 1000


def _rows(scope_of, measured_of):
    rows = []
    for model in ("Llama-2-7b-hf", "Meta-Llama-3-8B", "Llama-2-70b-hf"):
        spec = VIDUR_MODELS[model]
        sizes = [("prefill", 1, p) for p in (64, 128, 256, 512, 1024, 2048, 4096)]
        sizes += [("decode", b, c) for b in (1, 4, 16, 64, 128, 256) for c in (512, 4096)]
        for phase, batch, tokens in sizes:
            base = ProfileRow("synthetic", "a100-80g", model, spec, phase, 1, batch, tokens, scope_of(model), 1.0)
            rows.append(
                ProfileRow("synthetic", "a100-80g", model, spec, phase, 1, batch, tokens, base.scope, measured_of(base))
            )
    return rows


def test_fit_recovers_known_parameters(catalog):
    """Timings generated with known parameters (and 1% noise) give those parameters back."""
    a100 = catalog.device("a100-80g")
    truth = {
        "compute": 0.55,
        "memory": 0.85,
        "attention_compute": 0.30,
        "attention_memory": 0.62,
        "ridge_exponent": 2.2,
        "kernel_overhead_us": 4.0,
    }
    noise = random.Random(7)
    rows = _rows(
        lambda model: "linear" if "70b" in model else "step",
        lambda r: _synthetic_ms(r, 312e12, 2039e9, truth) * math.exp(noise.gauss(0, 0.01)),
    )
    fit = fit_efficiency(rows, a100)
    got = fit.efficiency
    assert set(fit.fitted) == set(truth)
    for name, value in truth.items():
        assert getattr(got, name) == pytest.approx(value, rel=0.08), (name, got)
    assert fit.rms_log_error < 0.02


def test_fit_leaves_unmeasured_attention_alone(catalog):
    """Rows without attention (the 70B kind) cannot tell attention's efficiencies: they keep the device's."""
    a100 = catalog.device("a100-80g")
    truth = {"compute": 0.6, "memory": 0.8, "ridge_exponent": 3.0, "kernel_overhead_us": 5.0}
    truth |= {"attention_compute": 0.5, "attention_memory": 0.5}
    rows = _rows(lambda model: "linear", lambda r: _synthetic_ms(r, 312e12, 2039e9, truth))
    fit = fit_efficiency(rows, a100)
    assert "attention_compute" not in fit.fitted and "attention_memory" not in fit.fitted
    assert fit.efficiency.attention_compute == a100.efficiency.attention_compute
    assert fit.efficiency.compute == pytest.approx(0.6, rel=0.03)


# ------------------------------------------------------------------------------------------- measuring


def test_gpu_profile_script_runs_on_cpu_and_is_checked(tmp_path, catalog):
    """bench/gpu_profile.py --device cpu --quick writes a profile, with its command line, that the check reads."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_profile
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = tmp_path / "cpu.csv"
    assert gpu_profile.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(f"# command: python bench/gpu_profile.py --device cpu --quick --out {out}\n")
    rows = read_profile_csv(out, catalog)
    assert {(r.phase, r.scope, r.device) for r in rows} == {
        ("prefill", "step", "local-cpu"),
        ("decode", "step", "local-cpu"),
    }
    assert len(rows) == 4 and all(r.measured_ms > 0 for r in rows)
    summary = summarise(check_rows(rows, catalog))["local-cpu"]
    assert summary["prefill"].n == 2 and summary["decode"].n == 2


def test_cli_measures_this_cpu(tmp_path):
    png = tmp_path / "cpu.png"
    args = ["costmodel", "check", "--measure-cpu", "--quick", "--device", "local-cpu", "--format", "json"]
    result = CliRunner().invoke(app, [*args, "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc["devices"]) == {"local-cpu"}
    assert doc["devices"]["local-cpu"]["prefill"]["n"] == 2 and doc["devices"]["local-cpu"]["decode"]["n"] == 2
    assert (tmp_path / "local-cpu-steps.csv").read_text().startswith("# command: hetagent costmodel check")
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_imported_json_profiles_are_checked(tmp_path, catalog):
    """A step-latency profile of `hetagent costmodel import` (costmodels/profiles.py) is read like the CSV: a
    Vidur import ("kernel-only" in its notes) as layer sums, any other as whole steps with embedding and LM head."""
    from costmodels.profiles import ProfileFile, StepRow, write_profile_file

    step = StepRow(
        device="a100-80g",
        model="llama-3.1-8b-instruct",
        phase="prefill",
        tensor_parallel=1,
        batch=1,
        tokens=4096,
        latency_ms=304.304,
    )
    kernels = ProfileFile(kind="step-latency", command="test", source="test", notes="Vidur kernel-only", steps=[step])
    whole = ProfileFile(kind="step-latency", command="test", source="test", notes="served steps", steps=[step])
    write_profile_file(kernels, tmp_path / "kernels" / "vidur.json")
    write_profile_file(whole, tmp_path / "whole" / "served.json")
    (layers,) = check_rows(load_profile_rows(tmp_path / "kernels", catalog), catalog)
    (served,) = check_rows(load_profile_rows(tmp_path / "whole", catalog), catalog)
    assert (layers.row.scope, served.row.scope) == ("step", "full")
    # the same step as the CSV's Llama-3-8B P=4096 row (within 15%), and the LM head and embedding cost extra
    assert 0.85 <= layers.ratio <= 1.15
    assert served.predicted_ms > layers.predicted_ms
