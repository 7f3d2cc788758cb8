"""OIDC callers: JWTs from the identity provider (a real JWKS server on 127.0.0.1), verified and mapped
to admin scopes; refused ones are the same 401 as a bad admin token, a missing scope a 403."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from keyswap.admin.cli import admin
from keyswap.admin.oidc import OidcAuthenticator, OidcConfig
from keyswap.verifier.permissions import ClaimPath
from tests.support import keys
from tests.support.admin_api import AdminApi, running_admin
from tests.support.asgi_server import free_port
from tests.support.gateway_state import SECRET_TEXT
from tests.support.jwks_server import JWKSServer, running_jwks_server
from tests.support.keys import claims, ec_key, jwks, rsa_key
from tests.support.keyswap_process import running_keyswap

ISSUER = "https://idp.test/realms/ops"
AUDIENCE = "keyswap-admin"
KEY = rsa_key("idp-1")
ES_KEY = ec_key("idp-ec")


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    with running_jwks_server() as server:
        server.serve(jwks(KEY, ES_KEY))
        yield server


@contextmanager
def oidc_admin(
    tmp_path: Path, idp: JWKSServer, scopes_claims: tuple[ClaimPath, ...] | None = None
) -> Iterator[AdminApi]:
    config = OidcConfig(ISSUER, AUDIENCE, jwks_url=idp.url)
    if scopes_claims is not None:
        config = OidcConfig(ISSUER, AUDIENCE, jwks_url=idp.url, scopes_claims=scopes_claims)
    with OidcAuthenticator(config) as oidc, running_admin(tmp_path, oidc=oidc) as api:
        yield api


@pytest.fixture
def api(tmp_path: Path, idp: JWKSServer) -> Iterator[AdminApi]:
    with oidc_admin(tmp_path, idp) as admin_api:
        yield admin_api


def token(key: keys.TestKey = KEY, **overrides: Any) -> str:
    values: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice"}
    values.update(overrides)
    return key.sign(claims(**values))


def test_scopes_from_the_token_allow_what_they_name_and_nothing_else(api: AdminApi) -> None:
    assert api.request("POST", "/v1/consumers", json={"name": "acme"}).status_code == 201
    alice = token(scope="consumers:read keys:write")
    listed = api.request("GET", "/v1/consumers", token=alice)
    assert listed.status_code == 200, listed.text
    assert [c["name"] for c in listed.json()["items"]] == ["acme"]
    created = api.request("POST", "/v1/consumers/acme/keys", token=alice)
    assert created.status_code == 201, created.text
    refused = api.request("POST", "/v1/signing-keys/rotate", token=alice, json={"force": True})
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["scope"] == "signing-keys:write"
    assert "signing-keys:write" in refused.json()["detail"]
    # a write scope does not grant the matching read
    assert api.request("GET", "/v1/keys", token=alice).status_code == 403


def test_other_algorithms_and_the_scp_array_work(api: AdminApi) -> None:
    bob = token(ES_KEY, sub="bob", scp=["consumers:read"])
    assert api.request("GET", "/v1/consumers", token=bob).status_code == 200


def test_only_exact_admin_scope_names_count(api: AdminApi) -> None:
    near = token(scope="Consumers:read consumers:read:all consumers admin:all openid")
    response = api.request("GET", "/v1/consumers", token=near)
    assert response.status_code == 403
    assert api.request("GET", "/v1/consumers", token=token(scope="openid admin")).status_code == 200


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: token(scope="admin", ttl=-120), id="expired"),
        pytest.param(lambda: token(scope="admin", aud="another-api"), id="wrong-audience"),
        pytest.param(lambda: token(scope="admin", iss="https://evil.test"), id="wrong-issuer"),
        pytest.param(lambda: token(scope="admin", aud=None), id="no-audience"),
        pytest.param(lambda: token(scope="admin", sub=None), id="no-subject"),
        pytest.param(
            lambda: rsa_key("idp-1", slot=1).sign(claims(iss=ISSUER, aud=AUDIENCE, scope="admin")),
            id="unknown-signer",
        ),
        pytest.param(lambda: _tampered(token(scope="consumers:read")), id="tampered"),
    ],
)
def test_refused_tokens_are_401(api: AdminApi, bad: Any) -> None:
    response = api.request("GET", "/v1/consumers", token=bad())
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401


def _tampered(jwt: str) -> str:
    header, _, signature = jwt.split(".")
    forged = claims(iss=ISSUER, aud=AUDIENCE, sub="alice", scope="admin")
    payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


def test_refused_oidc_tokens_are_throttled(api: AdminApi) -> None:
    expired = token(scope="admin", ttl=-120)
    for _ in range(api.state.throttle.limit):
        assert api.request("GET", "/v1/consumers", token=expired).status_code == 401
    assert api.request("GET", "/v1/consumers", token=expired).status_code == 429
    assert api.request("GET", "/v1/consumers", token=token(scope="admin")).status_code == 429
    api.throttle_clock.advance(61)
    assert api.request("GET", "/v1/consumers", token=token(scope="admin")).status_code == 200


def test_admin_tokens_still_work_beside_oidc(api: AdminApi) -> None:
    assert api.request("GET", "/v1/consumers", token="consumers:read").status_code == 200
    assert api.request("GET", "/v1/consumers", token="ksadm_x.y.z").status_code == 401


def test_nested_roles_claim(tmp_path: Path, idp: JWKSServer) -> None:
    with oidc_admin(tmp_path, idp, ("realm_access.roles",)) as api:
        keycloak = token(
            realm_access={"roles": ["offline_access", "consumers:read"]}, scope="admin"
        )
        assert api.request("GET", "/v1/consumers", token=keycloak).status_code == 200
        # the scope claim is not read when another claim is configured
        assert (
            api.request("POST", "/v1/consumers", token=keycloak, json={"name": "x"}).status_code
            == 403
        )


def test_the_audit_actor_is_the_subject(api: AdminApi) -> None:
    carol = token(sub="carol@example.com", scope="consumers:write")
    assert (
        api.request("POST", "/v1/consumers", token=carol, json={"name": "acme"}).status_code == 201
    )
    events = api.request("GET", "/v1/audit-events", params={"action": "consumer.create"}).json()
    assert events["items"][0]["actor"] == "oidc:carol@example.com"


def test_without_oidc_a_jwt_is_an_invalid_admin_token(tmp_path: Path) -> None:
    with running_admin(tmp_path) as api:
        response = api.request("GET", "/v1/consumers", token=token(scope="admin"))
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"


def test_an_unreachable_provider_is_503_not_401(tmp_path: Path) -> None:
    with running_jwks_server() as dead:
        url = dead.url
    config = OidcConfig(ISSUER, AUDIENCE, jwks_url=url)
    with OidcAuthenticator(config) as oidc, running_admin(tmp_path, oidc=oidc) as api:
        started = time.monotonic()
        response = api.request("GET", "/v1/consumers", token=token(scope="admin"))
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "retry-after" in response.headers
        assert time.monotonic() - started < 10
        # the admin-token path is unaffected
        assert api.request("GET", "/v1/consumers").status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--oidc-audience", "x"], "need --oidc-issuer"),
        (["--oidc-issuer", ISSUER], "needs --oidc-audience"),
        (["--oidc-issuer", "http://idp.example", "--oidc-audience", "x"], "https"),
        (
            ["--oidc-issuer", ISSUER, "--oidc-audience", "x", "--oidc-scopes-claim", "a..b"],
            "claim path",
        ),
    ],
)
def test_bad_oidc_options_are_one_line_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(
        admin, ["--port", "0", "--db", str(tmp_path / "k.db"), *args], env={}
    )
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_help_lists_the_environment_variables() -> None:
    text = CliRunner().invoke(admin, ["--help"]).output
    for name in (
        "KEYSWAP_ADMIN_OIDC_ISSUER",
        "KEYSWAP_ADMIN_OIDC_AUDIENCE",
        "KEYSWAP_ADMIN_OIDC_JWKS_URL",
        "KEYSWAP_ADMIN_OIDC_SCOPES_CLAIM",
    ):
        assert name in text.replace("\n", "").replace(" ", "")


def test_keyswap_admin_takes_oidc_settings_from_the_environment(
    tmp_path: Path, idp: JWKSServer
) -> None:
    port = free_port()
    env = {
        "KEYSWAP_ADMIN_PORT": str(port),
        "KEYSWAP_ADMIN_DB": f"sqlite:///{tmp_path / 'k.db'}",
        "KEYSWAP_SECRET": SECRET_TEXT,
        "KEYSWAP_ADMIN_OIDC_ISSUER": ISSUER,
        "KEYSWAP_ADMIN_OIDC_AUDIENCE": AUDIENCE,
        "KEYSWAP_ADMIN_OIDC_JWKS_URL": idp.url,
        "KEYSWAP_ADMIN_OIDC_SCOPES_CLAIM": "roles realm_access.roles",
    }
    with running_keyswap(["admin"], port=port, ready_path="/healthz", env=env) as process:
        dave = token(sub="dave", roles=["consumers:write"], realm_access={"roles": ["audit:read"]})
        headers = {"Authorization": f"Bearer {dave}"}
        created = httpx.post(process.url + "/v1/consumers", json={"name": "acme"}, headers=headers)
        assert created.status_code == 201, created.text
        audit = httpx.get(process.url + "/v1/audit-events", headers=headers)
        assert audit.status_code == 200, audit.text
        assert audit.json()["items"][0]["actor"] == "oidc:dave"
        expired = token(roles=["admin"], ttl=-120)
        refused = httpx.get(
            process.url + "/v1/consumers", headers={"Authorization": f"Bearer {expired}"}
        )
        assert refused.status_code == 401
    assert dave not in process.log()
