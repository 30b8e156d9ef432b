"""A tiny Llama model and BPE tokenizer, trained offline at build time on English text.

Tests, calibration and the local cluster's workers need a real transformer that loads with
``transformers`` (and vLLM's CPU backend) without touching a model hub. This module builds one
from scratch, on this machine: ``python -m costmodels.tiny_model`` on a 2-vCPU machine took 95 s wall
while other jobs kept both cores busy (70 s of CPU in the training loop; see ``training_report.json``).

* **Corpus** (English prose only; every source ships with the project or with Python itself):

  - the project's own ``README.md`` and ``docs/*.md`` (MIT, like the project), **frozen**: their prose as of one
    commit, kept in ``costmodels/tiny_corpus_docs.json.gz`` (``frozen_from`` names the commit). Read live, every
    docs edit retrained the model (~95 s in every test run) into a different one, and one such build
    answered RAG prompts with a loop ("the KV cache of the KV cache ...") and failed its tests. The
    snapshot is a build that passed them; ``python -m costmodels.tiny_model --freeze-docs`` re-freezes the
    working tree's docs (then run tests/test_tiny_model.py on the new build);
  - the RAG example's documents, ``examples/graphs/indexes/product-docs.jsonl`` (the ``text`` fields);
  - the Python language reference and library topics that CPython ships as
    ``<stdlib>/pydoc_data/topics.py`` (the text ``help("assert")`` prints; ~465 KB of English prose
    generated from the CPython docs, Python Software Foundation License, a permissive licence).

  Markdown and reStructuredText are reduced to prose paragraphs: fenced code, tables and headings are
  dropped, a paragraph's lines are joined, and a paragraph is kept only when at least 75 % of its
  whitespace-separated tokens are plain words (so grammar productions and code samples go). About
  400 KB of text remain (~55 KB of it the project's), ~150k tokens at vocab 2048.
* **Tokenizer**: byte-level BPE, vocab 2048, special tokens ``<s>`` ``</s>`` ``<pad>``, trained on
  that corpus; ``<s>`` is prepended to every encoded text; a minimal ``role: content`` chat template.
* **Model**: ``LlamaForCausalLM`` with the architecture of the catalog entry ``tiny-llama``:
  hidden 128, intermediate 256, 2 layers, 4 heads, 4 kv heads, head_dim 32, vocab 2048,
  max_position 4096 (RoPE), untied embeddings, fp32 (852,608 parameters, ~3.4 MB of safetensors).
* **Training**: a plain PyTorch loop, next-token cross-entropy, AdamW (lr 2e-3, betas 0.9/0.95, 20
  warm-up steps, cosine decay to 10 %, weight decay 0.01 on matrices, grad-norm clip 1.0),
  ``STEPS`` = 360 steps of ``BATCH`` = 8 windows of ``SEQ_LEN`` = 128 tokens (``<s>`` + 127 tokens
  of one stream: every source followed by ``</s>``, the project's own sources repeated
  ``PROJECT_REPEATS`` = 3 times so they make up about a third of the stream; window starts drawn
  from a seeded generator). From 40 % of the steps on, every other step is instead ``RAG_BATCH`` =
  2 **RAG-shaped samples**: the prompt examples/graphs/rag_agent.yaml renders (``rag_prompt``:
  "Context:", 4 to 16 of the example's documents one per line, "Question: ...") followed by, as
  the scored answer, the context document the question names by its first three words ("What is KV
  cache offloading?"). Trained on 128-token windows alone, the model answered the example's
  ~600-1,100-token prompts with one token repeated ("AGENTAGENT..."); these samples teach it
  positions up to ~1,300 and to answer from its context. Everything runs inside
  ``torch.random.fork_rng`` with a fixed seed and a fixed intra-op thread count, ``TRAIN_THREADS``
  = 1 (on a shared 2-core machine one thread is ~3x faster than two when the other core is busy,
  and it makes the result independent of the core count), so a build is bit-for-bit reproducible
  on a machine. The loss falls from ~7.6 (ln 2048) to 4.3-4.7 nats per token on corpus windows
  (the corpus grows with the docs; its unigram entropy is ~6.4 nats per token); greedy text is
  English-like words ("The KV cache of the decode step reads the attention stores the KV cache"),
  not knowledge.

``training_report.json`` beside the weights records the recipe hash, steps, seconds, the initial and
final loss and the corpus sources with their byte counts.

**Cache.** Training costs about a minute, so a finished build is kept in
``<cache>/tiny-llama-<recipe hash>/tiny-llama`` (``<cache>`` is ``$HETAGENT_CACHE_DIR``, else
``$XDG_CACHE_HOME/hetagent``, else ``~/.cache/hetagent``) and later builds of the same recipe copy it.
The recipe hash (``recipe_hash()``) covers the corpus text, the hyper-parameters, ``RECIPE_VERSION``
and the torch/tokenizers/transformers versions; a model folder built by another recipe (an older
random-init build, or a build before the docs changed) is rebuilt.

``python -m costmodels.tiny_model DIR`` builds it into DIR (default: ``default_tiny_model_dir()``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TINY_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
REPORT_FILE = "training_report.json"
MAX_POSITION = 4096  # RoPE has no learned positions: the context costs no weights; RAG prompts fit
RECIPE_VERSION = 3  # 1: random init; 2: trained on 128-token windows; 3: + RAG-shaped samples

# training hyper-parameters (all part of the recipe hash)
VOCAB = 2048  # whole common words are one token: greedy text breaks words less often than at 1024
SEQ_LEN = 128
BATCH = 8
STEPS = 360
LR = 2e-3
WARMUP_STEPS = 20
MIN_LR_FRACTION = 0.1
WEIGHT_DECAY = 0.01
CLIP_NORM = 1.0
TRAIN_THREADS = 1
PROJECT_REPEATS = 3  # the project's own text appears this many times in the training stream
PROSE_WORD_FRACTION = 0.75  # a paragraph is kept when this share of its tokens are plain words
RAG_FROM_FRACTION = 0.4  # from this share of the steps on, every other step is a batch of RAG samples
RAG_BATCH = 2  # RAG samples per such step
RAG_DOCS = (4, 16)  # documents in one sample's context (inclusive range): 300 to 1,200 tokens
RAG_QUESTIONS = ("What is {}?", "How does {} work?", "Tell me about {}.", "Explain {}.")
RAG_CORPUS = "examples/graphs/indexes/product-docs.jsonl"

ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def default_tiny_model_dir() -> Path:
    """``$HETAGENT_DATA_DIR/models/tiny-llama`` (HETAGENT_DATA_DIR defaults to ``.hetagent``)."""
    return Path(os.environ.get("HETAGENT_DATA_DIR", ".hetagent")) / "models" / "tiny-llama"


def cache_root() -> Path:
    """``$HETAGENT_CACHE_DIR``, else ``$XDG_CACHE_HOME/hetagent``, else ``~/.cache/hetagent``."""
    if os.environ.get("HETAGENT_CACHE_DIR"):
        return Path(os.environ["HETAGENT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hetagent"


def is_complete(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a saved model: config, weights and tokenizer."""
    return all((Path(out_dir) / f).is_file() for f in TINY_MODEL_FILES)


# --------------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class CorpusSource:
    name: str  # where it came from, relative to the repo or the stdlib
    path: str  # the file read
    raw_bytes: int  # size of the file
    text: str  # the prose kept for training

    @property
    def text_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


_WORD = re.compile(r"^[\"'(\[]*[A-Za-z][A-Za-z'\-]*[\"')\].,;:!?]*$")


def _prose(text: str) -> str:
    """The paragraphs of ``text`` that read as prose, each joined onto one line."""
    kept = []
    for block in re.split(r"\n\s*\n", text):
        words = " ".join(line.strip() for line in block.splitlines() if line.strip()).split()
        if len(words) >= 6 and sum(bool(_WORD.match(w)) for w in words) >= PROSE_WORD_FRACTION * len(words):
            kept.append(" ".join(words))
    return "\n\n".join(kept)


def _markdown_prose(text: str) -> str:
    text = re.sub(r"```.*?```", "\n\n", text, flags=re.S)  # fenced code
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("|", "#", "<")))
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [text](link) -> text
    return _prose(text.replace("`", "").replace("**", ""))


def _topics_path() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"


def _read_topics(path: Path) -> dict[str, str]:
    """The ``topics`` dict of pydoc_data/topics.py, parsed (not imported)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
            topics: dict[str, str] = ast.literal_eval(node.value)
            return topics
    raise RuntimeError(f"{path} has no topics dict")


FROZEN_DOCS = Path(__file__).resolve().parent / "tiny_corpus_docs.json.gz"  # README + docs prose, one commit's


def _markdown_files() -> list[Path]:
    return [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if p.is_file()]


def _corpus_files() -> tuple[Path, Path, Path]:
    return FROZEN_DOCS, ROOT / "examples" / "graphs" / "indexes" / "product-docs.jsonl", _topics_path()


def freeze_docs(out: Path = FROZEN_DOCS) -> Path:
    """Write the working tree's README and docs prose as the corpus's frozen project part."""
    import gzip
    import subprocess

    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    sources = [
        {
            "name": str(p.relative_to(ROOT)),
            "file_bytes": p.stat().st_size,
            "text": _markdown_prose(p.read_text("utf-8")),
        }
        for p in _markdown_files()
    ]
    doc = {"frozen_from": f"{rev or 'unknown'} (working tree)", "sources": sources}
    out.write_bytes(gzip.compress(json.dumps(doc, ensure_ascii=False, indent=0).encode(), mtime=0))
    return out


_MEMO: dict[str, Any] = {}  # the last corpus read, keyed by its files' paths, sizes and mtimes


def corpus_sources() -> list[CorpusSource]:
    """The English training corpus, in a fixed order (see the module docstring)."""
    markdown, jsonl, topics = _corpus_files()
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in [markdown, jsonl, topics] if p.is_file())
    if _MEMO.get("key") == key:
        return list(_MEMO["sources"])
    import gzip

    frozen = json.loads(gzip.decompress(markdown.read_bytes()))
    sources = [CorpusSource(d["name"], str(markdown), d["file_bytes"], d["text"]) for d in frozen["sources"]]
    if jsonl.is_file():
        texts = [json.loads(line)["text"] for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
        sources.append(CorpusSource(str(jsonl.relative_to(ROOT)), str(jsonl), jsonl.stat().st_size, "\n\n".join(texts)))
    if topics.is_file():
        docs = _read_topics(topics)
        text = "\n\n".join(p for p in (_prose(docs[k]) for k in sorted(docs)) if p)
        name = f"cpython-{sys.version_info.major}.{sys.version_info.minor}-stdlib/pydoc_data/topics.py"
        sources.append(CorpusSource(name, str(topics), topics.stat().st_size, text))
    if sum(s.text_bytes for s in sources) < 100_000:
        raise RuntimeError(
            "too little English text to train the tiny model on "
            f"(found {[s.name for s in sources]}; pydoc_data/topics.py expected at {topics})"
        )
    _MEMO.update(key=key, sources=tuple(sources))
    return sources


# --------------------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class Recipe:
    vocab: int = VOCAB
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    seed: int = 0
    seq_len: int = SEQ_LEN
    batch: int = BATCH
    steps: int = STEPS
    lr: float = LR
    warmup_steps: int = WARMUP_STEPS
    min_lr_fraction: float = MIN_LR_FRACTION
    weight_decay: float = WEIGHT_DECAY
    clip_norm: float = CLIP_NORM
    threads: int = TRAIN_THREADS
    project_repeats: int = PROJECT_REPEATS
    rag_from_fraction: float = RAG_FROM_FRACTION
    rag_batch: int = RAG_BATCH
    rag_docs: tuple[int, int] = RAG_DOCS
    rag_questions: tuple[str, ...] = RAG_QUESTIONS


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "tokenizers", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def recipe_hash(recipe: Recipe | None = None, sources: list[CorpusSource] | None = None) -> str:
    """SHA-256 (hex) of everything that determines the built model: ``RECIPE_VERSION``, the
    hyper-parameters, the packages that compute it and the training corpus text."""
    recipe = recipe or Recipe()
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "version": RECIPE_VERSION,
                "recipe": asdict(recipe),
                "packages": _package_versions(),
                "max_position": MAX_POSITION,
                "prose": PROSE_WORD_FRACTION,
            },
            sort_keys=True,
        ).encode()
    )
    for s in sources if sources is not None else corpus_sources():
        data = s.text.encode("utf-8")
        h.update(f"\0{s.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def tiny_model_cache_dir(key: str | None = None) -> Path:
    """Where the build of recipe ``key`` (default: today's) is cached:
    ``<cache_root()>/tiny-llama-<key[:16]>/tiny-llama`` (the folder name is the served model's name)."""
    key = key or recipe_hash()
    return cache_root() / f"tiny-llama-{key[:16]}" / "tiny-llama"


def read_report(model_dir: Path) -> dict[str, Any] | None:
    try:
        report: dict[str, Any] = json.loads((Path(model_dir) / REPORT_FILE).read_text())
        return report
    except (OSError, ValueError):
        return None


def _is_current(model_dir: Path, key: str) -> bool:
    report = read_report(model_dir)
    return is_complete(model_dir) and report is not None and report.get("recipe_hash") == key


# --------------------------------------------------------------------------------------- build


def build_tiny_model(
    out_dir: Path,
    *,
    vocab: int = VOCAB,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    steps: int = STEPS,
    cache: bool = True,
) -> Path:
    """Build (or reuse) the trained tiny Llama model + tokenizer in ``out_dir`` and return the folder.

    Idempotent: a folder that already holds config.json, model.safetensors, tokenizer.json and a
    training report of the same recipe is returned as is. Otherwise the model is copied from the
    cache (``tiny_model_cache_dir``) when it is there, else trained (about a minute) and then also
    stored in the cache (``cache=False`` skips the cache both ways). ``hidden / heads`` must be at
    least 32 (vLLM's CPU attention needs it).
    """
    out_dir = Path(out_dir)
    if hidden % heads or hidden // heads < 32:
        raise ValueError(f"head_dim = hidden / heads must be an integer >= 32, got {hidden}/{heads}")
    recipe = Recipe(vocab=vocab, hidden=hidden, layers=layers, heads=heads, seed=seed, steps=steps)
    sources = corpus_sources()
    key = recipe_hash(recipe, sources)
    if _is_current(out_dir, key):
        return out_dir
    cached = tiny_model_cache_dir(key) if cache else None
    with _lock(cached if cached is not None else out_dir):
        if _is_current(out_dir, key):  # another process built it while we waited
            return out_dir
        if cached is not None and cached.resolve() != out_dir.resolve() and _is_current(cached, key):
            _publish_copy(cached, out_dir)
            return out_dir
        _offline()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and move it into place, so a crash or a concurrent build never
        # leaves a half-written model that looks complete.
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        tmp.chmod(0o755)
        try:
            _build(tmp, recipe, sources, key)
            _publish(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if cached is not None and cached.resolve() != out_dir.resolve():
            with contextlib.suppress(OSError):  # a read-only cache only costs the next build a retrain
                _publish_copy(out_dir, cached)
    return out_dir


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """An exclusive lock beside ``target`` (``.<name>.lock``), so concurrent builds train once."""
    locker: Any = None
    try:
        import fcntl

        locker = fcntl
    except ImportError:  # not POSIX: no lock, the atomic publish still keeps the folder whole
        pass
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_path = target.parent / f".{target.name}.lock"
        lock_path.touch()
    except OSError:  # an unwritable place: build without the lock
        locker = None
    if locker is None:
        yield
        return
    fcntl = locker
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished folder ``tmp`` to ``out_dir`` (replacing the files of an older build)."""
    try:
        os.rename(tmp, out_dir)  # fails if out_dir exists and is not empty
    except OSError:
        out_dir.mkdir(parents=True, exist_ok=True)
        report = tmp / REPORT_FILE  # the report last: it is what marks the folder as current
        for f in sorted(tmp.iterdir(), key=lambda p: p == report):
            os.replace(f, out_dir / f.name)


def _publish_copy(src: Path, out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _train_tokenizer(vocab: int, texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def _lr(step: int, r: Recipe) -> float:
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    progress = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.lr * (r.min_lr_fraction + (1 - r.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def rag_documents(sources: list[CorpusSource]) -> list[str]:
    """The RAG example's documents (one paragraph each), as the corpus holds them."""
    for s in sources:
        if s.name == RAG_CORPUS:
            return [d for d in s.text.split("\n\n") if d.strip()]
    return []


def rag_prompt(context_docs: list[str], question: str) -> str:
    """The prompt examples/graphs/rag_agent.yaml renders: its retrieved documents, one per line."""
    return "Context:\n" + "\n".join(context_docs) + f"\nQuestion: {question}\n"


def _rag_sample(docs: list[str], rng: random.Random, r: Recipe) -> tuple[str, str]:
    """A RAG-shaped training sample: a prompt over a few documents and, as its answer, the one
    document the question names by its first three words (so the model learns to answer from context)."""
    context = rng.sample(docs, min(len(docs), rng.randint(*r.rag_docs)))
    answer = rng.choice(context)
    topic = " ".join(re.sub(r"[^\w\s/-]", "", answer).split()[:3])
    return rag_prompt(context, rng.choice(r.rag_questions).format(topic)), answer


def _train(model: Any, stream: list[int], rag_docs: list[str], tok: Any, r: Recipe) -> dict[str, Any]:
    """Train ``model`` in place on windows of the token ``stream`` and, late in training, on
    RAG-shaped samples of ``rag_docs``; returns the loss record."""
    import torch
    import torch.nn.functional as F

    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    data = torch.tensor(stream, dtype=torch.long)
    n = r.seq_len - 1  # each window: <s> + n corpus tokens as input, the next n + 1 ... as targets
    if len(data) <= n + 1:
        raise RuntimeError("training corpus shorter than one window")
    gen = torch.Generator().manual_seed(r.seed + 1)
    rng = random.Random(r.seed + 2)
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=r.lr,
        betas=(0.9, 0.95),
        fused=True,
    )
    offsets = torch.arange(n + 1)
    bos_col = torch.full((r.batch, 1), bos, dtype=torch.long)
    rag_from = int(r.steps * r.rag_from_fraction)
    losses, tokens_seen, rag_samples = [], 0, 0
    model.train()
    for step in range(r.steps):
        if rag_docs and step >= rag_from and step % 2 == 0:
            rows = []
            for _ in range(r.rag_batch):
                prompt, answer = _rag_sample(rag_docs, rng, r)
                rows.append([bos, *tok.encode(prompt, add_special_tokens=False).ids])
                rows[-1] += [*tok.encode(answer, add_special_tokens=False).ids, eos]
            width = max(map(len, rows)) - 1
            x = torch.zeros((len(rows), width), dtype=torch.long)
            y = torch.full((len(rows), width), -100, dtype=torch.long)  # padding is not scored
            for i, ids in enumerate(rows):
                t = torch.tensor(ids)
                x[i, : len(ids) - 1], y[i, : len(ids) - 1] = t[:-1], t[1:]
            tokens_seen += sum(len(ids) - 1 for ids in rows)
            rag_samples += len(rows)
        else:
            starts = torch.randint(0, len(data) - n - 1, (r.batch,), generator=gen)
            win = data[starts[:, None] + offsets]  # (batch, n + 1)
            x = torch.cat([bos_col, win[:, :-1]], dim=1)  # <s> t0 .. t(n-1)
            y = win  # predict t0 after <s>, ..., t(n) after t(n-1)
            tokens_seen += r.batch * r.seq_len
        for g in opt.param_groups:
            g["lr"] = _lr(step, r)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.clip_norm)
        opt.step()
        losses.append(loss.item())
    model.eval()
    tail = [loss for i, loss in enumerate(losses) if i < rag_from or i % 2][-20:]  # corpus windows only
    return {
        "initial_loss": losses[0],
        "final_loss": sum(tail) / len(tail),  # mean of the last 20 corpus-window steps
        "tokens_seen": tokens_seen,
        "rag_samples": rag_samples,
        "loss_curve": [[i, round(losses[i], 4)] for i in range(0, len(losses), 10)]
        + [[len(losses) - 1, round(losses[-1], 4)]],
    }


def _build(out_dir: Path, r: Recipe, sources: list[CorpusSource], key: str) -> None:
    t0 = time.perf_counter()
    texts = [s.text for s in sources]
    tok = _train_tokenizer(r.vocab, texts)
    t_tok = time.perf_counter() - t0
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=MAX_POSITION
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out_dir)

    import torch

    bos, eos, pad = tok.token_to_id("<s>"), tok.token_to_id("</s>"), tok.token_to_id("<pad>")
    # one token stream: every source's text followed by </s> (the <s> starts every training window);
    # the project's own sources (all but the stdlib's) repeated, so they weigh more than the stdlib's
    stream: list[int] = []
    per_source = []
    for s, enc in zip(sources, tok.encode_batch(texts, add_special_tokens=False), strict=True):
        repeats = 1 if s.name.startswith("cpython-") else r.project_repeats
        stream.extend((enc.ids + [eos]) * repeats)
        per_source.append(
            {
                "name": s.name,
                "path": s.path,
                "file_bytes": s.raw_bytes,
                "text_bytes": s.text_bytes,
                "tokens": len(enc.ids),
                "repeats": repeats,
            }
        )
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=r.hidden,
        intermediate_size=2 * r.hidden,
        num_hidden_layers=r.layers,
        num_attention_heads=r.heads,
        num_key_value_heads=r.heads,
        head_dim=r.hidden // r.heads,
        max_position_embeddings=MAX_POSITION,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=False,
        torch_dtype="float32",  # type: ignore[call-arg]  # a PretrainedConfig kwarg transformers' stubs omit
    )
    threads = torch.get_num_threads()
    t1, c1 = time.perf_counter(), time.process_time()
    try:
        torch.set_num_threads(r.threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r.seed)
            model = LlamaForCausalLM(cfg)
            record = _train(model, stream, rag_documents(sources), tok, r)
    finally:
        torch.set_num_threads(threads)
    t_train, c_train = time.perf_counter() - t1, time.process_time() - c1
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad).save_pretrained(out_dir)
    report = {
        "recipe_hash": key,
        "recipe_version": RECIPE_VERSION,
        "recipe": asdict(r),
        "packages": _package_versions(),
        "steps": r.steps,
        "corpus_tokens": len(stream),
        **{k: v for k, v in record.items() if k != "loss_curve"},
        "seconds": {
            "tokenizer": round(t_tok, 2),
            "training": round(t_train, 2),
            # CPU time of the training loop: its wall time on an otherwise idle core
            "training_cpu": round(c_train, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": r.threads, "load_average": _loadavg()},
        "sources": per_source,
        "loss_curve": record["loss_curve"],
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")


def _loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages at the end of the build (other work slows a build down)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--freeze-docs"]:
        print(freeze_docs())
        return 0
    out = Path(args[0]) if args else default_tiny_model_dir()
    path = build_tiny_model(out)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
