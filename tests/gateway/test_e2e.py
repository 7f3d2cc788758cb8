"""Consumer -> gateway -> `keyswap origin` app, on real servers, with changes made by other processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from click.testing import CliRunner

from keyswap.gateway.cli import gateway as gateway_command
from keyswap.gateway.keyring import Keyring
from keyswap.gateway.secret import load_secret
from keyswap.gateway.wellknown import JWKS_PATH
from keyswap.origin.app import create_app
from keyswap.store import Store
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.asgi_server import ServerThread, bound_socket, free_port
from tests.support.gateway_state import database_bytes
from tests.support.running_gateway import Gateway, eventually, running_gateway

KEYSWAP = str(Path(sys.executable).with_name("keyswap"))


class RecordingApp:
    """Wraps the origin app and keeps the bearer tokens it was sent (to see which kid signed)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.tokens: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"authorization":
                    self.tokens.append(value.decode().removeprefix("Bearer "))
        await self.app(scope, receive, send)

    def last_kid(self) -> str:
        kid: str = jwt.get_unverified_header(self.tokens[-1])["kid"]
        return kid


@dataclass
class Chain:
    gateway: Gateway
    origin: RecordingApp


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    origin_sock = bound_socket()
    origin_url = f"http://127.0.0.1:{origin_sock.getsockname()[1]}"
    with running_gateway(tmp_path, origin_url, alg="ES256", real_clock=True) as gateway:
        verifier = Verifier(
            IssuerConfig(
                issuer=gateway.url + "/__keyswap/issuer",
                jwks_url=gateway.url + JWKS_PATH,
                audience=origin_url,
                algorithms=("ES256",),
            )
        )
        origin = RecordingApp(create_app(verifier))
        server = ServerThread(origin, sock=origin_sock).start()
        try:
            yield Chain(gateway, origin)
        finally:
            server.stop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEYSWAP, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


def test_the_origin_answers_with_the_claims_it_verified(chain: Chain) -> None:
    response = chain.gateway.get("/hello")

    assert response.status_code == 200
    claims = response.json()
    assert claims["sub"] == "acme"
    assert claims["metadata"] == {"plan": "free"}
    assert claims["key_id"] == chain.gateway.key_id
    assert claims["iss"] == chain.gateway.url + "/__keyswap/issuer"
    assert chain.gateway.key not in response.text


def test_the_keys_revoke_cli_refuses_the_key_on_the_running_gateway_within_five_seconds(
    chain: Chain,
) -> None:
    assert chain.gateway.get("/before").status_code == 200

    done = _cli("keys", "revoke", chain.gateway.key_id, "--db", chain.gateway.db_url)
    assert done.returncode == 0, done.stderr

    eventually(lambda: chain.gateway.get("/after").status_code == 401, timeout=5)


def test_a_key_expired_by_the_cli_is_refused_within_five_seconds_and_its_successor_works(
    chain: Chain,
) -> None:
    assert chain.gateway.get("/before").status_code == 200

    done = _cli(
        "keys", "roll", chain.gateway.key_id, "--grace", "0", "--json", "--db", chain.gateway.db_url
    )
    assert done.returncode == 0, done.stderr
    new_key = json.loads(done.stdout)["key"]

    eventually(lambda: chain.gateway.get("/old").status_code == 401, timeout=5)
    assert chain.gateway.get("/new", key=new_key).status_code == 200


def test_rotation_by_another_process_under_traffic_fails_no_request(chain: Chain) -> None:
    gateway = chain.gateway
    assert gateway.get("/warm").status_code == 200
    old_kid = chain.origin.last_kid()
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {gateway.key}"}) as client:
            while not stop.is_set():
                statuses.append(client.get(gateway.url + "/load").status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        other = Store(gateway.db_url)
        try:
            Keyring(other, load_secret(gateway.db_url, env={})).rotate()
        finally:
            other.close()
        eventually(lambda: chain.origin.last_kid() != old_kid, timeout=10)
        count = len(statuses)
        eventually(lambda: len(statuses) > count + 5, timeout=5)
    finally:
        stop.set()
        worker.join(10)

    assert statuses
    assert set(statuses) == {200}
    kids = [k["kid"] for k in httpx.get(gateway.url + JWKS_PATH).json()["keys"]]
    assert old_kid in kids  # retired, still published for tokens in flight
    assert len(kids) == 3


def test_neither_the_database_nor_the_logs_hold_a_key_in_clear(
    chain: Chain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    chain.gateway.get("/x")
    httpx.get(chain.gateway.url + "/x", headers={"Authorization": "Bearer ks_wrong"})
    chain.gateway.admin.flush_last_used(force=True)

    assert chain.gateway.key not in caplog.text
    assert chain.origin.tokens[-1] not in caplog.text
    assert chain.gateway.key.encode() not in database_bytes(chain.gateway.db_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upstream", "localhost:7878"], "upstream must be an absolute http(s) URL"),
        (["--upstream", "http://h", "--public-url", "h:1"], "public URL must be an absolute"),
        (["--upstream", "http://h", "--token-ttl", "0"], "--token-ttl"),
        (["--upstream", "http://h", "--token-ttl", "1.5"], "whole seconds"),
        (["--upstream", "http://h", "--upstream-timeout", "soon"], "invalid duration"),
        (["--upstream", "http://h", "--alg", "HS256"], "--alg"),
        ([], "--upstream"),
    ],
)
def test_bad_gateway_options_print_one_error_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(
        gateway_command, [*args, "--db", str(tmp_path / "k.db")], env={"KEYSWAP_UPSTREAM": ""}
    )
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error:")
    assert message in lines[0]


def test_keyswap_gateway_serves_until_sigterm_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            KEYSWAP,
            "gateway",
            "--upstream",
            f"http://127.0.0.1:{free_port()}",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "k.db"),
            "--alg",
            "EdDSA",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def serving() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}{JWKS_PATH}").status_code == 200
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()
                return False

        eventually(serving, timeout=20)
        keys = httpx.get(f"http://127.0.0.1:{port}{JWKS_PATH}").json()["keys"]
        assert {k["alg"] for k in keys} == {"EdDSA"}
        assert httpx.get(f"http://127.0.0.1:{port}/x").status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "GET /x 401" in stderr
    assert "Traceback" not in stderr
