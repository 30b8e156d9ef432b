"""Measured profiles: importers (Vidur, Mélange), the store, interpolation, and plans that name their sources."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.ir import compile_graph
from compiler.spec import parse_graph
from costmodels.catalog import ClusterInventory, DevicePool, load_catalog, load_cluster
from costmodels.profile_import import import_melange, import_vidur
from costmodels.profiles import (
    ProfileError,
    ProfileFile,
    ProfileStore,
    RateRow,
    StepRow,
    load_profiles,
    write_profile_file,
)
from planner.evaluate import check_plan
from planner.pipeline import plan_spec
from planner.place import PlanOptions

ROOT = Path(__file__).resolve().parent.parent
CAT = load_catalog()
DERIVED = ROOT / "configs" / "profiles" / "a100_vidur_derived.csv"
SHARED = ROOT.parent / "shared" / "reference"
TINY = Path(__file__).parent / "data" / "melange_tiny.json"
VIDUR_MODELS = {"Llama-2-7b-hf": "llama-2-7b", "Meta-Llama-3-8B": "llama-3.1-8b-instruct"}
SKIP_70B = {"Llama-2-70b-hf", "Meta-Llama-3-70B"}


def _derived_rows() -> list[dict[str, str]]:
    with DERIVED.open() as fh:
        return [r for r in csv.DictReader(fh) if r["model"] in VIDUR_MODELS]


def _store(*files: tuple[str, ProfileFile]) -> ProfileStore:
    return ProfileStore(dict(files), CAT)


def _steps(rows: list[tuple[int, int, float]], phase: str = "decode") -> ProfileFile:
    return ProfileFile(
        kind="step-latency",
        command="test",
        source="hand-made",
        steps=[
            StepRow(
                device="a100-80g", model="llama-2-7b", phase=phase, tensor_parallel=1, batch=b, tokens=t, latency_ms=ms
            )
            for b, t, ms in rows
        ],
    )


# ----------------------------------------------------------------------------- Vidur


def test_vidur_derived_table_round_trips_through_the_store(tmp_path):
    """Every row of the shipped derived table comes back exactly from a written and re-read profile."""
    profile = import_vidur(DERIVED, CAT, devices={"a100": "a100-80g"}, models=VIDUR_MODELS, skip_models=SKIP_70B)
    write_profile_file(profile, tmp_path / "vidur.json")
    store = load_profiles(tmp_path, CAT)
    rows = _derived_rows()
    assert len(rows) == 26 and len(profile.steps) == 26
    for r in rows:
        model = VIDUR_MODELS[r["model"]]
        if r["phase"] == "prefill":
            got = store.step_ms("a100-80g", model, "prefill", 1, 1, int(r["prompt_len"]))
        else:
            got = store.step_ms("a100-80g", model, "decode", 1, int(r["batch"]), int(r["ctx_len"]))
        assert got == (pytest.approx(float(r["total_ms"]), abs=1e-9), "profile:vidur.json"), r


def test_vidur_derived_table_needs_every_model_mapped_or_skipped():
    with pytest.raises(ProfileError, match="Llama-2-70b-hf, Meta-Llama-3-70B not mapped"):
        import_vidur(DERIVED, CAT, devices={"a100": "a100-80g"}, models=VIDUR_MODELS)
    with pytest.raises(ProfileError, match="no SKU named h100"):
        import_vidur(DERIVED, CAT, devices={"a100": "a100-80g", "h100": "h100-sxm"}, models={}, skip_models=SKIP_70B)
    with pytest.raises(ProfileError, match="has no total_ms"):  # the 70B rows have no attention data
        import_vidur(
            DERIVED,
            CAT,
            devices={"a100": "a100-80g"},
            models={**VIDUR_MODELS, "Llama-2-70b-hf": "llama-3.1-70b-instruct"},
            skip_models={"Meta-Llama-3-70B"},
        )


@pytest.mark.skipif(
    not (SHARED / "gpu-profiles" / "a100").is_dir(), reason="../shared/reference/gpu-profiles (Vidur's raw CSVs) absent"
)
def test_vidur_operator_csvs_give_the_reference_derivation():
    """From Vidur's raw mlp.csv and attention rows, the importer's steps equal the derivation the reference
    folder's own script wrote into a100_derived.csv, at every point that was measured (not extrapolated)."""
    root = SHARED / "gpu-profiles"
    profile = import_vidur(root, CAT, devices={"a100": "a100-80g"}, models=VIDUR_MODELS, skip_models=SKIP_70B)
    store = _store(("v.json", profile))
    checked = 0
    with (root / "a100_derived.csv").open() as fh:
        for r in csv.DictReader(fh):
            if r["model"] not in VIDUR_MODELS or not r["total_ms"] or "extrapolated" in r["note"]:
                continue
            model = VIDUR_MODELS[r["model"]]
            if r["phase"] == "prefill":
                got = store.step_ms("a100-80g", model, "prefill", 1, 1, int(r["prompt_len"]))
            else:
                got = store.step_ms("a100-80g", model, "decode", 1, int(r["batch"]), int(r["ctx_len"]))
            assert got is not None and got[0] == pytest.approx(float(r["linear_ms"]) + float(r["attn_ms"]), rel=1e-6)
            checked += 1
    assert checked == 22  # 26 rows, less Llama-2's four at a 4,096-token cache (extrapolated from 4,032)
    # Llama-2's attention was measured up to a 4,032-token cache: 4,096 is outside, so the roofline answers there
    assert store.step_ms("a100-80g", "llama-2-7b", "decode", 1, 8, 4096) is None
    with pytest.raises(ProfileError, match="n_kv_head"):  # Llama-3-8B's profile is not Llama-2-7B's
        import_vidur(
            root,
            CAT,
            devices={"a100": "a100-80g"},
            models={"Llama-2-7b-hf": "llama-2-7b", "Meta-Llama-3-8B": "llama-2-7b"},
            skip_models=SKIP_70B,
        )


# ----------------------------------------------------------------------------- interpolation


def test_interpolation_is_exact_at_points_monotone_between_and_none_outside():
    store = _store(("h.json", _steps([(1, 1000, 10.0), (1, 4000, 20.0), (8, 1000, 16.0), (8, 4000, 40.0)])))

    def at(b: float, t: float) -> float | None:
        found = store.step_ms("a100-80g", "llama-2-7b", "decode", 1, b, t)  # type: ignore[arg-type]
        return None if found is None else found[0]

    for b, t, ms in [(1, 1000, 10.0), (1, 4000, 20.0), (8, 1000, 16.0), (8, 4000, 40.0)]:
        assert at(b, t) == ms
    # linear in log(tokens): 2,000 is halfway between 1,000 and 4,000 on that scale → the mean, by hand
    assert at(1, 2000) == pytest.approx(15.0)
    assert at(math.sqrt(8), 1000) == pytest.approx(13.0)  # halfway between batch 1 and 8 in log(batch)
    assert at(math.sqrt(8), 2000) == pytest.approx((15.0 + 28.0) / 2)
    series = [at(1, 1000 * 4 ** (i / 40)) for i in range(41)]
    assert all(a is not None and b is not None and a <= b for a, b in zip(series, series[1:], strict=False))
    assert all(10.0 <= (v or 0) <= 20.0 for v in series)
    for b, t in [(1, 999), (1, 4001), (16, 1000), (0.5, 1000)]:
        assert at(b, t) is None
    assert store.step_ms("a100-80g", "llama-2-7b", "decode", 2, 1, 1000) is None  # another TP degree: not covered
    assert store.step_ms("l4", "llama-2-7b", "decode", 1, 1, 1000) is None


def test_ragged_rows_interpolate_within_each_row():
    """Measurement grids are ragged (Vidur's Llama-2 file has kv 3968 only at batch 128): a row's own points count."""
    store = _store(("r.json", _steps([(1, 1000, 10.0), (1, 4000, 20.0), (8, 1000, 16.0), (8, 3000, 30.0)])))
    assert store.step_ms("a100-80g", "llama-2-7b", "decode", 1, 1, 3000)[0] == pytest.approx(  # type: ignore[index]
        10.0 + 10.0 * math.log(3) / math.log(4)
    )
    assert store.step_ms("a100-80g", "llama-2-7b", "decode", 1, 8, 3500) is None  # beyond batch 8's last point
    assert store.step_ms("a100-80g", "llama-2-7b", "decode", 1, 4, 3500) is None  # needs both rows


def test_a_request_rate_of_zero_is_not_interpolated_away():
    rows = [(25, 25, 8.0), (25, 100, 0.0), (100, 25, 4.0), (100, 100, 2.0)]
    profile = ProfileFile(
        kind="request-rate",
        command="test",
        source="hand-made",
        rates=[
            RateRow(device="l4", model="llama-2-7b", tpot_slo_ms=40, input_tokens=i, output_tokens=o, max_req_per_s=r)
            for i, o, r in rows
        ],
    )
    store = _store(("m.json", profile))
    [at_point] = store.request_rates("l4", "llama-2-7b", 100, 100)
    assert (at_point.max_req_per_s, at_point.tpot_slo_ms, at_point.source) == (2.0, 40, "profile:m.json")
    assert store.request_rates("l4", "llama-2-7b", 25, 50)[0].max_req_per_s == 0.0  # next to a "cannot"
    assert store.request_rates("l4", "llama-2-7b", 50, 25)[0].max_req_per_s == pytest.approx(6.0)  # log midpoint
    assert store.request_rates("l4", "llama-2-7b", 200, 25) == []


def test_store_errors_are_clear(tmp_path):
    bad = _steps([(1, 1000, 10.0)]).model_copy(
        update={
            "steps": [
                StepRow(
                    device="a100-81g",
                    model="llama-2-7b",
                    phase="decode",
                    tensor_parallel=1,
                    batch=1,
                    tokens=1000,
                    latency_ms=1.0,
                )
            ]
        }
    )
    with pytest.raises(ProfileError, match="unknown device type 'a100-81g'"):
        _store(("bad.json", bad))
    with pytest.raises(ProfileError, match="a.json and b.json both cover"):
        _store(("a.json", _steps([(1, 1000, 10.0)])), ("b.json", _steps([(1, 1000, 11.0)])))
    with pytest.raises(ProfileError, match="does not exist"):
        load_profiles(tmp_path / "nowhere", CAT)
    with pytest.raises(ProfileError, match="holds no"):
        load_profiles(tmp_path, CAT)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not JSON"):
        load_profiles(tmp_path, CAT)
    (tmp_path / "x.json").write_text(json.dumps({"kind": "step-latency", "command": "", "source": "", "extra": 1}))
    with pytest.raises(ProfileError, match="extra: Extra inputs are not permitted"):
        load_profiles(tmp_path, CAT)


# ----------------------------------------------------------------------------- Mélange


def test_melange_import_maps_every_gpu_and_reads_the_cells():
    profile = import_melange(
        TINY,
        CAT,
        model="llama-2-7b",
        devices={"Small": "a10g", "Big": "a100-80g"},
        input_tokens=[100, 2000],
        output_tokens=[100],
    )
    cells = {(r.device, r.input_tokens, r.output_tokens): (r.max_req_per_s, r.tpot_slo_ms) for r in profile.rates}
    assert cells == {
        ("a10g", 100, 100): (4.0, 100),
        ("a10g", 2000, 100): (0.2, 100),
        ("a100-80g", 100, 100): (10.0, 100),
        ("a100-80g", 2000, 100): (5.0, 100),
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"devices": {"Small": "a10g"}}, "GPU Big not mapped"),
        ({"devices": {"Small": "a10g", "Big": "a100-80g", "Huge": "h100-sxm"}}, "no GPU named Huge"),
        ({"devices": {"Small": "a10g", "Big": "a100-81g"}}, "unknown device type 'a100-81g'"),
        ({"model": "llama-9"}, "unknown model 'llama-9'"),
        ({"input_tokens": [100, 1000, 2000]}, "2 tputs rows, but 3 input bucket sizes"),
        ({"output_tokens": [100, 200]}, "row 0 has 1 cells, but 2 output bucket sizes"),
        ({"tpot_slo_ms": 40.0}, "the input says tpot_slo_ms 100, the option 40"),
        ({"case": "arena"}, "holds one input"),
    ],
)
def test_melange_import_refuses_what_it_cannot_map(changes, message):
    args = dict(
        model="llama-2-7b", devices={"Small": "a10g", "Big": "a100-80g"}, input_tokens=[100, 2000], output_tokens=[100]
    )
    with pytest.raises((ProfileError, ValueError), match=message):
        import_melange(TINY, CAT, **{**args, **changes})  # type: ignore[arg-type]


def test_melange_import_needs_the_slo_when_the_file_has_none(tmp_path):
    bare = json.loads(TINY.read_text())["config"]
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    args = dict(model="llama-2-7b", devices={"Small": "a10g", "Big": "a100-80g"}, input_tokens=[100, 2000])
    with pytest.raises(ProfileError, match="give --tpot-ms"):
        import_melange(tmp_path / "bare.json", CAT, output_tokens=[100], **args)  # type: ignore[arg-type]
    profile = import_melange(tmp_path / "bare.json", CAT, output_tokens=[100], tpot_slo_ms=120, **args)  # type: ignore[arg-type]
    assert {r.tpot_slo_ms for r in profile.rates} == {120}


@pytest.mark.skipif(not (SHARED / "melange").is_dir(), reason="../shared/reference/melange (Mélange inputs) absent")
def test_melange_reconstructed_cells_match_the_long_table():
    """The importer's cells equal profiles.csv, the same numbers in long form (0 where the JSON writes 1e-9)."""
    ref = SHARED / "melange"
    gpus = {"L4": "l4", "A10G": "a10g", "A100-80GB": "a100-80g", "H100-80GB": "h100-sxm"}
    profile = import_melange(
        ref / "melange_inputs_reconstructed.json",
        CAT,
        model="llama-2-7b",
        devices=gpus,
        case="arena_40ms",
        input_tokens=[25, 100, 250, 500, 1000, 2000, 4000],
        output_tokens=[25, 100, 250, 500, 1000, 2000],
    )
    got = {(r.device, r.input_tokens, r.output_tokens): r.max_req_per_s for r in profile.rates}
    with (ref / "profiles.csv").open() as fh:
        want = {
            (gpus[r["gpu"]], int(r["input_tokens"]), int(r["output_tokens"])): float(r["max_req_per_s"])
            for r in csv.DictReader(fh)
            if r["tpot_slo_ms"] == "40"
        }
    assert got.keys() == want.keys() and len(got) == 168
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-3), key


# ----------------------------------------------------------------------------- plans name their sources


def _llm_spec(model: str = "llama-2-7b", input_tokens: int = 512, output_tokens: int = 1024) -> dict:
    return {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "AgentGraph",
        "metadata": {"name": "one-llm"},
        "spec": {
            "sla": {"e2e_ms": 600_000},
            "nodes": [
                {
                    "name": "answer",
                    "kind": "llm",
                    "model": model,
                    "expected": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                }
            ],
        },
    }


A100_HOST = ClusterInventory(
    name="a100-host",
    devices=[DevicePool(type="a100-80g", count=8, per_node=8), DevicePool(type="xeon-8592", count=2, per_node=2)],
)


def test_a_plan_names_the_profile_for_covered_ops_and_the_roofline_for_the_rest(tmp_path):
    """Llama-2-7B, 512-token prompts, 1,024 tokens out: prefill at batch 1 and every decode batch at a mean context
    of 512 + 1024/2 = 1,024 tokens are measured points of the Vidur table on an A100 at TP 1."""
    profile = import_vidur(DERIVED, CAT, devices={"a100": "a100-80g"}, models=VIDUR_MODELS, skip_models=SKIP_70B)
    write_profile_file(profile, tmp_path / "vidur.json")
    measured = {("prefill", 1): 36.656}  # the table's Llama-2-7b-hf rows, read by hand
    measured |= {("decode", b): ms * 1024 for b, ms in [(1, 9.92), (8, 12.896), (32, 19.936), (128, 47.12)]}
    graph = parse_graph(_llm_spec(), CAT)
    _, granular = compile_graph(graph, CAT)
    covered_seen = 0
    for rate in (0.05, 1.0, 5.0):
        plan = plan_spec(graph, A100_HOST, PlanOptions(rate_per_s=rate, profiles_dir=tmp_path, baselines=False), CAT)
        bare = plan_spec(graph, A100_HOST, PlanOptions(rate_per_s=rate, baselines=False), CAT)
        assert plan.feasible and bare.feasible
        for o in plan.ops:
            covered = o.device == "a100-80g" and o.tensor_parallel == 1 and (o.kind, o.batch) in measured
            assert o.estimate_source == ("profile:vidur.json" if covered else "roofline"), (rate, o)
            if covered:
                covered_seen += 1
                assert o.predicted_latency_ms == pytest.approx(measured[o.kind, o.batch], rel=1e-6)
        assert {o.estimate_source for o in bare.ops} == {"roofline"}
        store = load_profiles(tmp_path, CAT)
        assert check_plan(plan, granular, CAT, A100_HOST, store) == []
        if any(o.estimate_source.startswith("profile:") for o in plan.ops):
            # checked against the roofline alone, the profile's numbers are wrong: the checker can fail
            assert any("estimate from profile:vidur.json" in v for v in check_plan(plan, granular, CAT, A100_HOST))
    assert covered_seen >= 2


def test_a_plan_on_a_calibrated_device_says_calibrated():
    """configs/hardware/local-cpu.yaml is a `hetagent calibrate` run: its ops' estimates are 'calibrated'."""
    cluster = load_cluster("local", CAT)
    graph = parse_graph(_llm_spec("tiny-llama", 64, 16), CAT)
    plan = plan_spec(graph, cluster, PlanOptions(rate_per_s=0.1, baselines=False), CAT)
    assert plan.feasible
    assert {o.device for o in plan.ops} == {"local-cpu"}
    assert {o.estimate_source for o in plan.ops} == {"calibrated"}


def _hetagent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_cli_import_then_plan_with_profiles(tmp_path):
    profiles = tmp_path / "profiles"
    r = _hetagent(
        "costmodel",
        "import",
        "--vidur",
        str(DERIVED),
        "--device",
        "a100=a100-80g",
        "--model",
        "Llama-2-7b-hf=llama-2-7b",
        "--model",
        "Meta-Llama-3-8B=llama-3.1-8b-instruct",
        "--skip",
        "Llama-2-70b-hf",
        "--skip",
        "Meta-Llama-3-70B",
        "-o",
        str(profiles),
    )
    assert r.returncode == 0, r.stderr
    written = profiles / "vidur-a100_vidur_derived.json"
    assert f"wrote {written}: 26 step-latency rows" in r.stdout
    doc = json.loads(written.read_text())
    assert doc["command"].startswith("hetagent costmodel import --vidur") and doc["source"] == str(DERIVED)
    spec = tmp_path / "one.json"
    spec.write_text(json.dumps(_llm_spec()))
    cluster = tmp_path / "c.json"
    cluster.write_text(A100_HOST.model_dump_json())
    r = _hetagent("plan", str(spec), "--cluster", str(cluster), "--profiles", str(profiles), "--format", "json")
    assert r.returncode == 0, r.stderr
    sources = {o["name"]: o["estimate_source"] for o in json.loads(r.stdout)["ops"]}
    assert sources["answer.tokenize"] == "roofline"
    assert "profile:vidur-a100_vidur_derived.json" in sources.values()
    r = _hetagent(
        "costmodel",
        "import",
        "--melange",
        str(TINY),
        "--model",
        "llama-2-7b",
        "--device",
        "Small=a10g",
        "--input-tokens",
        "100,2000",
        "--output-tokens",
        "100",
        "-o",
        str(profiles),
    )
    assert r.returncode == 2 and "GPU Big not mapped" in r.stderr
    r = _hetagent("plan", str(spec), "--cluster", str(cluster), "--profiles", str(tmp_path / "none"))
    assert r.returncode == 2 and "does not exist" in r.stderr
