"""The top layer: the ``hetagent`` CLI and the REST daemon (FastAPI app, service, control loop, store).

May import every other package (see CONTRIBUTING.md). The names below are the public API; they
load on first use, so ``import orchestrator`` does not import FastAPI or SQLAlchemy (the ``server``
extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import costmodels  # its lazy_exports loads the names below on first use

if TYPE_CHECKING:
    from orchestrator.app import create_app as create_app
    from orchestrator.cli import print_plan as print_plan
    from orchestrator.service import Service as Service, ServiceError as ServiceError
    from orchestrator.settings import Settings as Settings

# public name -> the module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "create_app": "orchestrator.app",
    "Settings": "orchestrator.settings",
    "Service": "orchestrator.service",
    "ServiceError": "orchestrator.service",
    "print_plan": "orchestrator.cli",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = costmodels.lazy_exports(globals(), _EXPORTS)
