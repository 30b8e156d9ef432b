"""A real PostgreSQL server for tests, started in a temporary directory (``initdb`` + ``pg_ctl``) and
stopped after the module. Import the fixture into a test module::

    from tests.support.postgres import postgres_url  # noqa: F401  (a pytest fixture)

It yields a SQLAlchemy URL (``postgresql+psycopg://postgres@127.0.0.1:<port>/hetagent``) of an empty
database; the daemon migrates it on start. A test that takes the server down and up again (an outage)
uses ``PostgresServer`` itself: ``stop()`` then ``start()`` keep the data and the port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def _as_postgres(*cmd: str) -> list[str]:
    """PostgreSQL refuses to run as root; run its tools as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, on a free loopback port, with a database
    ``hetagent``; ``stop``/``start`` take it down and bring it back on the same port and data."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="hetagent-pg-"))  # pytest's tmp dirs are root-only (0700)
        self.data = self.base / "data"
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        subprocess.run(
            _as_postgres("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
            check=True,
            capture_output=True,
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/hetagent"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        subprocess.run(
            _as_postgres(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.base / "log"),
                "-w",
                "-o",
                f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1",
                "start",
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: connections are closed, as in a failover; ``immediate``: a crash)."""
        subprocess.run(_as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"), capture_output=True)

    def create_database(self) -> None:
        import psycopg

        for _ in range(50):
            try:
                with psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
                ) as conn:
                    conn.execute("CREATE DATABASE hetagent")
                return
            except psycopg.OperationalError:
                time.sleep(0.2)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def _serve():
    server = PostgresServer()
    server.start()
    try:
        server.create_database()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def postgres_server():
    """A started ``PostgresServer`` with an empty database ``hetagent`` (removed after the module)."""
    yield from _serve()


@pytest.fixture(scope="module")
def postgres_url():
    """The URL of such a server's database (each fixture imports alone into a test module)."""
    for server in _serve():
        yield server.url
