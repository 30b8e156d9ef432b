"""Limits on what a client can make the daemon do: request bodies (size, JSON nesting) and request
rates per API key. Both answer problem+json (413, 400, 429), never a reset connection or a 500.

``BodyLimit`` is a plain ASGI middleware, outermost: it counts the body's bytes as they arrive, so
a body sent without Content-Length (chunked) or without ``Expect: 100-continue`` is refused as soon
as it passes ``max_body_bytes``. It then reads and discards the rest, up to ``drain_bytes``, before
answering: a server that closes a socket with unread data makes the kernel send a reset, and the
client never reads the 413. A JSON body (or one without a content type, which FastAPI parses as
JSON) is checked by ``compiler.limits.check_json_text`` before anything parses it."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from compiler.limits import DocumentError, check_json_text

_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def is_json_type(content_type: str) -> bool:
    """Bodies FastAPI would decode as JSON: application/json, any +json type, or no type at all."""
    ctype = content_type.split(";")[0].strip().lower()
    return ctype in ("", "application/json") or ctype.endswith("+json")


class BodyLimit:
    """ASGI middleware: 413 past ``max_bytes`` (declared or counted), 400 for JSON past ``max_depth``."""

    def __init__(self, app: Any, max_bytes: int, max_depth: int, drain_bytes: int = 64 << 20):
        self.app, self.max_bytes, self.max_depth, self.drain_bytes = app, max_bytes, max_depth, drain_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        declared = headers.get("content-length")
        if declared is not None and not declared.strip().isdigit():
            await self._problem(scope, receive, send, 400, "bad request", f"Content-Length {declared[:40]!r}")
            return
        too_large = f"the body is larger than the limit of {self.max_bytes} bytes (setting max_body_bytes)"
        if declared is not None and int(declared) > self.max_bytes:
            if headers.get("expect", "").lower() != "100-continue":  # else the client has not sent it
                await self._drain(receive, 0)
            await self._problem(scope, receive, send, 413, "request too large", too_large)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nothing to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                if more:
                    await self._drain(receive, len(body))
                await self._problem(scope, receive, send, 413, "request too large", too_large)
                return
        if body and is_json_type(headers.get("content-type", "")):
            try:
                check_json_text(bytes(body), self.max_depth)
            except DocumentError as exc:
                detail = f"{exc}; the body was not parsed"
                await self._problem(scope, receive, send, 400, "body over a parsing limit", detail, limit=exc.limit)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # later calls: disconnect detection (SSE streams)

        await self.app(scope, replay, send)

    async def _drain(self, receive: Any, seen: int) -> None:
        """Read and discard the rest of the body, up to drain_bytes, so the client reads the answer."""
        while seen <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    @staticmethod
    async def _problem(
        scope: dict, receive: Any, send: Any, status: int, title: str, detail: str, **extra: Any
    ) -> None:
        from orchestrator.errors import problem

        await problem(status, title, detail, instance=scope.get("path", ""), **extra)(scope, receive, send)


class RateLimiter:
    """A token bucket per API key: ``rate_per_s`` tokens a second, at most ``burst`` saved up; one
    request takes one token. ``rate_per_s`` 0 turns the limit off. In memory, per process: with
    several replicas behind a balancer each one allows the rate (the limit is a guard, not a quota)."""

    MAX_KEYS = 100_000  # buckets kept; past it the full (idle) ones are forgotten

    def __init__(self, rate_per_s: float, burst: int):
        self.rate_per_s, self.burst = rate_per_s, max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at monotonic time)
        self._lock = threading.Lock()

    def take(self, key: str, take: bool = True) -> float:
        """0 when the request may go on (a token is taken, unless ``take`` is False: a look only); else the
        seconds until a token is due."""
        if self.rate_per_s <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            if tokens < 1.0:
                if take:
                    self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate_per_s
            if take:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > self.MAX_KEYS:
                    self._forget_full(now)
            return 0.0

    def _forget_full(self, now: float) -> None:
        for k, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate_per_s >= self.burst:
                del self._buckets[k]


def retry_after_s(wait_s: float) -> int:
    """Whole seconds for a Retry-After header: never 0 while the client must wait."""
    return max(1, math.ceil(wait_s))
