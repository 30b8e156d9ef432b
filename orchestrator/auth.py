"""API keys: ``hta_<id>_<secret>``, stored as SHA-256 of the whole key (keys are 192-bit random, so
a fast hash is enough), with a scope: read < write < admin."""

from __future__ import annotations

import hashlib
import secrets
import time

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


CACHE_TTL_S = 10.0  # a revoked key stops working within this time
_cache: dict[tuple[int, str], tuple[float, str | None]] = {}


def lookup_scope(sessions: sessionmaker, key: str) -> str | None:
    """The scope of a valid, unrevoked key; None otherwise. Answers are cached for CACHE_TTL_S so
    the hot path (every request) does not hit the database."""
    digest = hash_key(key)
    now = time.monotonic()
    hit = _cache.get((id(sessions), digest))
    if hit is not None and now - hit[0] < CACHE_TTL_S:
        return hit[1]
    with sessions() as s:
        row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
    scope = None if row is None or row.revoked else row.scope
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[(id(sessions), digest)] = (now, scope)
    return scope


def allows(have: str, need: str) -> bool:
    return SCOPES.index(have) >= SCOPES.index(need)
