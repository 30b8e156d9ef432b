"""Shared test set-up: offline model hubs, an isolated data dir."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEST_FUNCTION_MODULES = "workers.transforms,workers.tools,tests.support.callables"  # the daemons tests start
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "HETAGENT_FUNCTION_MODULES": TEST_FUNCTION_MODULES,  # graphs may call the tests' own callables
}.items():
    os.environ.setdefault(key, value)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The offline tiny model (costmodels/tiny_model.py), trained at most once per machine and recipe.

    Training takes about a minute, so the build lives in the per-user cache keyed by the recipe hash
    (``~/.cache/hetagent/tiny-llama-<hash>/tiny-llama``; ``HETAGENT_CACHE_DIR`` moves it) and is shared
    by every test session, ``make demo`` and ``hetagent run``. Treat it as read-only: a test that
    changes a model folder copies this one first."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from costmodels.tiny_model import build_tiny_model, tiny_model_cache_dir

    return build_tiny_model(tiny_model_cache_dir())
