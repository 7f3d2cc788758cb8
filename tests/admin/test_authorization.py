"""Every route x every credential: no token, malformed, unknown, revoked, expired, wrong scope -> 401/403;
the right scope (and ``admin``) -> 2xx. Failed authentication from one address is throttled (429)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keyswap.admin.oidc import OidcAuthenticator, OidcConfig
from keyswap.manage.actor import Actor
from keyswap.manage.context import Context
from keyswap.manage.tokens import revoke_admin_token
from keyswap.manage.webhooks import enqueue
from tests.support.admin_api import AdminApi, running_admin
from tests.support.gateway_state import Clock
from tests.support.jwks_server import JWKSServer, running_jwks_server
from tests.support.keys import claims, jwks, rsa_key

_counter = itertools.count()

# (method, path template, scope, body factory)
Route = tuple[str, str, str, Callable[[], Any]]
ROUTES: list[Route] = [
    ("GET", "/v1/consumers", "consumers:read", lambda: None),
    ("POST", "/v1/consumers", "consumers:write", lambda: {"name": f"new{next(_counter)}"}),
    ("GET", "/v1/consumers/acme", "consumers:read", lambda: None),
    ("GET", "/v1/consumers/acme/quota", "consumers:read", lambda: None),
    ("PATCH", "/v1/consumers/acme", "consumers:write", lambda: {"metadata": {"n": next(_counter)}}),
    ("DELETE", "/v1/consumers/{victim}", "consumers:write", lambda: None),
    ("GET", "/v1/consumers/acme/members", "consumers:read", lambda: None),
    (
        "POST",
        "/v1/consumers/acme/members",
        "consumers:write",
        lambda: {"kind": "email", "value": f"m{next(_counter)}@example.com"},
    ),
    ("DELETE", "/v1/consumers/acme/members/{member}", "consumers:write", lambda: None),
    (
        "POST",
        "/v1/consumers/acme/portal-links",
        "consumers:write",
        lambda: {"email": "dev@example.com"},
    ),
    ("POST", "/v1/consumers/acme/keys", "keys:write", lambda: {}),
    ("GET", "/v1/consumers/acme/keys", "keys:read", lambda: None),
    ("GET", "/v1/keys", "keys:read", lambda: None),
    ("GET", "/v1/keys/{key}", "keys:read", lambda: None),
    ("POST", "/v1/keys/{key}/revoke", "keys:write", lambda: None),
    ("POST", "/v1/keys/{fresh_key}/roll", "keys:write", lambda: None),
    ("GET", "/v1/signing-keys", "signing-keys:read", lambda: None),
    ("POST", "/v1/signing-keys/rotate", "signing-keys:write", lambda: {"force": True}),
    ("GET", "/v1/audit-events", "audit:read", lambda: None),
    ("GET", "/v1/consumers/{hooked}/webhook", "consumers:read", lambda: None),
    (
        "PUT",
        "/v1/consumers/acme/webhook",
        "consumers:write",
        lambda: {"url": f"https://h{next(_counter)}.example.com/in"},
    ),
    ("DELETE", "/v1/consumers/{hooked}/webhook", "consumers:write", lambda: None),
    ("POST", "/v1/consumers/{hooked}/webhook/rotate-secret", "consumers:write", lambda: None),
    ("GET", "/v1/consumers/acme/webhook/events", "consumers:read", lambda: None),
    ("GET", "/v1/consumers/acme/webhook/deliveries", "consumers:read", lambda: None),
    (
        "POST",
        "/v1/consumers/{hooked}/webhook/events/{event}/redeliver",
        "consumers:write",
        lambda: None,
    ),
    ("GET", "/v1/usage", "usage:read", lambda: None),
    ("GET", "/v1/usage/top", "usage:read", lambda: None),
]


def _template(path: str) -> str:
    """The documented path of a matrix route."""
    return (
        path.replace("{victim}", "{name}")
        .replace("{hooked}", "{name}")
        .replace("acme", "{name}")
        .replace("{key}", "{key_id}")
        .replace("{fresh_key}", "{key_id}")
        .replace("{event}", "{event_id}")
        .replace("{member}", "{member_id}")
    )


@pytest.fixture
def matrix_api(tmp_path: Path) -> Iterator[tuple[AdminApi, Clock]]:
    clock = Clock(time.time())
    with running_admin(tmp_path, clock=clock) as api:
        api.request("POST", "/v1/consumers", json={"name": "acme"})
        yield api, clock


OIDC_ISSUER = "https://idp.test"
OIDC_AUDIENCE = "keyswap-admin"
OIDC_KEY = rsa_key("idp-1")


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    with running_jwks_server() as server:
        server.serve(jwks(OIDC_KEY))
        yield server


@pytest.fixture
def oidc_matrix_api(tmp_path: Path, idp: JWKSServer) -> Iterator[AdminApi]:
    config = OidcConfig(OIDC_ISSUER, OIDC_AUDIENCE, jwks_url=idp.url)
    with OidcAuthenticator(config) as oidc, running_admin(tmp_path, oidc=oidc) as api:
        api.request("POST", "/v1/consumers", json={"name": "acme"})
        yield api


def _oidc(scope: str, **overrides: Any) -> str:
    values: dict[str, Any] = {"iss": OIDC_ISSUER, "aud": OIDC_AUDIENCE, "scope": scope}
    values.update(overrides)
    return OIDC_KEY.sign(claims(**values))


def _path(api: AdminApi, template: str) -> str:
    values: dict[str, str] = {}
    if "{victim}" in template:
        name = f"victim{next(_counter)}"
        assert api.request("POST", "/v1/consumers", json={"name": name}).status_code == 201
        values["victim"] = name
    if "{hooked}" in template:
        name = f"hooked{next(_counter)}"
        assert api.request("POST", "/v1/consumers", json={"name": name}).status_code == 201
        put = api.request(
            "PUT", f"/v1/consumers/{name}/webhook", json={"url": "https://hooks.example.com/"}
        )
        assert put.status_code == 201, put.text
        values["hooked"] = name
        if "{event}" in template:
            consumer = api.store.get_consumer(name)
            assert consumer is not None
            event_id = enqueue(
                api.store, consumer_id=str(consumer.id), event_type="key.leaked", data={}
            )
            assert event_id is not None
            values["event"] = event_id
    if "{member}" in template:
        member = api.request(
            "POST",
            "/v1/consumers/acme/members",
            json={"kind": "subject", "value": f"sub-{next(_counter)}"},
        )
        assert member.status_code == 201, member.text
        values["member"] = str(member.json()["id"])
    if "{key}" in template or "{fresh_key}" in template:
        key_id = api.request("POST", "/v1/consumers/acme/keys").json()["id"]
        values["key"] = values["fresh_key"] = key_id
    return template.format(**values)


def _call(api: AdminApi, route: Route, token: str | None) -> Any:
    method, template, _, body = route
    payload = body()
    kwargs: dict[str, Any] = {} if payload is None else {"json": payload}
    return api.request(method, _path(api, template), token=token, **kwargs)


def test_the_matrix_covers_every_route(api: AdminApi) -> None:
    spec = api.request("GET", "/openapi.json", token=None).json()
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if op.get("security")
    }
    covered = {(m, _template(t)) for m, t, _, _ in ROUTES}
    assert documented == covered
    for method, template, scope, _ in ROUTES:
        path = _template(template)
        op = spec["paths"][path][method.lower()]
        assert op["security"] == [{"adminToken": [scope]}]
        assert {"401", "403", "429"} <= set(op["responses"])


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_route_refuses_every_bad_credential(
    matrix_api: tuple[AdminApi, Clock], route: Route
) -> None:
    api, clock = matrix_api
    scope = route[2]
    revoked_id, revoked = api.token("gone", (scope,))
    revoke_admin_token(Context(api.store, Actor.cli("test")), revoked_id)
    _, expiring = api.token("brief", (scope,), expires_in=60)
    clock.advance(61)
    wrong = "audit:read" if scope == "usage:read" else "usage:read"
    bad = {
        None: 401,
        "ksadm_not-a-token": 401,
        "ksadm_" + "A" * 30 + "AAAAAA": 401,  # well-formed, unknown
        revoked: 401,
        expiring: 401,
        wrong: 403,
    }
    for token, status in bad.items():
        response = _call(api, route, token)
        assert response.status_code == status, (token, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == status
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
        else:
            assert problem["scope"] == scope
            assert scope in problem["detail"]
        api.throttle_clock.advance(61)  # keep the failure throttle out of this test
    for token in (scope, "admin"):
        response = _call(api, route, token)
        assert 200 <= response.status_code < 300, (token, response.text)


def test_refused_writes_change_nothing(api: AdminApi) -> None:
    before = api.request("GET", "/v1/audit-events").json()["items"]
    for token in (None, "consumers:read", "ksadm_x"):
        api.request("POST", "/v1/consumers", token=token, json={"name": "intruder"})
        api.throttle_clock.advance(61)
    assert api.store.get_consumer("intruder") is None
    assert api.request("GET", "/v1/audit-events").json()["items"] == before


def test_repeated_failures_from_one_address_are_throttled(api: AdminApi) -> None:
    for _ in range(api.state.throttle.limit):
        assert api.request("GET", "/v1/consumers", token="ksadm_guess").status_code == 401
    throttled = api.request("GET", "/v1/consumers", token="ksadm_guess")
    assert throttled.status_code == 429
    assert throttled.headers["content-type"] == "application/problem+json"
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    # while throttled even a valid token waits: the address is not a guessing channel
    assert api.request("GET", "/v1/consumers").status_code == 429
    api.throttle_clock.advance(61)
    assert api.request("GET", "/v1/consumers").status_code == 200


def test_the_actor_is_the_tokens_name(api: AdminApi) -> None:
    api.request("POST", "/v1/consumers", token="consumers:write", json={"name": "acme"})
    event = api.request("GET", "/v1/audit-events", params={"action": "consumer.create"}).json()[
        "items"
    ][0]
    assert event["actor"] == "token:consumers-write"


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_route_with_oidc_tokens(oidc_matrix_api: AdminApi, route: Route) -> None:
    api = oidc_matrix_api
    scope = route[2]
    cases: list[tuple[str | None, int]] = [
        (None, 401),
        (_oidc(scope, ttl=-120), 401),  # expired
        (_oidc(scope, aud="another-api"), 401),
        (_oidc("audit:read" if scope == "usage:read" else "usage:read"), 403),
        (_oidc(scope), 200),
        (_oidc("openid admin"), 200),
    ]
    for token, status in cases:
        response = _call(api, route, token)
        if status == 200:
            assert 200 <= response.status_code < 300, response.text
            continue
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
        else:
            assert response.json()["scope"] == scope
        api.throttle_clock.advance(61)
