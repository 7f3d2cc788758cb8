"""`keyswap gateway` as a real subprocess: start-up errors are one line, the banner says what is in force."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from keyswap.gateway.cli import gateway as gateway_command
from keyswap.gateway.cli import new_database_guard, redis_display
from keyswap.gateway.wellknown import JWKS_PATH
from tests.support.asgi_server import free_port
from tests.support.running_gateway import eventually

KEYSWAP = str(Path(sys.executable).with_name("keyswap"))
REDIS_URL = "redis://127.0.0.1:6379/0"
# Variables the gateway reads: the tests set what they need and nothing leaks in from outside.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("KEYSWAP_")}


def _gateway(*args: str, db: Path) -> list[str]:
    return [KEYSWAP, "gateway", "--upstream", "http://127.0.0.1:9", "--db", str(db), *args]


def _banner(args: list[str]) -> str:
    """Start the gateway, read its stderr up to the rate-limit line, stop it once it serves; returns
    what it said."""
    port = free_port()
    process = subprocess.Popen(
        [*args, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
    )
    assert process.stderr is not None
    said = []
    try:
        for line in process.stderr:
            said.append(line)
            if "rate limits:" in line:
                break

        def serving() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}{JWKS_PATH}").status_code == 200
            except httpx.TransportError:
                return False

        eventually(serving, timeout=20)
    finally:
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[1]
    assert process.returncode == 0, "".join(said) + rest
    return "".join(said) + rest


def test_a_port_in_use_is_one_error_line_before_anything_else(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            _gateway("--port", str(port), db=tmp_path / "k.db"),
            capture_output=True,
            text=True,
            timeout=60,
            env=CLEAN_ENV,
        )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"Error: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert not (tmp_path / "k.db").exists()  # nothing was loaded or created


def test_a_failed_start_leaves_no_new_database_behind(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    done = subprocess.run(
        _gateway("--port", str(free_port()), db=db),
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN_ENV, "KEYSWAP_SECRET": "too-short"},
    )
    assert done.returncode == 1
    assert done.stderr.startswith("Error: the server secret must be at least 32 characters")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_start_keeps_a_database_that_was_there(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    made = subprocess.run(
        [KEYSWAP, "consumers", "create", "acme", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=CLEAN_ENV,
    )
    assert made.returncode == 0, made.stderr
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run(
        _gateway("--port", str(free_port()), db=db),
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN_ENV, "KEYSWAP_SECRET": "too-short"},
    )
    assert done.returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert "k.db" in before


def test_a_named_database_in_a_missing_directory_is_one_error_line(tmp_path: Path) -> None:
    db = tmp_path / "typo" / "k.db"
    result = CliRunner().invoke(
        gateway_command, ["--upstream", "http://127.0.0.1:9", "--db", str(db)], env=CLEAN_ENV
    )
    assert result.exit_code == 1
    assert result.output == (
        f"Error: cannot create the database {db}: the directory {db.parent} does not exist\n"
    )
    assert not db.parent.exists()


def test_an_unreachable_redis_is_named_in_the_banner_without_its_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    said = _banner(
        _gateway(
            "--redis",
            f"redis://:hunter2secret@127.0.0.1:{port}/0",
            db=tmp_path / "k.db",
        )
    )
    assert (
        f"rate limits: per node until Redis at redis://127.0.0.1:{port}/0 is reachable "
        "(then shared)" in said
    )
    assert "shared in Redis" not in said
    assert "hunter2secret" not in said


def test_a_reachable_redis_shares_the_rate_limits(tmp_path: Path) -> None:
    said = _banner(_gateway("--redis", REDIS_URL, db=tmp_path / "k.db"))
    assert "changes: Redis pub/sub + polling; rate limits: shared in Redis" in said


def test_without_redis_rate_limits_are_per_node(tmp_path: Path) -> None:
    said = _banner(_gateway("--rate-limit", "10/s", db=tmp_path / "k.db"))
    assert "changes: polling; rate limits: per node, default 10/1s;" in said


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://host:6379/0"),
        ("rediss://user:pw@host/1?password=pw2", "rediss://host/1"),
        ("unix:///run/redis.sock?password=pw", "unix:///run/redis.sock"),
    ],
)
def test_redis_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert redis_display(url) == shown


def test_client_timeouts_and_caps_come_from_flags_and_variables(tmp_path: Path) -> None:
    """`--head-timeout` ($KEYSWAP_HEAD_TIMEOUT) reaches the server: a silent connection is closed."""
    port = free_port()
    env = {**CLEAN_ENV, "KEYSWAP_HEAD_TIMEOUT": "0.3", "KEYSWAP_MAX_CLIENT_CONNECTIONS": "50"}
    process = subprocess.Popen(
        [*_gateway("--port", str(port), "--keep-alive-timeout", "0.3", db=tmp_path / "k.db")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:

        def serving() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}{JWKS_PATH}").status_code == 200
            except httpx.TransportError:
                return False

        eventually(serving, timeout=20)
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            assert sock.recv(1024) == b""  # closed by the head timeout, well before 3 s
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


def _start_that_fails(url: str, *creates: Path, started: bool = False) -> None:
    """A start-up under the guard that creates ``creates``, then fails."""
    with new_database_guard(url) as guard:
        for path in creates:
            path.write_text("x")
        if started:
            guard.started()
        raise RuntimeError("start-up failed")


def test_the_new_database_guard_removes_only_what_a_failed_start_created(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    url = f"sqlite:///{db}"
    with pytest.raises(RuntimeError):
        _start_that_fails(url, db, tmp_path / "k.db-wal", tmp_path / "k.db.secret")
    assert list(tmp_path.iterdir()) == []
    # once started, a failure keeps everything
    with pytest.raises(RuntimeError):
        _start_that_fails(url, db, started=True)
    assert db.exists()
    # a database that was there is never touched, nor a secret file that was there
    with pytest.raises(RuntimeError):
        _start_that_fails(url)
    assert db.exists()
    (tmp_path / "other.db.secret").write_text("s")
    with pytest.raises(RuntimeError):
        _start_that_fails(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "other.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.db", "other.db.secret"]
    # other databases: nothing to remove
    with pytest.raises(RuntimeError):
        _start_that_fails("postgresql+psycopg://h/db")
