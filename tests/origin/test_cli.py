from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import click
import httpx
import pytest
from click.testing import CliRunner

from keyswap.cli import main
from keyswap.origin.cli import origin
from tests.support import keys
from tests.support.asgi import free_port
from tests.support.jwks_server import JWKSServer, running_jwks_server
from tests.support.keys import b64u, claims, jwks, rsa_key

ISSUER = "https://gateway.test/__keyswap/issuer"
AUDIENCE = "https://api.test"
KEYSWAP = [sys.executable, "-c", "from keyswap.cli import main; main()"]


@pytest.fixture(autouse=True)
def _no_keyswap_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KEYSWAP_"):
            monkeypatch.delenv(name)


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["origin", *args], env=env)
    return result.exit_code, result.output.splitlines()


BASE = ("--jwks-url", "http://127.0.0.1:9/jwks.json", "--issuer", ISSUER)


class TestBadValues:
    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (("--issuer", ISSUER), "Missing option '--jwks-url'"),
            (("--jwks-url", "http://127.0.0.1:9/j"), "Missing option '--issuer'"),
            (("--jwks-url", "ftp://u:pw@host/jwks", "--issuer", ISSUER), "(got scheme 'ftp')"),
            (("--jwks-url", "file:///etc/passwd", "--issuer", ISSUER), "(got scheme 'file')"),
            (("--jwks-url", "jwks.json", "--issuer", ISSUER), "(got no scheme)"),
            (("--jwks-url", "https://", "--issuer", ISSUER), "valid host"),
            (
                ("--jwks-url", "http://u:pw@h:99999/?k=v", "--issuer", ISSUER),
                "(got 'http://h:99999/')",
            ),
            ((*BASE, "--bind-request", "--server", "granian"), "need --server uvicorn"),
            ((*BASE, "--token-format", "txn-token", "--profile", "rfc9068"), "drop --profile"),
            ((*BASE, "--bind-request", "--public-url", "ftp://x"), "(got scheme 'ftp')"),
            ((*BASE, "--bind-max-body", "-5"), "'--bind-max-body'"),
            ((*BASE, "--algorithms", "RS256,HS256"), "unsupported algorithm HS256"),
            ((*BASE, "--algorithms", "none"), "unsupported algorithm none"),
            ((*BASE, "--algorithms", "rs256"), "unsupported algorithm rs256"),
            ((*BASE, "--algorithms", ","), "unsupported algorithm nothing"),
            (
                (*BASE, "--leeway", "-1"),
                "'--leeway': must be a number of seconds between 0 and 300",
            ),
            ((*BASE, "--leeway", "301"), "'--leeway'"),
            ((*BASE, "--leeway", "inf"), "'--leeway'"),
            (
                (*BASE, "--jwks-cache-ttl", "0.5"),
                "'--jwks-cache-ttl': must be a number of seconds >= 1",
            ),
            (
                (*BASE, "--jwks-cooldown", "0"),
                "'--jwks-cooldown': must be a number of seconds >= 1",
            ),
            ((*BASE, "--jwks-cooldown", "nan"), "'--jwks-cooldown'"),
            ((*BASE, "--jwks-cache-ttl", "soon"), "'soon' is not a number of seconds"),
            ((*BASE, "--port", "0"), "'--port'"),
            ((*BASE, "--port", "http"), "'--port'"),
            ((*BASE, "--issuer", " "), "'--issuer': must not be empty"),
            ((*BASE, "--log-level", "loud"), "'--log-level'"),
            ((*BASE, "--discover"), "give --jwks-url or --discover, not both"),
            (("--issuer", "http://id.example.com", "--discover"), "http only on loopback"),
            (("--issuer", "id.example.com", "--discover"), "needs an https:// issuer URL"),
            ((*BASE, "--profile", "rfc9068"), "profile rfc9068 needs an audience"),
            ((*BASE, "--profile", "jwt"), "'--profile'"),
            ((*BASE, "--required-claims", " , "), "must name at least one claim"),
        ],
    )
    def test_a_bad_value_prints_one_error_line_and_exits_2(
        self, args: tuple[str, ...], expected: str
    ) -> None:
        code, lines = run_cli(*args)
        assert code == 2
        assert len(lines) == 1, lines
        assert lines[0].startswith("Error: ")
        assert expected in lines[0]

    def test_a_bad_environment_value_names_its_variable(self) -> None:
        code, lines = run_cli(*BASE, env={"KEYSWAP_JWKS_CACHE_TTL": "0"})
        assert code == 2
        assert lines == [
            "Error: Invalid value for '--jwks-cache-ttl': must be a number of seconds >= 1 "
            "(got '0') (from KEYSWAP_JWKS_CACHE_TTL)"
        ]

    def test_help_lists_every_flag(self) -> None:
        code, lines = run_cli("--help")
        text = "\n".join(lines)
        assert code == 0
        for flag in (
            "--jwks-url",
            "--issuer",
            "--audience",
            "--algorithms",
            "--host",
            "--port",
            "--leeway",
            "--jwks-cache-ttl",
            "--jwks-cooldown",
            "--log-level",
        ):
            assert flag in text

    def test_help_names_the_environment_variable_of_every_option_that_has_one(self) -> None:
        ctx = click.Context(origin)
        with_envvar = [
            p for p in origin.get_params(ctx) if isinstance(p, click.Option) and p.envvar
        ]
        assert len(with_envvar) >= 13, with_envvar  # every option of `keyswap origin`
        code, lines = run_cli("--help")
        assert code == 0
        help_text = " ".join(" ".join(lines).split())  # click wraps long entries
        for option in with_envvar:
            assert isinstance(option.envvar, str)
            assert f"env var: {option.envvar}" in help_text, option.envvar


# -- end to end: `keyswap origin` as a real subprocess against a real JWKS server ---------------


@dataclass
class Origin:
    process: subprocess.Popen[str]
    base: str

    def get(self, token: str | None = None, path: str = "/") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.get(self.base + path, headers=headers, timeout=5)

    def stop(self) -> str:
        """SIGTERM, wait, and return everything it logged."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err


def assert_clean_exit(origin: Origin) -> str:
    """Stop ``origin`` and check it shut down through the lifespan (verifier closed)."""
    log = origin.stop()
    # uvicorn re-raises the signal it handled after a graceful shutdown.
    assert origin.process.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete." in log
    return log


def start_origin(args: list[str], env: dict[str, str] | None = None) -> Origin:
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSWAP_")}
    full_env.update(env or {})
    if env is None or "KEYSWAP_PORT" not in env:
        args = [*args, "--port", str(port)]
    else:
        port = int(env["KEYSWAP_PORT"])
    process = subprocess.Popen(
        [*KEYSWAP, "origin", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    origin = Origin(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"keyswap origin exited early:\n{origin.stop()}")
        try:
            origin.get()
            return origin
        except httpx.TransportError:
            time.sleep(0.05)
    log = origin.stop()
    raise AssertionError(f"keyswap origin did not start:\n{log}")


@dataclass
class Running:
    origin: Origin
    jwks: JWKSServer
    key: keys.TestKey


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    key = rsa_key("origin-rsa")
    with running_jwks_server() as server:
        server.serve(jwks(key))
        origin = start_origin(
            [
                "--jwks-url",
                server.url,
                "--issuer",
                ISSUER,
                "--audience",
                AUDIENCE,
                "--algorithms",
                "RS256,ES256",
            ]
        )
        try:
            yield Running(origin, server, key)
        finally:
            assert_clean_exit(origin)


@pytest.mark.slow
class TestOriginProcess:
    def test_a_valid_token_gets_200_with_its_claims_as_json(self, running: Running) -> None:
        token_claims = claims(iss=ISSUER, aud=AUDIENCE, plan="gold")
        response = running.origin.get(running.key.sign(token_claims), "/any/path?x=1")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == token_claims

    def test_post_with_a_body_is_answered_too(self, running: Running) -> None:
        token = running.key.sign(claims(iss=ISSUER, aud=AUDIENCE))
        response = httpx.post(
            running.origin.base + "/orders",
            content=b"x" * 100_000,
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert (response.status_code, response.json()["sub"]) == (200, "consumer-1")

    def test_a_token_sent_only_in_a_chunked_trailer_is_no_token(self, running: Running) -> None:
        """uvicorn's httptools protocol merged trailer fields into the headers (security G19)."""
        token = running.key.sign(claims(iss=ISSUER, aud=AUDIENCE))
        port = int(running.origin.base.rsplit(":", 1)[1])
        request = (
            b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Trailer: Authorization\r\nConnection: close\r\n\r\n"
            b"5\r\nhello\r\n0\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b"No token provided" in answer

    def test_the_health_path_answers_without_a_token(self, running: Running) -> None:
        response = running.origin.get(path="/__keyswap/health")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.json() == {
            "status": "ok",
            "issuers": [{"issuer": ISSUER, "usable": True, "keys": 1}],
        }
        head = httpx.head(running.origin.base + "/__keyswap/health", timeout=5)
        assert (head.status_code, head.content) == (200, b"")

    def test_no_token_gets_401_no_token_provided(self, running: Running) -> None:
        response = running.origin.get()
        assert response.status_code == 401
        assert response.text == "No token provided"
        assert response.headers["www-authenticate"] == 'Bearer realm="keyswap"'

    @pytest.mark.parametrize(
        "kind", ["garbage", "other-key", "wrong-audience", "expired", "alg-none"]
    )
    def test_a_bad_token_gets_401_invalid_token(self, running: Running, kind: str) -> None:
        good = claims(iss=ISSUER, aud=AUDIENCE)
        token = {
            "garbage": "not-a-jwt",
            "other-key": rsa_key("origin-rsa", slot=1).sign(good),
            "wrong-audience": running.key.sign(claims(iss=ISSUER, aud="https://other.test")),
            "expired": running.key.sign(claims(iss=ISSUER, aud=AUDIENCE, now=1_000_000)),
            "alg-none": b64u(b'{"alg":"none"}') + "." + running.key.sign(good).split(".")[1] + ".",
        }[kind]
        response = running.origin.get(token)
        assert response.status_code == 401
        assert response.text == "Invalid token"
        assert response.headers["www-authenticate"].startswith(
            'Bearer realm="keyswap", error="invalid_token"'
        )


@pytest.mark.slow
def test_configured_by_environment_with_the_jwks_down_at_start_it_answers_503_then_recovers(
    jwks_server: JWKSServer,
) -> None:
    key = rsa_key("env-rsa")
    jwks_server.serve(jwks(key), status=503)
    port = free_port()
    origin = start_origin(
        [],
        env={
            "KEYSWAP_JWKS_URL": jwks_server.url,
            "KEYSWAP_ISSUER": ISSUER,
            "KEYSWAP_ALGORITHMS": "RS256",
            "KEYSWAP_PORT": str(port),
            "KEYSWAP_LEEWAY": "5",
            "KEYSWAP_JWKS_CACHE_TTL": "1",
            "KEYSWAP_JWKS_COOLDOWN": "1",
        },
    )
    try:
        token = key.sign(claims(iss=ISSUER, aud=None))
        down = origin.get(token)
        assert down.status_code == 503
        health = origin.get(path="/__keyswap/health")
        assert (health.status_code, health.json()["status"]) == (503, "unavailable")
        assert int(down.headers["retry-after"]) >= 1
        assert down.text == "Signing keys temporarily unavailable"

        jwks_server.serve(jwks(key))
        deadline = time.monotonic() + 15
        status = down.status_code
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            status = origin.get(token).status_code
            assert status in (200, 503)
        assert status == 200
        assert origin.get(token).json()["sub"] == "consumer-1"
        assert origin.get(path="/__keyswap/health").json()["status"] == "ok"
    finally:
        log = assert_clean_exit(origin)
    assert token not in log
    start_lines = [line for line in log.splitlines() if "keyswap origin on" in line]
    assert len(start_lines) == 1
    assert f"issuer={ISSUER}" in start_lines[0]
    assert f"jwks_url={jwks_server.url}" in start_lines[0]
    assert "algorithms=RS256" in start_lines[0]


@pytest.mark.slow
def test_a_bad_flag_in_a_real_process_prints_one_line_and_exits_non_zero() -> None:
    result = subprocess.run(
        [*KEYSWAP, "origin", *BASE, "--algorithms", "HS256"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("KEYSWAP_")},
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: Invalid value for '--algorithms': unsupported algorithm HS256 "
        "(supported: ES256, EdDSA, PS256, RS256)"
    ]


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_a_port_in_use_is_one_error_line_and_exit_1(server: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*KEYSWAP, "origin", *BASE, "--port", str(port), "--server", server],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"Error: cannot listen on 127.0.0.1:{port}: address already in use\n"
