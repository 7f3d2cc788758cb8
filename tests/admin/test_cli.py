"""``keyswap admin`` as a real process: serves, takes its settings from flags and KEYSWAP_ADMIN_*,
refuses a port in use with one line (exit 1) before opening anything, warns on a non-loopback address;
its changes reach a gateway on PostgreSQL the way a CLI change does."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from keyswap.admin.cli import is_loopback
from keyswap.gateway.secret import ServerSecret
from keyswap.manage.actor import Actor
from keyswap.manage.context import Context
from keyswap.manage.tokens import NewAdminToken, create_admin_token
from keyswap.store import Store
from tests.support.asgi_server import free_port
from tests.support.gateway_state import SECRET_TEXT
from tests.support.keyswap_process import KEYSWAP, running_keyswap


def _token(db_url: str) -> str:
    store = Store(db_url)
    try:
        created = create_admin_token(
            Context(store, Actor.cli("test")),
            ServerSecret(SECRET_TEXT),
            NewAdminToken("ops", ("admin",)),
        )
    finally:
        store.close()
    return created.token


def test_keyswap_admin_serves_with_settings_from_the_environment(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'k.db'}"
    port = free_port()
    env = {
        "KEYSWAP_ADMIN_PORT": str(port),
        "KEYSWAP_ADMIN_DB": db_url,
        "KEYSWAP_SECRET": SECRET_TEXT,
    }
    with running_keyswap(["admin"], port=port, ready_path="/healthz", env=env) as process:
        token = _token(db_url)
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(process.url + "/v1/consumers", json={"name": "acme"}, headers=headers)
        assert created.status_code == 201
        assert httpx.get(process.url + "/readyz").status_code == 200
        assert httpx.get(process.url + "/v1/consumers").status_code == 401
    log = process.log()
    assert f"keyswap admin API on http://127.0.0.1:{port}" in log
    assert token not in log
    assert "request_id=" in log
    assert "plain HTTP" not in log


def test_a_port_in_use_is_one_line_and_exit_1_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "k.db"
        result = subprocess.run(
            [*KEYSWAP, "admin", "--port", str(port), "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=30,
            env={"KEYSWAP_SECRET": SECRET_TEXT, "PATH": "/usr/bin:/bin"},
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
    assert not db.exists()


def test_a_failed_start_leaves_no_new_database_behind(tmp_path: Path) -> None:
    result = subprocess.run(
        [*KEYSWAP, "admin", "--port", str(free_port()), "--db", str(tmp_path / "k.db")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"KEYSWAP_SECRET": "too-short", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "the server secret must be at least 32 characters" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_non_loopback_address_is_warned_about(tmp_path: Path) -> None:
    port = free_port()
    env = {"KEYSWAP_SECRET": SECRET_TEXT}
    args = ["admin", "--host", "0.0.0.0", "--port", str(port), "--db", str(tmp_path / "k.db")]
    with running_keyswap(args, port=port, ready_path="/healthz", env=env) as process:
        pass
    assert "plain HTTP: put TLS in front" in process.log()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
