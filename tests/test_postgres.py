"""Persistence on a real PostgreSQL server (started for the test in a temporary directory)."""

from __future__ import annotations

import yaml

from orchestrator.service import Service
from orchestrator.settings import Settings
from tests.support.postgres import postgres_url  # noqa: F401  (a pytest fixture)

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


def test_state_survives_a_restart_on_postgres(postgres_url, tmp_path):  # noqa: F811 (the imported fixture)
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
            assert s.execute(text("select version_num from alembic_version")).scalar() == "0002"
            assert "PostgreSQL" in s.execute(text("select version()")).scalar()
    finally:
        second.stop()
