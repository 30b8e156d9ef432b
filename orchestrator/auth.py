"""API keys: ``hta_<id>_<secret>``, stored as SHA-256 of the whole key (keys are 192-bit random, so
a fast hash is enough), with a scope: read < write < admin. A request's key is looked up by its id
and its hash compared in constant time; keys are listed and revoked by id, and never logged. Keys can
also come from a file (``api_keys_file``: a Kubernetes Secret mounted into the daemon's pod), imported
at start; a key revoked in the database stays revoked."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from orchestrator.db import ApiKeyRow

SCOPES = ("read", "write", "admin")
KEY_PREFIX = "hta"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(sessions: sessionmaker, scope: str, name: str = "") -> tuple[str, str]:
    """Store a new key; returns (key id, the key). The key itself is shown once and never stored."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    key = generate_key()
    key_id = key_id_of(key)
    with sessions.begin() as s:
        s.add(ApiKeyRow(id=key_id, key_hash=hash_key(key), scope=scope, name=name))
    return key_id, key


class KeysFileError(ValueError):
    """The API keys file cannot be used as it is (the message names the line; never the key)."""


def read_keys_file(path: Path) -> list[tuple[str, str, str]]:
    """(key id, key hash, scope) per key line of ``path`` (``<scope> <key>``; blank lines and ``#``
    comments skipped); KeysFileError names the first bad line, never the key."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise KeysFileError(f"API keys file {path}: {exc.strerror or exc}") from None
    keys: list[tuple[str, str, str]] = []
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2 or fields[0] not in SCOPES:
            raise KeysFileError(f"API keys file {path}, line {n}: expected '<scope> <key>' with scope one of {SCOPES}")
        key_id = key_id_of(fields[1])
        if not key_id or len(fields[1]) < len(KEY_PREFIX) + 2 + 8 + 24:
            raise KeysFileError(
                f"API keys file {path}, line {n}: not a key of the form {KEY_PREFIX}_<id>_<secret> "
                "(id without '_', secret of 24+ characters; `hetagent keys generate` prints one)"
            )
        keys.append((key_id, hash_key(fields[1]), fields[0]))
    return keys


def import_keys_file(sessions: sessionmaker, path: Path) -> int:
    """Store the keys of ``path`` that the database lacks; returns how many were added. A key whose id
    is stored with another hash is an error (two keys cannot share an id); one already stored, revoked
    or not, is left as it is."""
    added = 0
    with sessions.begin() as s:
        for key_id, digest, scope in read_keys_file(path):
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                s.add(ApiKeyRow(id=key_id, key_hash=digest, scope=scope, name=f"from {path.name}"))
                added += 1
            elif not hmac.compare_digest(row.key_hash, digest):
                raise KeysFileError(f"API keys file {path}: key id {key_id!r} is already stored for another key")
    return added


def generate_key() -> str:
    """A fresh key of the stored form, not stored (for a keys file)."""
    return f"{KEY_PREFIX}_{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"


CACHE_TTL_S = 10.0  # a key revoked by another process stops working within this time (at once in this one)
_cache: dict[tuple[int, str], tuple[float, str, str | None]] = {}  # (db, key id) -> (at, key hash, scope)
_NO_KEY = hash_key("")  # compared against when the id is unknown, so that case takes as long


def key_id_of(key: str) -> str:
    """The id part of ``hta_<id>_<secret>`` ("" if the key has another shape); the id is not secret."""
    parts = key.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == KEY_PREFIX else ""


def lookup_scope(sessions: sessionmaker, key: str) -> str | None:
    """The scope of a valid, unrevoked key; None otherwise. The stored hash is found by the key's id
    and compared with ``hmac.compare_digest`` (constant time); rows are cached for CACHE_TTL_S so the
    hot path (every request) does not hit the database."""
    digest, key_id = hash_key(key), key_id_of(key)
    now = time.monotonic()
    hit = _cache.get((id(sessions), key_id))
    if hit is None or now - hit[0] >= CACHE_TTL_S:
        row = None
        if key_id:
            with sessions() as s:
                row = s.get(ApiKeyRow, key_id)
        if len(_cache) > 10_000:
            _cache.clear()
        hit = (now, _NO_KEY, None) if row is None else (now, row.key_hash, None if row.revoked else row.scope)
        _cache[(id(sessions), key_id)] = hit
    return hit[2] if hmac.compare_digest(hit[1], digest) else None


def list_keys(sessions: sessionmaker) -> list[dict[str, Any]]:
    """Every key's id, label, scope, creation time and revocation; never a key or its hash."""
    with sessions() as s:
        rows = s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)).all()
        return [
            {
                "id": r.id,
                "name": r.name,
                "scope": r.scope,
                "created_at": r.created_at.isoformat() if r.created_at else None,
                "revoked": bool(r.revoked),
            }
            for r in rows
        ]


def revoke_key(sessions: sessionmaker, key_id: str) -> dict[str, Any] | None:
    """Revoke a key by id (idempotent); None if there is no such key. Effective at once in this
    process, within CACHE_TTL_S in other replicas."""
    with sessions.begin() as s:
        row = s.get(ApiKeyRow, key_id)
        if row is None:
            return None
        row.revoked = True
    for k in [k for k in _cache if k[1] == key_id]:
        _cache.pop(k, None)
    return next(k for k in list_keys(sessions) if k["id"] == key_id)


def allows(have: str, need: str) -> bool:
    return SCOPES.index(have) >= SCOPES.index(need)
