"""orchestrator/malloc.py: the glibc settings `hetagent serve` applies at start (fewer heaps, a fixed mmap
threshold: the soak's RSS growth was memory glibc held free), and a MALLOC_* variable in the
environment wins over them. Each case in a fresh interpreter (mallopt changes the process)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's (this CI runs glibc)")


def _tune(**env: str) -> dict[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", "import json; from orchestrator import malloc; print(json.dumps(malloc.tune()))"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **env},
        check=True,
    )
    return json.loads(out.stdout)


def test_serve_caps_the_arenas_and_fixes_the_mmap_threshold():
    assert _tune() == {"arena_max": 2, "mmap_threshold_bytes": 128 * 1024}


def test_a_malloc_variable_in_the_environment_wins():
    assert _tune(MALLOC_ARENA_MAX="4") == {"mmap_threshold_bytes": 128 * 1024}
    assert _tune(MALLOC_MMAP_THRESHOLD_="65536") == {"arena_max": 2}
