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


def test_a_replan_from_a_replica_whose_lease_passed_on_is_not_recorded(postgres_url):  # noqa: F811
    """Fencing: replica A leads, stalls past its ttl (its lease row's expiry set in the past), B takes the
    lease; A's re-plan is refused (NotLeader) and writes nothing, B's is recorded."""
    import datetime as dt

    import pytest
    from sqlalchemy import func, select, update

    from orchestrator.db import DeploymentRow, LeaseRow, ReplanRow
    from orchestrator.leader import LEADER, Leadership
    from orchestrator.store import NotLeader, Store

    a, b = Store(postgres_url, "replica-a"), Store(postgres_url, "replica-b")
    try:
        lead_a = Leadership(a, lambda *_: None, ttl_s=30, every_s=5)
        lead_b = Leadership(b, lambda *_: None, ttl_s=30, every_s=5)
        lead_a.step()
        lead_b.step()
        assert (lead_a.leader, lead_b.leader) == (True, False)
        graph = a.add_graph("fenced", GRAPH)
        old, new = (a.add_plan(graph["id"], {}, {"feasible": True, "n": n}) for n in (1, 2))
        with a.transaction() as s:
            s.add(DeploymentRow(id="d_fence", graph_id=graph["id"], plan_id=old["id"], state="ready", detail=""))
        a.record_replan("d_fence", "rate up", old["id"], new["id"], {}, {"p": 1}, fence_lease=LEADER)  # A leads

        with a.transaction() as s:  # A stalls past its ttl
            s.execute(
                update(LeaseRow).where(LeaseRow.name == LEADER).values(expires_at=func.now() - dt.timedelta(seconds=1))
            )
        lead_b.step()
        assert lead_b.leader
        with pytest.raises(NotLeader, match="replica-a no longer holds the 'leader' lease"):
            a.record_replan("d_fence", "rate down", new["id"], old["id"], {}, {"p": 2}, fence_lease=LEADER)
        with a.transaction() as s:
            assert s.get(DeploymentRow, "d_fence").plan_id == new["id"]  # A's refused re-plan left no trace
            assert s.scalar(select(func.count()).select_from(ReplanRow)) == 1
        b.record_replan("d_fence", "rate down", new["id"], old["id"], {}, {"p": 3}, fence_lease=LEADER)
        with b.transaction() as s:
            assert s.get(DeploymentRow, "d_fence").plan_id == old["id"]
            assert s.scalar(select(func.count()).select_from(ReplanRow)) == 2
    finally:
        a.close()
        b.close()
