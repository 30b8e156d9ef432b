"""`hetagent keys list` and `hetagent keys revoke`: the daemon's API keys, in its database (the daemon
need not run; a running daemon refuses a revoked key within auth.CACHE_TTL_S). Over REST an admin
key does the same: GET /v1/keys, DELETE /v1/keys/{id}."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

_DATA_DIR = typer.Option(
    Path(os.environ.get("HETAGENT_DATA_DIR", ".hetagent")),
    "--data-dir",
    help="Data directory (SQLite database, models, indexes).",
)
_DB = typer.Option(
    os.environ.get("HETAGENT_DATABASE_URL"), "--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)."
)


def _sessions(data_dir: Path, database_url: str | None):
    from orchestrator.db import open_database
    from orchestrator.settings import Settings

    return open_database(Settings(data_dir=data_dir, database_url=database_url).db_url())


def keys_list(
    data_dir: Path = _DATA_DIR,
    database_url: str | None = _DB,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the API keys: id, scope, label, created, revoked (never the keys: only hashes are stored)."""
    from orchestrator.auth import list_keys

    rows = list_keys(_sessions(data_dir, database_url))
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("id", "scope", "name", "created", "revoked")
    for r in rows:
        t.add_row(r["id"], r["scope"], r["name"], r["created_at"] or "-", "yes" if r["revoked"] else "no")
    Console(width=None if sys.stdout.isatty() else 150).print(t)


def keys_revoke(
    key_id: str = typer.Argument(..., help="The key's id (from `hetagent keys list`; the part after 'hta_')."),
    data_dir: Path = _DATA_DIR,
    database_url: str | None = _DB,
) -> None:
    """Revoke an API key by id; a running daemon refuses it within 10 s."""
    from orchestrator.auth import key_id_of, revoke_key

    if key_id.startswith("hta_"):  # a whole key was pasted: take its id, never echo the secret
        key_id = key_id_of(key_id)
    row = revoke_key(_sessions(data_dir, database_url), key_id)
    if row is None:
        sys.stderr.write(f"error: no API key with id {key_id!r}\n")
        raise typer.Exit(2)
    sys.stderr.write(f"revoked key {row['id']} (scope {row['scope']})\n")


def keys_generate(
    scope: str = typer.Option("write", "--scope", help="read, write or admin (the line's first field)."),
) -> None:
    """Print a new key as a keys-file line ('<scope> <key>'), without storing it: for `api_keys_file`
    (HETAGENT_API_KEYS_FILE), e.g. a Kubernetes Secret the Helm chart mounts (apiKeys.existingSecret)."""
    from orchestrator.auth import SCOPES, generate_key

    if scope not in SCOPES:
        sys.stderr.write(f"error: unknown scope {scope!r}; choose one of {', '.join(SCOPES)}\n")
        raise typer.Exit(2)
    sys.stdout.write(f"{scope} {generate_key()}\n")
