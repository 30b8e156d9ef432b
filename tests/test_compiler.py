"""Compiler: spec → agent IR → granular IR → analysis → GranularGraph → execution configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from compiler.dialects import KVTransferOp
from compiler.ir import (
    CompileError,
    analyse,
    build_agent_module,
    compile_graph,
    decompose,
    granular_ops,
    parse_module,
    print_module,
    to_granular_graph,
)
from compiler.lowering import LoweringError, insert_kv_transfers, lower_to_execution_configs
from compiler.spec import load_graph, parse_graph
from costmodels.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent
RAG = ROOT / "examples" / "graphs" / "rag_agent.yaml"

# llama-3.1-8b: 32 layers × 8 KV heads × 128 head_dim × 2 (K and V) × 2 bytes (bf16) × 2048 prompt tokens
LLAMA8B_KV_2048_BYTES = 268_435_456


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def rag(catalog):
    return load_graph(RAG, catalog)


def multi_llm_doc() -> dict:
    """Plan → (search tool ∥ draft) → critique → final; two models, a tool and a transform."""
    return {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "AgentGraph",
        "metadata": {"name": "multi-llm"},
        "spec": {
            "sla": {"e2e_ms": 20000},
            "inputs": {"task": {"type": "string"}},
            "nodes": [
                {
                    "name": "final",
                    "kind": "transform",
                    "function": "workers.transforms:join",
                    "inputs": {"a": "{{ nodes.critique.output }}", "b": "{{ nodes.draft.output }}"},
                },
                {
                    "name": "plan",
                    "kind": "llm",
                    "model": "qwen2.5-7b-instruct",
                    "prompt": "{{ inputs.task }}",
                    "expected": {"input_tokens": 512, "output_tokens": 128},
                },
                {
                    "name": "search",
                    "kind": "tool",
                    "url": "http://search.local/q",
                    "inputs": {"q": "{{ nodes.plan.output }}"},
                    "expected": {"latency_ms": 150, "response_bytes": 8192},
                },
                {
                    "name": "draft",
                    "kind": "llm",
                    "model": "llama-3.1-70b-instruct",
                    "prompt": "{{ nodes.plan.output }} {{ nodes.search.output }}",
                    "expected": {"input_tokens": 4096, "output_tokens": 512},
                    "placement": {"allowed_devices": ["h100-sxm", "mi300x", "xeon-8592"]},
                },
                {
                    "name": "critique",
                    "kind": "llm",
                    "model": "llama-3.1-8b-instruct",
                    "prompt": "{{ nodes.draft.output }}",
                    "expected": {"input_tokens": 2048, "output_tokens": 64},
                    "placement": {"pin": "h100-sxm"},
                },
            ],
            "outputs": {"answer": "{{ nodes.final.output }}"},
        },
    }


@pytest.fixture(scope="module")
def multi(catalog):
    return parse_graph(multi_llm_doc(), catalog)


def roundtrip(module) -> str:
    text = print_module(module)
    parsed = parse_module(text)  # verifies
    assert print_module(parsed) == text
    return text


# --------------------------------------------------------------------------- build / decompose / analyse


def test_agent_module_mirrors_spec(rag, catalog):
    text = roundtrip(build_agent_module(rag, catalog))
    for op in (
        "agent.graph",
        "agent.input",
        "agent.embed",
        "agent.vector_search",
        "agent.transform",
        "agent.llm",
        "agent.output",
    ):
        assert op in text
    assert "dimension = 384 : i64" in text  # taken from bge-small's embedding size
    assert "%answer = agent.llm(%redact, %question)" in text


@pytest.mark.parametrize("which", ["rag", "multi"])
def test_every_stage_round_trips(which, rag, multi, catalog):
    graph = rag if which == "rag" else multi
    agent = build_agent_module(graph, catalog)
    granular = decompose(agent, catalog)
    analysed = analyse(granular, catalog)
    for module in (agent, granular, analysed):
        roundtrip(module)
    assert "agent.llm" in print_module(agent)  # passes leave their input as it was


def test_llm_decomposes_in_order(multi, catalog):
    _, gg = compile_graph(multi, catalog)
    for node in ("plan", "draft", "critique"):
        ops = [o for o in gg.ops if o.source_node == node]
        assert [o.kind for o in ops] == ["tokenize", "prefill", "decode", "detokenize"]
        assert [o.name for o in ops] == [f"{node}.{k}" for k in ("tokenize", "prefill", "decode", "detokenize")]
        internal = [(e.src, e.dst) for e in gg.edges if e.src.startswith(node + ".") and e.dst.startswith(node + ".")]
        assert internal == [(ops[0].name, ops[1].name), (ops[1].name, ops[2].name), (ops[2].name, ops[3].name)]


def test_kv_edge_bytes_hand_computed(rag, catalog):
    module, gg = compile_graph(rag, catalog)
    (edge,) = [e for e in gg.edges if e.src == "answer.prefill"]
    assert edge.dst == "answer.decode"
    assert edge.bytes == LLAMA8B_KV_2048_BYTES
    assert gg.op("answer.prefill").kv_bytes == LLAMA8B_KV_2048_BYTES
    assert f"!granular.kv<{LLAMA8B_KV_2048_BYTES}>" in print_module(module)
    # decode holds the cache at its end: (2048 + 256) tokens × 131072 bytes/token
    assert gg.op("answer.decode").kv_bytes == 2304 * 131_072


def test_granular_graph_of_rag(rag, catalog):
    _, gg = compile_graph(rag, catalog)
    assert [o.name for o in gg.ops] == [
        "embed_question.embed",
        "search_docs.vector_search",
        "redact.transform",
        "answer.tokenize",
        "answer.prefill",
        "answer.decode",
        "answer.detokenize",
    ]
    assert gg.sla_e2e_ms == 3000 and gg.ttft_ms == 800
    assert gg.op("redact.transform").fixed_latency_ms == 2.0
    vs = gg.op("search_docs.vector_search")
    assert vs.params["top_k"] == 8 and vs.params["index_size"] == 1_000_000 and vs.params["dimension"] == 384
    assert vs.weight_bytes == 1_000_000 * 384 * 4  # fp32 flat index
    # text edges: 256 generated tokens × 4 bytes/token is what the answer hands on
    assert gg.op("answer.detokenize").params["output_bytes"] == 256 * 4
    assert all(o.flops >= 0 and o.bytes_moved >= 0 for o in gg.ops)
    assert gg.op("answer.prefill").flops > gg.op("answer.decode").flops  # 2048-token prompt vs 256 steps


def test_placement_constraints_propagate(multi, catalog):
    _, gg = compile_graph(multi, catalog)
    assert gg.op("draft.prefill").allowed_devices == ("h100-sxm", "mi300x", "xeon-8592")
    assert gg.op("critique.decode").pin == "h100-sxm"
    # host ops keep only what a CPU can satisfy
    assert gg.op("draft.tokenize").allowed_devices == ("xeon-8592",)
    assert gg.op("critique.tokenize").pin is None


def test_missing_model_is_a_compile_error(catalog):
    doc = multi_llm_doc()
    doc["spec"]["nodes"][1]["model"] = "no-such-model"
    with pytest.raises(CompileError, match="no-such-model"):
        compile_graph(parse_graph(doc), catalog)


# --------------------------------------------------------------------------- invalid IR


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("input_tokens = 2048 : i64, flops", "input_tokens = 0 : i64, flops", 1),
            "input_tokens must be > 0",
        ),
        (lambda t: t.replace("top_k = 8 : i64", 'top_k = "eight"'), "top_k"),
        (lambda t: t.replace(f"kv<{LLAMA8B_KV_2048_BYTES}>", "kv<0>"), "size must be > 0"),
        (lambda t: t.replace("granular.detokenize", "granular.bogus"), "not registered"),
        (
            lambda t: t.replace('sym_name = "answer.decode"', 'sym_name = "answer.detokenize"'),
            "sym_name must be 'answer.decode'",
        ),
    ],
)
def test_hand_edited_invalid_ir_is_rejected(edit, message, rag, catalog):
    text = print_module(compile_graph(rag, catalog)[0])
    bad = edit(text)
    assert bad != text
    with pytest.raises(CompileError, match=message):
        parse_module(bad)


def test_prefill_must_feed_a_decode(rag, catalog):
    text = print_module(compile_graph(rag, catalog)[0])
    lines = [ln for ln in text.splitlines() if "granular.decode" not in ln and "granular.detokenize" not in ln]
    bad = (
        "\n".join(lines)
        .replace("agent.output(%answer)", "agent.output(%answer_tokens)")
        .replace('names = ["answer"]} : !granular.value', 'names = ["answer"]} : !granular.tokens')
    )
    with pytest.raises(CompileError, match="must feed a granular.decode"):
        parse_module(bad)


# --------------------------------------------------------------------------- lowering

CPU = {"device": "xeon-8592", "device_class": "cpu", "replicas": 1, "batch": 4}


def _placements(gg, **overrides):
    out = {o.name: dict(CPU) for o in gg.ops}
    out.update(overrides)
    return out


def test_same_device_prefill_decode_merge_into_one_engine(rag, catalog):
    module, gg = compile_graph(rag, catalog)
    h100 = {"device": "h100-sxm", "device_class": "gpu", "replicas": 1, "tensor_parallel": 1, "batch": 16}
    pl = _placements(gg, **{"answer.prefill": h100, "answer.decode": h100})
    configs = lower_to_execution_configs(module, pl, catalog)
    json.dumps(configs)  # data only
    engines = [c for c in configs if c["kind"] == "engine" and c["node"] == "answer"]
    assert len(engines) == 1 and engines[0]["ops"] == ["answer.prefill", "answer.decode"]
    args = engines[0]["engine_args"]
    assert args["model"] == "llama-3.1-8b-instruct" and args["tensor_parallel_size"] == 1
    assert args["max_num_seqs"] == 16 and args["dtype"] == "bfloat16" and args["gpu_memory_utilization"] == 0.9
    assert args["enforce_eager"] is False and "kv_transfer_config" not in args
    assert args["kv_cache_budget_bytes"] == 16 * 2304 * 131_072
    assert args["max_model_len"] >= 2048 + 256
    faiss = next(c for c in configs if c["kind"] == "vector_search")
    assert faiss["settings"]["index_type"] == "Flat" and faiss["settings"]["omp_threads"] >= 1
    # the same module after KV-transfer insertion lowers the same way
    assert lower_to_execution_configs(insert_kv_transfers(module, pl), pl, catalog) == configs


def test_cross_device_prefill_decode_stay_separate(rag, catalog):
    module, gg = compile_graph(rag, catalog)
    pl = _placements(
        gg,
        **{
            "answer.prefill": {"device": "h100-sxm", "device_class": "gpu", "batch": 8},
            "answer.decode": {"device": "gaudi3", "device_class": "accelerator", "replicas": 2, "batch": 64},
        },
    )
    configs = lower_to_execution_configs(gg, pl, catalog)
    engines = {c["ops"][0]: c for c in configs if c["node"] == "answer" and c["kind"] == "engine"}
    assert set(engines) == {"answer.prefill", "answer.decode"}
    assert engines["answer.prefill"]["engine_args"]["kv_transfer_config"]["kv_role"] == "kv_producer"
    assert engines["answer.decode"]["engine_args"]["kv_transfer_config"]["kv_role"] == "kv_consumer"
    assert (
        engines["answer.prefill"]["engine_args"]["max_model_len"]
        == engines["answer.decode"]["engine_args"]["max_model_len"]
    )
    assert engines["answer.decode"]["replicas"] == 2


def test_cpu_engine_gets_cpu_kernel_settings(rag, catalog):
    module, gg = compile_graph(rag, catalog)
    configs = lower_to_execution_configs(module, _placements(gg), catalog)
    json.dumps(configs)
    eng = next(c for c in configs if c["node"] == "answer" and c["kind"] == "engine")
    assert eng["runtime"] == "vllm-cpu" and eng["engine_args"]["device"] == "cpu"
    assert eng["engine_args"]["dtype"] == "bfloat16"
    env = eng["env"]
    assert int(env["VLLM_CPU_KVCACHE_SPACE"]) >= 1 and "-" in env["VLLM_CPU_OMP_THREADS_BIND"]
    embed = next(c for c in configs if c["node"] == "embed_question")
    assert embed["engine_args"]["dtype"] == "float32"  # bge-small is fp16: CPUs run it in fp32
    # ops sharing one CPU socket get disjoint core ranges inside its 64 cores
    ranges = [
        tuple(
            map(
                int,
                c.get("env", {})
                .get("VLLM_CPU_OMP_THREADS_BIND", c.get("settings", {}).get("cpu_bind", "-"))
                .split("-"),
            )
        )
        for c in configs
        if c["device_class"] == "cpu" and c["kind"] != "tool"
    ]
    cores = sorted(i for lo, hi in ranges for i in range(lo, hi + 1))
    assert len(cores) == len(set(cores)) and max(cores) < 64
    tool_and_transform = [c for c in configs if c["kind"] == "transform"]
    assert tool_and_transform[0]["settings"]["function"] == "workers.transforms:redact_pii"


def test_lowering_rejects_bad_placements(rag, catalog):
    module, gg = compile_graph(rag, catalog)
    with pytest.raises(LoweringError, match="answer.tokenize: tokenize runs on the host"):
        lower_to_execution_configs(
            module, _placements(gg, **{"answer.tokenize": {"device": "h100-sxm", "device_class": "gpu"}})
        )
    pl = _placements(gg)
    del pl["answer.decode"]
    with pytest.raises(LoweringError, match="answer.decode: no placement"):
        lower_to_execution_configs(module, pl)


def test_kv_transfer_only_across_devices(multi, catalog):
    module, gg = compile_graph(multi, catalog)
    h100 = {"device": "h100-sxm", "device_class": "gpu"}
    mi300 = {"device": "mi300x", "device_class": "gpu"}
    pl = _placements(
        gg,
        **{
            "plan.prefill": h100,
            "plan.decode": h100,  # same device: no transfer
            "draft.prefill": h100,
            "draft.decode": mi300,  # across devices: one transfer
            "critique.prefill": h100,
            "critique.decode": h100,
        },
    )
    placed = insert_kv_transfers(module, pl)
    text = roundtrip(placed)
    xfers = [op for op in granular_ops(placed) if isinstance(op, KVTransferOp)]
    assert [x.sym_name.data for x in xfers] == ["draft.kv_transfer"]
    assert xfers[0].src_device.data == "h100-sxm" and xfers[0].dst_device.data == "mi300x"
    assert 'device = "mi300x"' in text
    # the planner's view is unchanged: the transfer folds back into the prefill → decode edge
    assert to_granular_graph(placed).edges == gg.edges
    # re-placing both on one device removes the transfer again
    pl["draft.decode"] = h100
    assert not [op for op in granular_ops(insert_kv_transfers(placed, pl)) if isinstance(op, KVTransferOp)]
    assert "kv_transfer" not in print_module(module)  # input module untouched


# --------------------------------------------------------------------------- random DAGs

_LLMS = ["llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "tiny-llama"]


@st.composite
def dag_docs(draw):
    n = draw(st.integers(1, 7))
    nodes = []
    for i in range(n):
        ups = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        refs = " ".join(f"{{{{ nodes.n{u}.output }}}}" for u in ups)
        deps = [f"n{u}" for u in draw(st.lists(st.integers(0, i - 1), unique=True, max_size=2))] if i else []
        kind = draw(st.sampled_from(["llm", "tool", "transform"]))
        node: dict = {"name": f"n{i}", "kind": kind, "dependencies": deps}
        if kind == "llm":
            model = draw(st.sampled_from(_LLMS))
            node |= {
                "model": model,
                "prompt": refs + " {{ inputs.q }}",
                "expected": {"input_tokens": draw(st.integers(1, 200)), "output_tokens": draw(st.integers(1, 200))},
            }
        elif kind == "tool":
            node |= {
                "function": "workers.tools:lookup",
                "inputs": {"x": refs},
                "expected": {"latency_ms": draw(st.floats(0, 500, allow_nan=False))},
            }
        else:
            node |= {"function": "workers.transforms:join", "inputs": {"x": refs}}
        nodes.append(node)
    order = draw(st.permutations(range(n)))  # spec order need not be topological
    return {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "AgentGraph",
        "metadata": {"name": "random"},
        "spec": {"sla": {"e2e_ms": 1000}, "inputs": {"q": {}}, "nodes": [nodes[i] for i in order]},
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=dag_docs())
def test_random_dags_compile_to_acyclic_granular_graphs(doc, catalog):
    graph = parse_graph(doc)
    module, gg = compile_graph(graph, catalog)
    gg.topological()  # raises on a cycle
    names = [o.name for o in gg.ops]
    assert len(names) == len(set(names))
    for node in graph.spec.nodes:
        ops = [o for o in gg.ops if o.source_node == node.name]
        assert len(ops) == (4 if node.kind == "llm" else 1)
    n_llm = sum(1 for n in graph.spec.nodes if n.kind == "llm")
    spec_edges = sum(len(graph.upstream(n)) for n in graph.spec.nodes)
    assert len(gg.edges) == 3 * n_llm + spec_edges
    assert all(e.bytes >= 0 for e in gg.edges)
    assert print_module(parse_module(print_module(module))) == print_module(module)
