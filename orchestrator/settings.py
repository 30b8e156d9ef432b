"""Daemon settings: flags of `hetagent serve`, or HETAGENT_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import overload

from pydantic import BaseModel, ConfigDict, Field


@overload
def _env(name: str, default: str) -> str: ...
@overload
def _env(name: str, default: None = None) -> str | None: ...
def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"HETAGENT_{name}", default)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(Path(_env("DATA_DIR", ".hetagent")), description="SQLite file, models, indexes.")
    database_url: str | None = Field(
        _env("DATABASE_URL"), description="SQLAlchemy URL; default sqlite:///<data_dir>/hetagent.db."
    )
    ray_address: str | None = Field(
        _env("RAY_ADDRESS") or os.environ.get("RAY_ADDRESS"), description="Ray cluster to run on; default a local Ray."
    )
    cluster: str = Field(_env("CLUSTER", "local"), description="Cluster inventory (name or path) the daemon plans for.")
    model_dir: Path | None = Field(
        None, description="Weights every LLM node serves (default on CPU: the offline tiny model)."
    )
    max_body_bytes: int = Field(
        int(_env("MAX_BODY_BYTES", str(1 << 20))),
        gt=0,
        description="Largest accepted request body (413 past it, counted as it arrives, chunked or not).",
    )
    max_doc_depth: int = Field(
        int(_env("MAX_DOC_DEPTH", "64")),
        ge=4,
        description="Deepest nesting of a JSON or YAML body or spec (containers in containers); 400 past it.",
    )
    max_doc_nodes: int = Field(
        int(_env("MAX_DOC_NODES", "200000")),
        ge=100,
        description="Most values in a YAML body once its aliases are expanded (alias bombs); 400 past it.",
    )
    rate_limit_per_s: float = Field(
        float(_env("RATE_LIMIT_PER_S", "50")),
        ge=0,
        description="Requests per second each API key may make (token bucket; 429 past it); 0: no limit.",
    )
    rate_limit_burst: int = Field(
        int(_env("RATE_LIMIT_BURST", "100")), ge=1, description="Requests a key may make at once (bucket size)."
    )
    auth_failures_per_s: float = Field(
        float(_env("AUTH_FAILURES_PER_S", "1")),
        ge=0,
        description="Wrong API keys a client address may present per second (token bucket of auth_failures_burst); "
        "past it every request from that address gets 429, a right key too, until the bucket refills: keys cannot be "
        "guessed at speed. Behind a proxy all clients share its address. 0: no limit.",
    )
    auth_failures_burst: int = Field(
        int(_env("AUTH_FAILURES_BURST", "20")), ge=1, description="Wrong keys an address may present at once."
    )
    api_keys_file: Path | None = Field(
        Path(_env("API_KEYS_FILE", "")) if _env("API_KEYS_FILE") else None,
        description="File of '<scope> <key>' lines (e.g. a mounted Kubernetes Secret) whose keys are added to the "
        "database at start; a key revoked there stays revoked.",
    )
    cors_origins: list[str] = Field(
        [o for o in _env("CORS_ORIGINS", "").split(",") if o],
        description="Browser origins allowed to call the API (CORS); empty: CORS off.",
    )
    tool_allow: list[str] = Field(
        [h for h in _env("TOOL_ALLOW", "").split(",") if h],
        description="Hosts, addresses or networks (CIDR) that tool nodes may call although they are loopback, "
        "link-local or private; every other such target is refused (public addresses are always allowed).",
    )
    function_modules: list[str] = Field(
        [m for m in _env("FUNCTION_MODULES", "workers.transforms,workers.tools").split(",") if m],
        description="Python modules (and their submodules) whose callables a graph's transform and tool nodes "
        "may name in 'function'; a graph naming any other is refused (a callable runs code in the workers).",
    )
    max_runs_in_flight: int = Field(
        int(_env("MAX_RUNS_IN_FLIGHT", "256")),
        ge=1,
        description="Runs this daemon executes at once (its run threads); more wait, accepted, for a thread. Keep it "
        "above what the engines batch (their max_num_seqs) or it caps their batches (the simulator models it: "
        "SimOptions.max_runs_in_flight).",
    )
    max_graph_nodes: int = Field(500, description="Largest accepted agent graph, in spec nodes.")
    control_interval_s: float = Field(
        float(_env("CONTROL_INTERVAL_S", "10")),
        gt=0,
        description="Period of the control loop that re-plans deployments.",
    )
    control_enabled: bool = Field(True, description="Run the re-planning control loop.")
    control_window_s: float = Field(
        float(_env("CONTROL_WINDOW_S", "60")),
        gt=0,
        description="Arrival rate and latency are measured over this window.",
    )
    control_dwell_s: float = Field(
        float(_env("CONTROL_DWELL_S", "60")),
        ge=0,
        description="Minimum time between two changes of one deployment (no flapping).",
    )
    control_band: float = Field(
        float(_env("CONTROL_BAND", "0.3")),
        gt=0,
        description="Re-plan when the rate leaves [planned/(1+band), planned*(1+band)].",
    )

    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'hetagent.db').resolve()}"
