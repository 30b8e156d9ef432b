"""Live terminal view of one graph run: a row per node (state, device, replica, time) and the
streamed tokens of the final LLM calls. Fed by GraphRunner's ``on_event`` callback."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

_STYLE = {"waiting": "dim", "running": "yellow", "retry": "magenta", "done": "green", "failed": "bold red"}
_MAX_STREAM_CHARS = 2000


class RunProgress:
    """Context manager; pass ``self.on_event`` to ``GraphRunner.run``."""

    def __init__(self, node_names: list[str], console: Console):
        self.rows: dict[str, dict[str, Any]] = {n: {"state": "waiting"} for n in node_names}
        self.streams: dict[str, str] = {}
        self.console = console
        self._live = Live(self._render(), console=console, refresh_per_second=8, transient=False)

    def __enter__(self) -> RunProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.update(self._render())
        self._live.__exit__(*exc)

    def on_event(self, kind: str, name: str, data: dict) -> None:
        row = self.rows.get(name)
        if kind == "token":
            self.streams[name] = (self.streams.get(name, "") + data.get("text", ""))[-_MAX_STREAM_CHARS:]
        elif row is not None and kind == "started":
            row.update(
                state="running",
                device=data.get("device"),
                replica=data.get("replica"),
                attempt=data.get("attempt", 1),
                t0=time.perf_counter(),
            )
        elif row is not None and kind == "retry":
            row.update(state="retry", error=data.get("error"))
        elif row is not None and kind == "finished":
            row.update(state="done", ms=data.get("ms"))
        elif row is not None and kind == "failed":
            row.update(state="failed", error=data.get("error"))
        self._live.update(self._render())

    def _render(self) -> Group:
        t = Table(box=None, pad_edge=False)
        for col in ("node", "state", "device", "replica", "attempt", "ms"):
            t.add_column(col)
        now = time.perf_counter()
        for name, r in self.rows.items():
            ms = r.get("ms")
            if ms is None and r["state"] == "running":
                ms = (now - r["t0"]) * 1000.0
            state = r["state"] + (f" ({r['error']})" if r.get("error") and r["state"] != "done" else "")
            t.add_row(
                name,
                Text(state, style=_STYLE.get(r["state"], "")),
                str(r.get("device") or ""),
                "" if r.get("replica") is None else str(r["replica"]),
                str(r.get("attempt") or ""),
                "" if ms is None else f"{ms:.0f}",
            )
        parts: list[Any] = [t]
        for name, text in self.streams.items():
            parts.append(Text(f"{name} ▸ ", style="bold") + Text(text))
        return Group(*parts)
