"""`hetagent costmodel …`: check the cost models against measurements, import measured profiles."""

from __future__ import annotations

import typer

costmodel_app = typer.Typer(
    no_args_is_help=True,
    help="Cost models against measurements: `check` (predicted vs measured), `import` (measured profiles).",
)
