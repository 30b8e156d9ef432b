"""API keys: ``hta_<id>_<secret>``, stored as SHA-256 of the whole key (keys are 192-bit random, so
a fast hash is enough), with a scope: read < write < admin."""

from __future__ import annotations

import hashlib
import secrets

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
    key_id = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(24)}"
    with sessions.begin() as s:
        s.add(ApiKeyRow(id=key_id, key_hash=hash_key(key), scope=scope, name=name))
    return key_id, key


def lookup_scope(sessions: sessionmaker, key: str) -> str | None:
    """The scope of a valid, unrevoked key; None otherwise."""
    with sessions() as s:
        row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(key)))
    if row is None or row.revoked:
        return None
    return row.scope


def allows(have: str, need: str) -> bool:
    return SCOPES.index(have) >= SCOPES.index(need)
