"""Alembic environment: runs on the connection handed in by orchestrator.db.open_database."""

from alembic import context

from orchestrator.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through orchestrator.db.open_database (it passes the connection)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
