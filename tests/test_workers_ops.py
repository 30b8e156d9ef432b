"""Non-LLM workers: transforms, embed, FAISS search, HTTP/callable tools, and one Ray actor."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from compiler.spec import EmbedNode, ToolNode, TransformNode, VectorSearchNode
from workers.ops import (
    EmbedOp,
    OpError,
    ToolError,
    ToolOp,
    ToolTimeout,
    TransformError,
    TransformOp,
    VectorSearchOp,
    build_index,
    make_op,
)
from workers.tools import run_tests
from workers.transforms import luhn_ok, redact_pii, speech_to_text


# --------------------------------------------------------------------------- transforms
def test_redact_pii_positives():
    text = (
        "mail bob.smith+x@example.co.uk, call +44 20 7946 0958 or (555) 123-4567 or 555-123-4567; "
        "card 4111 1111 1111 1111 and 5500-0000-0000-0004 and 378282246310005"
    )
    out = redact_pii(text)
    assert "[EMAIL]" in out and "example" not in out
    assert out.count("[PHONE]") == 3
    assert out.count("[CARD]") == 3
    assert not any(ch.isdigit() for ch in out)


def test_redact_pii_negatives_and_lists():
    assert not luhn_ok("1234567812345679") and luhn_ok("4111111111111111")
    text = "order 1234567812345679 shipped in 2024, ticket 12345, version 3.11"
    assert redact_pii(text) == text
    assert redact_pii(["hi", "a@b.io"]) == "hi\n[EMAIL]"


def test_speech_to_text_stand_in():
    assert speech_to_text(base64.b64encode(b"hello world").decode()) == "hello world"
    with pytest.raises(ValueError):
        speech_to_text("not base64!!")


def test_run_tests_example():
    assert run_tests("--- a\n+++ b\n+x\n-y\n z") == {"lines": 5, "added": 1, "removed": 1, "passed": True}


def test_transform_op_and_factory():
    node = TransformNode(kind="transform", name="redact", function="workers.transforms:redact_pii")
    op = make_op(node, {"settings": {"function": node.function}}, ".")
    assert isinstance(op, TransformOp)
    assert op({"text": "x@y.com"}) == "[EMAIL]"
    with pytest.raises(TransformError) as err:
        op({"text": 3})
    assert err.value.op == "redact"


# --------------------------------------------------------------------------- embed + search
@pytest.fixture(scope="module")
def embed_op():
    return EmbedOp(EmbedNode(kind="embed", name="emb", model="bge-large-en-v1.5"), {}, ".")


def test_embed_op(embed_op):
    import numpy as np

    assert embed_op.model_served.endswith("all-MiniLM-L6-v2") and embed_op.substituted
    vecs = np.array(
        embed_op(
            {
                "text": [
                    "A cat sits on the mat.",
                    "A kitten is sitting on a rug.",
                    "Quarterly revenue grew by ten percent.",
                ]
            }
        )
    )
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2
    assert len(embed_op({"text": "single"})) == 1


DOCS = [
    {"id": "cats", "text": "Cats are small domesticated felines that like to sleep."},
    {"id": "gpu", "text": "GPUs accelerate matrix multiplication for deep learning."},
    {"id": "bread", "text": "Sourdough bread is leavened with a fermented starter."},
]


def test_vector_search_docs_file_and_faiss(tmp_path, embed_op):
    (tmp_path / "indexes").mkdir()
    docs = tmp_path / "indexes" / "kb.jsonl"
    docs.write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    node = VectorSearchNode(kind="vector_search", name="search", index="kb", top_k=2)
    op = make_op(node, {"settings": {"index": "kb", "top_k": 2}}, tmp_path)
    q = embed_op({"text": "which hardware speeds up neural network training?"})[0]
    hits = op({"vector": q})
    assert [h["id"] for h in hits][0] == "gpu" and len(hits) == 2
    assert hits[0]["score"] > hits[1]["score"] and hits[0]["text"] == DOCS[1]["text"]
    assert len(op({"vector": [q, q]})) == 2  # batched queries -> list of lists

    built = build_index(docs, tmp_path / "built", embed_op)
    op2 = VectorSearchOp(node, {"settings": {"index_path": str(built)}}, tmp_path)
    assert op2({"vector": q})[0]["id"] == "gpu"

    (tmp_path / "plain.txt").write_text("\n".join(d["text"] for d in DOCS))
    op3 = VectorSearchOp(node, {"settings": {"index_path": str(tmp_path / "plain.txt")}}, tmp_path)
    assert op3({"vector": q})[0]["text"].startswith("GPUs")


def test_vector_search_missing_index(tmp_path):
    node = VectorSearchNode(kind="vector_search", name="search", index="nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        VectorSearchOp(node, {}, tmp_path)


# --------------------------------------------------------------------------- tools
class _Handler(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        _Handler.hits[self.path] = _Handler.hits.get(self.path, 0) + 1
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/ok":
            self._send(200, json.dumps({"echo": json.loads(body)}).encode(), "application/json")
        elif self.path == "/fail":
            self._send(500, b"boom", "text/plain")
        elif self.path == "/slow":
            time.sleep(1.0)
            self._send(200, b"{}", "application/json")
        elif self.path == "/big":
            self._send(200, b"x" * 70_000, "text/plain")

    def _send(self, status, payload, ctype):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(payload)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _tool(url, **kw):
    return ToolNode(kind="tool", name="svc", url=url, expected={"latency_ms": 5}, **kw)


def test_tool_http_success(server):
    op = ToolOp(_tool(server + "/ok"), {}, ".")
    assert op({"q": "hi", "n": 2}) == {"echo": {"q": "hi", "n": 2}}


def test_tool_http_500_bounded_retries(server):
    op = ToolOp(_tool(server + "/fail", retries=2), {"settings": {"backoff_s": 0.01}}, ".")
    with pytest.raises(ToolError) as err:
        op({"q": 1})
    assert err.value.status == 500 and err.value.url.endswith("/fail") and err.value.attempts == 3
    assert _Handler.hits["/fail"] == 3

    _Handler.hits["/fail"] = 0
    op = ToolOp(_tool(server + "/fail", retries=2, idempotent=False), {}, ".")
    with pytest.raises(ToolError):
        op({})
    assert _Handler.hits["/fail"] == 1  # never retried when not idempotent


def test_tool_http_timeout(server):
    op = ToolOp(_tool(server + "/slow", timeout_s=0.2), {}, ".")
    t0 = time.monotonic()
    with pytest.raises(ToolTimeout):
        op({})
    assert time.monotonic() - t0 < 0.9


def test_tool_http_oversized(server):
    op = ToolOp(_tool(server + "/big", retries=3), {"settings": {"max_response_bytes": 65536}}, ".")
    with pytest.raises(ToolError, match="exceeds"):
        op({})
    assert _Handler.hits["/big"] == 1  # oversized is final, not retried


def test_tool_callable():
    node = ToolNode(kind="tool", name="tests", function="workers.tools:run_tests", expected={"latency_ms": 1})
    op = make_op(node, {}, ".")
    assert op({"patch": "+a\n+b"})["added"] == 2
    with pytest.raises(OpError):
        ToolOp(ToolNode(kind="tool", name="x", expected={"latency_ms": 1}), {}, ".")


# --------------------------------------------------------------------------- Ray actor
@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        resources={"device:local-cpu": 100},
        ignore_reinit_error=True,
    )
    yield ray
    ray.shutdown()


def test_host_worker_transform(ray_local):
    from workers.actors import HostWorker, NodeError, actor_options

    ray = ray_local
    node = TransformNode(
        kind="transform",
        name="redact",
        function="workers.transforms:redact_pii",
        inputs={"text": "{{ nodes.src.output }}"},
    )
    execution = {
        "kind": "transform",
        "threads": 4,
        "env": {"OMP_NUM_THREADS": "4"},
        "settings": {"function": node.function},
    }
    opts = actor_options("local-cpu", "cpu", execution)
    assert opts["resources"] == {"device:local-cpu": 0.001}
    assert opts["num_cpus"] == 0 and opts["max_restarts"] == 2 and opts["max_task_retries"] == 0
    cpu_engine = actor_options("local-cpu", "cpu", {"kind": "engine"}, llm=True)
    assert cpu_engine["num_cpus"] == 0 and "num_gpus" not in cpu_engine  # engines time-share a CPU tier's cores
    assert cpu_engine["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"]
    gpu_engine = actor_options(
        "h100-sxm", "gpu", {"kind": "engine", "engine_args": {"tensor_parallel_size": 2}}, llm=True
    )
    assert (gpu_engine["num_cpus"], gpu_engine["num_gpus"]) == (1, 2)

    actor = ray.remote(HostWorker).options(**opts).remote([(node.model_dump(mode="json"), execution)], ".")
    assert ray.get(actor.ping.remote(), timeout=60).startswith("host:redact")
    upstream = ray.put({"src": {"output": "write to a@b.com"}})  # passed by reference, resolved on the worker
    env = ray.get(actor.run.remote({}, upstream), timeout=30)["redact"]
    assert env["output"] == "write to [EMAIL]" and env["service_ms"] >= 0 and env["attempts"] == 1
    with pytest.raises(NodeError, match="redact: TransformError"):  # names the node and the op's error
        try:
            ray.get(actor.run.remote({}, ray.put({"src": {"output": 5}})), timeout=30)
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from exc
    ray.kill(actor)
