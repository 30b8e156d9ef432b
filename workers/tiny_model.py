"""A tiny random-init Llama model and BPE tokenizer, built fully offline.

Tests, calibration and the local cluster's workers need a real transformer that loads with
``transformers`` (and vLLM's CPU backend) without touching a model hub. This module trains a
byte-level BPE tokenizer on the local CPython stdlib sources and saves a seeded random-init
``LlamaForCausalLM`` whose architecture matches the catalog entry ``tiny-llama``:
hidden 128, intermediate 256, 2 layers, 4 heads, 4 kv heads, head_dim 32, vocab 1024,
max_position 512, fp32 (~590k parameters, ~2.4 MB of safetensors).

``python -m workers.tiny_model DIR`` builds it into DIR (default: ``default_tiny_model_dir()``).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

TINY_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
MAX_POSITION = 512
CORPUS_FILES = 120  # stdlib *.py files used to train the tokenizer (sorted, so deterministic)


def default_tiny_model_dir() -> Path:
    """``$HETAGENT_DATA_DIR/models/tiny-llama`` (HETAGENT_DATA_DIR defaults to ``.hetagent``)."""
    return Path(os.environ.get("HETAGENT_DATA_DIR", ".hetagent")) / "models" / "tiny-llama"


def is_complete(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a saved model: config, weights and tokenizer."""
    return all((Path(out_dir) / f).is_file() for f in TINY_MODEL_FILES)


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _train_tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:CORPUS_FILES]
    if not files:
        raise RuntimeError("no CPython stdlib sources found to train the tokenizer on")

    def corpus():
        for f in files:
            with open(f, encoding="utf-8", errors="ignore") as fh:
                yield fh.read()

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def build_tiny_model(
    out_dir: Path, *, vocab: int = 1024, hidden: int = 128, layers: int = 2, heads: int = 4, seed: int = 0
) -> Path:
    """Build (or reuse) a tiny Llama model + tokenizer in ``out_dir`` and return the folder.

    Idempotent: a folder that already holds config.json, model.safetensors and tokenizer.json is
    returned as is. ``hidden / heads`` must be at least 32 (vLLM's CPU attention needs it).
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        return out_dir
    if hidden % heads or hidden // heads < 32:
        raise ValueError(f"head_dim = hidden / heads must be an integer >= 32, got {hidden}/{heads}")
    _offline()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and move it into place, so a crash or a concurrent build never
    # leaves a half-written model that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        _build(tmp, vocab=vocab, hidden=hidden, layers=layers, heads=heads, seed=seed)
        try:
            os.rename(tmp, out_dir)  # fails if out_dir exists and is not empty
        except OSError:
            if not is_complete(out_dir):
                out_dir.mkdir(parents=True, exist_ok=True)
                for f in tmp.iterdir():
                    os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _build(out_dir: Path, *, vocab: int, hidden: int, layers: int, heads: int, seed: int) -> None:
    tok = _train_tokenizer(vocab)
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=MAX_POSITION
    )
    hf_tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    hf_tok.save_pretrained(out_dir)

    import torch

    bos, eos, pad = tok.token_to_id("<s>"), tok.token_to_id("</s>"), tok.token_to_id("<pad>")
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=MAX_POSITION,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad).save_pretrained(out_dir)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else default_tiny_model_dir()
    path = build_tiny_model(out)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
