"""API keys from a file (`api_keys_file` / HETAGENT_API_KEYS_FILE): what the Helm chart mounts from an
existing Secret (apiKeys.existingSecret), so that clients hold keys before the daemon has ever run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestrator import auth


def _app(data_dir, keys_file):
    from orchestrator.app import create_app
    from orchestrator.settings import Settings

    return create_app(Settings(data_dir=data_dir, control_enabled=False, rate_limit_per_s=0, api_keys_file=keys_file))


def test_keys_of_the_file_work_with_their_scopes_and_a_revoked_one_stays_revoked(tmp_path):
    from fastapi.testclient import TestClient

    admin, reader = auth.generate_key(), auth.generate_key()
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# ops keys\nadmin {admin}\n\nread   {reader}\n")
    data = tmp_path / "data"
    with TestClient(_app(data, keys_file)) as c:
        assert c.get("/v1/graphs", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
        # a read key cannot write: the scope of the file's line, not a default
        denied = c.post("/v1/graphs", json={}, headers={"Authorization": f"Bearer {reader}"})
        assert denied.status_code == 403
        listed = c.get("/v1/keys", headers={"Authorization": f"Bearer {admin}"})
        assert listed.status_code == 200
        assert {(k["id"], k["scope"]) for k in listed.json()} == {
            (auth.key_id_of(admin), "admin"),
            (auth.key_id_of(reader), "read"),
        }
        assert admin not in listed.text and reader not in listed.text
        revoked = c.delete(f"/v1/keys/{auth.key_id_of(reader)}", headers={"Authorization": f"Bearer {admin}"})
        assert revoked.status_code == 200
    # restart on the same database with the same file: the revoked key is not brought back
    with TestClient(_app(data, keys_file)) as c:
        assert c.get("/v1/graphs", headers={"Authorization": f"Bearer {reader}"}).status_code == 401
        assert c.get("/v1/graphs", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        assert len(c.get("/v1/keys", headers={"Authorization": f"Bearer {admin}"}).json()) == 2  # not added twice


@pytest.mark.parametrize(
    "line, says",
    [
        ("superuser {key}", "line 2: expected '<scope> <key>'"),
        ("write", "line 2: expected '<scope> <key>'"),
        ("write hta_short_x", "line 2: not a key of the form"),
        ("write {key} extra", "line 2: expected '<scope> <key>'"),
    ],
)
def test_a_bad_line_is_named_and_the_key_never_shown(tmp_path, line, says):
    key = auth.generate_key()
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"admin {auth.generate_key()}\n{line.format(key=key)}\n")
    with pytest.raises(auth.KeysFileError) as err:
        auth.read_keys_file(keys_file)
    assert says in str(err.value) and key not in str(err.value)


def test_two_keys_with_one_id_are_refused(tmp_path):
    from orchestrator.db import open_database

    sessions = open_database(f"sqlite:///{tmp_path / 'k.db'}")
    stored_id, _ = auth.create_key(sessions, "write")
    other = f"hta_{stored_id}_{'x' * 32}"  # same id, another secret
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"admin {other}\n")
    with pytest.raises(auth.KeysFileError, match="already stored for another key"):
        auth.import_keys_file(sessions, keys_file)
    assert [k["scope"] for k in auth.list_keys(sessions)] == ["write"]  # nothing half-imported


def test_serve_refuses_a_bad_keys_file_before_starting(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("owner hta_abcd1234_" + "y" * 32 + "\n")
    env = {**os.environ, "HETAGENT_API_KEYS_FILE": str(keys_file)}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "serve", "--data-dir", str(tmp_path / "d"), "--port", "9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "line 1" in proc.stderr and "y" * 32 not in proc.stderr + proc.stdout


def test_keys_generate_prints_a_file_line_that_reads_back(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "keys", "generate", "--scope", "admin"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    keys_file = tmp_path / "keys"
    keys_file.write_text(proc.stdout)
    ((key_id, digest, scope),) = auth.read_keys_file(keys_file)
    assert scope == "admin" and digest == auth.hash_key(proc.stdout.split()[1]) and key_id
