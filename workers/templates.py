"""Filling a node's input templates with graph inputs and upstream outputs (on the worker)."""

from __future__ import annotations

import json
import re
from typing import Any

from compiler.spec import TEMPLATE_REF


def render(template: str, graph_inputs: dict[str, Any], upstream: dict[str, Any]) -> Any:
    """Fill a template; a template that is exactly one reference keeps the value's type (vectors stay lists)."""
    whole = TEMPLATE_REF.fullmatch(template.strip())
    if whole:
        scope, name = whole.groups()
        return graph_inputs[name] if scope == "inputs" else upstream[name]

    def sub(m: re.Match) -> str:
        scope, name = m.groups()
        value = graph_inputs[name] if scope == "inputs" else upstream[name]
        return value if isinstance(value, str) else json.dumps(value)

    return TEMPLATE_REF.sub(sub, template)
