"""The compiler: the agent graph spec, the xDSL dialects, decomposition/analysis passes and the
lowering to per-device execution configs.

Imports only ``costmodels`` (see CONTRIBUTING.md). The names below are the public API; they load
on first use, so ``import compiler`` does not import xDSL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import costmodels  # its lazy_exports loads the names below on first use

if TYPE_CHECKING:
    from compiler.ir import (
        CompileError as CompileError,
        build_agent_module as build_agent_module,
        compile_graph as compile_graph,
        print_module as print_module,
    )
    from compiler.lowering import (
        LoweringError as LoweringError,
        lower_to_execution_configs as lower_to_execution_configs,
    )
    from compiler.spec import (
        AgentGraph as AgentGraph,
        SpecError as SpecError,
        graph_json_schema as graph_json_schema,
        load_graph as load_graph,
        parse_graph as parse_graph,
        parse_graph_text as parse_graph_text,
        validate_graph as validate_graph,
    )

# public name -> the module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "AgentGraph": "compiler.spec",
    "SpecError": "compiler.spec",
    "graph_json_schema": "compiler.spec",
    "load_graph": "compiler.spec",
    "parse_graph": "compiler.spec",
    "parse_graph_text": "compiler.spec",
    "validate_graph": "compiler.spec",
    "CompileError": "compiler.ir",
    "build_agent_module": "compiler.ir",
    "compile_graph": "compiler.ir",
    "print_module": "compiler.ir",
    "LoweringError": "compiler.lowering",
    "lower_to_execution_configs": "compiler.lowering",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = costmodels.lazy_exports(globals(), _EXPORTS)
