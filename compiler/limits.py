"""Bounded parsing of JSON and YAML documents from untrusted hands (the daemon's bodies, spec files).

``json.loads`` and PyYAML recurse once per nesting level, so a document nested a few thousand
levels deep raises RecursionError, and a YAML document of nested aliases ("billion laughs") is
small on the wire but expands exponentially once walked. The checks here run before (or instead
of) the recursive parsers and never recurse themselves:

* ``check_json_text``: a scan over the raw bytes (strings skipped) for the nesting depth, and
  for ``NaN``/``Infinity``, which Python's json accepts but JSON does not (they cannot be sent back);
* ``load_yaml``: the YAML event stream (libyaml's parser is a state machine) checked for depth
  and for the node count once every alias is expanded, then the usual safe load;
* ``check_document``: an iterative walk of the loaded value that accepts only JSON types
  (string keys, finite numbers), naming the path of the first offender.

Every failure is a ``DocumentError`` (a ValueError) whose message names the limit.
"""

from __future__ import annotations

import math
import re
from itertools import accumulate, repeat
from operator import sub
from typing import Any

import yaml

__all__ = ["DEFAULT_MAX_DEPTH", "DEFAULT_MAX_NODES", "DocumentError", "check_document", "check_json_text", "load_yaml"]

DEFAULT_MAX_DEPTH = 64  # containers inside containers; real specs use about 6
DEFAULT_MAX_NODES = 200_000  # scalars and containers after alias expansion; a 500-node spec has ~10k


class DocumentError(ValueError):
    """A document over a parsing limit, or not representable as JSON; ``limit`` names the setting."""

    def __init__(self, message: str, limit: str = "", path: str = ""):
        self.limit = limit
        self.path = path
        super().__init__(message)


def _too_deep(max_depth: int) -> DocumentError:
    return DocumentError(f"nested deeper than {max_depth} levels (limit max_doc_depth)", "max_doc_depth")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_NON_FINITE = re.compile(rb"NaN|Infinity")


def check_json_text(data: bytes | str, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Raise DocumentError if the JSON text nests deeper than ``max_depth`` or holds NaN/Infinity.

    Linear in the text, non-recursive, and in C but for one pass of ``accumulate`` over the
    brackets; syntax errors are left to the real parser."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= max_depth and b"NaN" not in raw and b"Infinity" not in raw:
        return
    bare = _JSON_STRING.sub(b'""', raw)
    tok = _NON_FINITE.search(bare)
    if tok is not None:
        raise DocumentError(f"{tok.group().decode()} is not a JSON number (finite numbers only)", "finite_numbers")
    # [ and { are 0x5b and 0x7b, ] and } 0x5d and 0x7d: bit 1 tells a closer from an opener
    brackets = _NOT_BRACKET.sub(b"", bare).translate(_STEP)
    if brackets and max(accumulate(map(sub, brackets, repeat(1)))) > max_depth:
        raise _too_deep(max_depth)


_STEP = bytes((0 if i in b"]}" else 2) for i in range(256))


def load_yaml(text: bytes | str, max_depth: int = DEFAULT_MAX_DEPTH, max_nodes: int = DEFAULT_MAX_NODES) -> Any:
    """``yaml.safe_load`` after checking the event stream: depth ≤ ``max_depth`` and at most
    ``max_nodes`` nodes once aliases are expanded (an alias counts as the whole node it names).
    Raises DocumentError over a limit, yaml.YAMLError on bad syntax."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth, total = 0, 0
    starts: list[tuple[int, str | None]] = []  # open containers: (total at start, anchor)
    anchors: dict[str, int] = {}  # anchor -> expanded node count of the node it names
    try:
        for ev in yaml.parse(text, Loader=loader):
            if isinstance(ev, yaml.AliasEvent):
                total += anchors.get(ev.anchor or "", 1)
            elif isinstance(ev, yaml.ScalarEvent):
                total += 1
                if ev.anchor:
                    anchors[ev.anchor] = 1
            elif isinstance(ev, yaml.CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise _too_deep(max_depth)
                starts.append((total, ev.anchor))
                total += 1
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
                at, anchor = starts.pop()
                if anchor:
                    anchors[anchor] = total - at
            if total > max_nodes:
                raise DocumentError(
                    f"more than {max_nodes} nodes once aliases are expanded (limit max_doc_nodes)", "max_doc_nodes"
                )
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(exc):  # libyaml's own bound (1000) met before ours
            raise _too_deep(max_depth) from None
        raise
    return yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader: CSafeLoader or SafeLoader)


def _path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def check_document(doc: Any, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Raise DocumentError unless ``doc`` is plain JSON data: dicts with string keys, lists, strings,
    finite numbers, booleans and null, at most ``max_depth`` containers deep (YAML also loads
    dates, binary, sets and non-string keys; none of them can be stored or sent back as JSON)."""
    stack: list[tuple[Any, list[str | int]]] = [(doc, [])]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict | list) and len(path) >= max_depth:
            raise _too_deep(max_depth)
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise DocumentError(
                        f"{_path(path) or 'document'}: key {k!r} is a {type(k).__name__}, not a string", "json_types"
                    )
                stack.append((v, [*path, k]))
        elif isinstance(value, list):
            stack.extend((v, [*path, i]) for i, v in enumerate(value))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise DocumentError(f"{_path(path)}: {value} is not a finite number", "finite_numbers", _path(path))
        elif value is not None and not isinstance(value, str | int | bool):
            raise DocumentError(
                f"{_path(path)}: a {type(value).__name__} is not a JSON value (quote it)", "json_types", _path(path)
            )
