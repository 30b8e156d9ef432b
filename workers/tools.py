"""Example tool callables, referenced from specs by import path (``workers.tools:run_tests``)."""

from __future__ import annotations

__all__ = ["run_tests"]


def run_tests(patch: str) -> dict:
    """Example tool: "runs tests" on a patch. Deterministic stand-in, no subprocesses.

    Counts the patch's lines, added lines (``+``) and removed lines (``-``), ignoring the
    ``+++``/``---`` file headers; reports ``passed`` when the patch is non-empty.
    """
    lines = patch.splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return {"lines": len(lines), "added": added, "removed": removed, "passed": bool(lines)}
