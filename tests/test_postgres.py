"""Persistence on a real PostgreSQL server (started for the test in a temporary directory)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest
import yaml

from orchestrator.service import Service
from orchestrator.settings import Settings

GRAPH = {
    "apiVersion": "hetagent.dev/v1alpha1",
    "kind": "AgentGraph",
    "metadata": {"name": "pg"},
    "spec": {
        "sla": {"e2e_ms": 5000},
        "inputs": {"text": {"type": "string"}},
        "nodes": [
            {
                "name": "redact",
                "kind": "transform",
                "function": "workers.transforms:redact_pii",
                "inputs": {"text": "{{ inputs.text }}"},
            }
        ],
    },
}


def _as_postgres(*cmd: str) -> list[str]:
    """PostgreSQL refuses to run as root; run its tools as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.fixture(scope="module")
def postgres_url():
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="hetagent-pg-"))  # pytest's tmp dirs are root-only (0700)
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    subprocess.run(
        _as_postgres("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
        check=True,
        capture_output=True,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        _as_postgres(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(base / "log"),
            "-w",
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
            "start",
        ),
        check=True,
        capture_output=True,
    )
    try:
        import psycopg

        for _ in range(50):
            try:
                with psycopg.connect(
                    f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
                ) as conn:
                    conn.execute("CREATE DATABASE hetagent")
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/hetagent"
    finally:
        subprocess.run(_as_postgres("pg_ctl", "-D", str(data), "-m", "immediate", "stop"), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_state_survives_a_restart_on_postgres(postgres_url, tmp_path):
    from sqlalchemy import text

    settings = Settings(data_dir=tmp_path, database_url=postgres_url, control_enabled=False)
    first = Service(settings)
    first.start()
    graph = first.create_graph(yaml.safe_load(yaml.safe_dump(GRAPH)))
    plan = first.create_plan(graph["id"], None, 1.0)
    assert plan["plan"]["feasible"]
    # a run left in flight by a daemon that died (written the way create_run writes it)
    from orchestrator.db import DeploymentRow, utcnow
    from orchestrator.store import RUN_INSERT

    with first.store.transaction() as s:
        s.add(DeploymentRow(id="d_pg", graph_id=graph["id"], plan_id=plan["id"], state="stopped", detail="", pools={}))
    first.store.writer.write(
        (
            RUN_INSERT,
            {
                "id": "r_pg",
                "graph_id": graph["id"],
                "deployment_id": "d_pg",
                "inputs": {"text": "x"},
                "created_at": utcnow(),
                "status": "running",
                "notes": [],
                "events": [],
            },
        )
    )
    first.stop()

    second = Service(settings)  # a new daemon on the same database
    second.start()
    try:
        assert second.get_graph(graph["id"])["spec"]["metadata"]["name"] == "pg"
        assert second.get_plan(graph["id"], plan["id"])["plan"] == plan["plan"]
        run = second.get_run("r_pg")
        assert run["status"] == "interrupted" and "daemon stopped" in run["error"]
        with second.store.sessions() as s:  # really PostgreSQL, migrated by Alembic
            assert s.execute(text("select version_num from alembic_version")).scalar() == "0001"
            assert "PostgreSQL" in s.execute(text("select version()")).scalar()
    finally:
        second.stop()
