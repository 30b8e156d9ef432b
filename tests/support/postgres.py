"""A real PostgreSQL server for tests, started in a temporary directory (``initdb`` + ``pg_ctl``) and
stopped after the module. Import the fixture into a test module::

    from tests.support.postgres import postgres_url  # noqa: F401  (a pytest fixture)

It yields a SQLAlchemy URL (``postgresql+psycopg://postgres@127.0.0.1:<port>/hetagent``) of an empty
database; the daemon migrates it on start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest


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
