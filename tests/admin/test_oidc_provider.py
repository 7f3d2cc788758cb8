"""The admin API against a real OpenID provider (tests/oidc: panva's ``oidc-provider``): its RFC 9068
access tokens, found by discovery, carry admin scopes; the audit actor is the token's subject.

Skipped (failed with KEYSWAP_REQUIRE_SERVICES=1) without ``node`` or the npm packages, as
tests/verifier/test_oidc_provider.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keyswap.admin.oidc import OidcAuthenticator, OidcConfig
from tests.support.admin_api import AdminApi, running_admin
from tests.verifier.test_oidc_provider import (  # noqa: F401 - fixtures
    RESOURCE,
    _provider_installed,
    issuer,
)

pytestmark = pytest.mark.slow


def admin_token_from(provider: str, alg: str, scope: str) -> str:
    """An access token for the admin API from the provider (client_credentials)."""
    response = httpx.post(
        provider + "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": f"svc-{alg}",
            "client_secret": f"test-secret-{alg}",
            "scope": scope,
            "resource": RESOURCE,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture
def api(tmp_path: Path, issuer: str) -> Iterator[AdminApi]:  # noqa: F811 - the fixture
    config = OidcConfig(issuer, RESOURCE, profile="rfc9068")  # no jwks_url: discovery
    with OidcAuthenticator(config) as oidc, running_admin(tmp_path, oidc=oidc) as admin_api:
        yield admin_api


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_the_providers_tokens_are_admin_callers(
    api: AdminApi,
    issuer: str,  # noqa: F811 - the fixture
    alg: str,
) -> None:
    assert api.request("POST", "/v1/consumers", json={"name": "acme"}).status_code == 201
    token = admin_token_from(issuer, alg, "consumers:read keys:write")
    assert api.request("GET", "/v1/consumers", token=token).status_code == 200
    assert api.request("POST", "/v1/consumers/acme/keys", token=token).status_code == 201
    refused = api.request("POST", "/v1/consumers", token=token, json={"name": "x"})
    assert refused.status_code == 403
    assert refused.json()["scope"] == "consumers:write"
    events = api.request("GET", "/v1/audit-events", params={"action": "key.create"}).json()
    assert events["items"][0]["actor"] == f"oidc:svc-{alg}"
    narrow = admin_token_from(issuer, alg, "orders:read")
    assert api.request("GET", "/v1/consumers", token=narrow).status_code == 403
