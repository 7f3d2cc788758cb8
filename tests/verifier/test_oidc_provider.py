"""Against a real, certified OpenID provider: panva's ``oidc-provider`` (Node), serving on 127.0.0.1.

tests/oidc/provider.mjs issues RFC 9068 JWT access tokens (``typ: at+jwt``) by client_credentials with
resource indicators, one client per algorithm. keyswap finds the JWKS by discovery, requires the
RFC 9068 profile and verifies all four algorithms, in Python and through ``keyswap origin``.

Skipped (with the reason) when ``node`` or the npm packages are absent: ``npm ci --prefix tests/oidc``
installs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyswap.errors import BadSignature, InvalidAudience, InvalidTokenType
from keyswap.verifier.jws import b64url_decode, b64url_encode
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.asgi_server import free_port
from tests.support.keyswap_process import running_keyswap
from tests.support.services import require_tool

HERE = Path(__file__).resolve().parents[1] / "oidc"
ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
RESOURCE = "https://api.test"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _provider_installed() -> None:
    """Skip (fail when KEYSWAP_REQUIRE_SERVICES=1, as in CI) without node or the npm packages."""
    if shutil.which("node") is None:
        require_tool("node is not installed")
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        require_tool("oidc-provider is not installed (npm ci --prefix tests/oidc)")


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    """Start the provider; its issuer URL (http://127.0.0.1:<port>)."""
    node = shutil.which("node")
    assert node is not None
    process = subprocess.Popen(
        [node, str(HERE / "provider.mjs")],
        cwd=HERE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"PATH": "/usr/bin:/bin", "RESOURCE": RESOURCE},
    )
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(30)
    try:
        if not first or not first[0].strip():
            raise AssertionError("the OpenID provider did not start")
        yield str(json.loads(first[0])["issuer"])
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def access_token(issuer: str, alg: str, resource: str = RESOURCE) -> str:
    """An access token from the provider's token endpoint (client_credentials)."""
    response = httpx.post(
        issuer + "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": f"svc-{alg}",
            "client_secret": f"test-secret-{alg}",
            "scope": "orders:read",
            "resource": resource,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def header_of(token: str) -> dict[str, Any]:
    return dict(json.loads(b64url_decode(token.split(".")[0])))


@pytest.fixture
def verifier(issuer: str) -> Iterator[Verifier]:
    config = IssuerConfig(
        issuer, discover=True, audience=RESOURCE, algorithms=ALGORITHMS, profile="rfc9068"
    )
    with Verifier(config) as verifier:
        yield verifier


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_the_providers_access_tokens_verify_in_every_algorithm(
    verifier: Verifier, issuer: str, alg: str
) -> None:
    token = access_token(issuer, alg)
    assert header_of(token)["typ"] == "at+jwt"
    claims = verifier.verify_sync(token)
    assert (claims["iss"], claims["aud"], claims["client_id"]) == (issuer, RESOURCE, f"svc-{alg}")
    assert claims["scope"] == "orders:read"
    assert verifier.keyset(issuer).url == issuer + "/jwks"  # found by discovery


def test_a_token_for_another_resource_is_refused(verifier: Verifier, issuer: str) -> None:
    with pytest.raises(InvalidAudience):
        verifier.verify_sync(access_token(issuer, "ES256", resource="https://other.test"))


@pytest.mark.parametrize("alg", ["RS256", "EdDSA"])
def test_a_tampered_token_is_refused(verifier: Verifier, issuer: str, alg: str) -> None:
    header, payload, signature = access_token(issuer, alg).split(".")
    claims = json.loads(b64url_decode(payload))
    claims["scope"] = "orders:read orders:write"
    forged = ".".join([header, b64url_encode(json.dumps(claims).encode()), signature])
    with pytest.raises(BadSignature):
        verifier.verify_sync(forged)


def test_a_typ_changed_to_jwt_is_refused_under_the_profile(verifier: Verifier, issuer: str) -> None:
    header, payload, signature = access_token(issuer, "ES256").split(".")
    plain = b64url_encode(json.dumps(header_of(header + "..") | {"typ": "JWT"}).encode())
    with pytest.raises(InvalidTokenType):
        verifier.verify_sync(".".join([plain, payload, signature]))


def test_keyswap_origin_discovers_the_provider_and_requires_at_jwt(issuer: str) -> None:
    port = free_port()
    args = ["origin", "--issuer", issuer, "--discover", "--audience", RESOURCE]
    args += ["--profile", "rfc9068", "--port", str(port)]
    with running_keyswap(args, port=port, ready_path="/__keyswap/health") as origin:
        for alg in ALGORITHMS:
            token = access_token(issuer, alg)
            answer = httpx.get(origin.url + "/x", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["client_id"] == f"svc-{alg}"
        wrong = httpx.get(
            origin.url + "/x",
            headers={"Authorization": f"Bearer {access_token(issuer, 'PS256', 'https://x.test')}"},
        )
        assert wrong.status_code == 401
