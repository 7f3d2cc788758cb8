"""Idempotency keys, ETags, request ids, and a key's life at a running gateway."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from keyswap.gateway.secret import load_secret
from tests.support.admin_api import AdminApi, running_admin
from tests.support.running_gateway import eventually, running_gateway
from tests.support.upstream import recording_upstream


def _parallel(
    api: AdminApi, method: str, path: str, body: object, key: str, n: int = 20
) -> list[httpx.Response]:
    with ThreadPoolExecutor(n) as pool:
        futures = [
            pool.submit(api.request, method, path, json=body, headers={"Idempotency-Key": key})
            for _ in range(n)
        ]
        return [f.result() for f in futures]


def test_twenty_parallel_key_creations_with_one_idempotency_key_make_one_key(
    any_api: AdminApi,
) -> None:
    any_api.request("POST", "/v1/consumers", json={"name": "acme"})
    responses = _parallel(
        any_api, "POST", "/v1/consumers/acme/keys", {"expires_in": 3600}, "create-1"
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    secrets = [r.json()["key"] for r in responses if r.json()["key"] is not None]
    assert len(secrets) == 1  # the secret is shown once; replays answer the record without it
    replays = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert len(replays) == 19
    assert len(any_api.request("GET", "/v1/consumers/acme/keys").json()["items"]) == 1
    # without a key, a second request is a second key
    any_api.request("POST", "/v1/consumers/acme/keys", json={"expires_in": 3600})
    assert len(any_api.request("GET", "/v1/consumers/acme/keys").json()["items"]) == 2


def test_twenty_parallel_consumer_creations_with_one_key_answer_the_same(api: AdminApi) -> None:
    responses = _parallel(api, "POST", "/v1/consumers", {"name": "acme"}, "c-1")
    assert {r.status_code for r in responses} == {201}
    assert len({r.text for r in responses}) == 1
    events = api.request("GET", "/v1/audit-events", params={"action": "consumer.create"}).json()
    assert len(events["items"]) == 1


def test_an_idempotency_key_reused_with_another_body_is_refused(api: AdminApi) -> None:
    first = api.request(
        "POST", "/v1/consumers", json={"name": "a"}, headers={"Idempotency-Key": "k"}
    )
    assert first.status_code == 201
    other = api.request(
        "POST", "/v1/consumers", json={"name": "b"}, headers={"Idempotency-Key": "k"}
    )
    assert other.status_code == 422
    assert other.json()["type"] == "urn:keyswap:problem:idempotency-key-reused"
    assert api.store.get_consumer("b") is None
    bad = api.request(
        "POST", "/v1/consumers", json={"name": "c"}, headers={"Idempotency-Key": "a b"}
    )
    assert bad.status_code == 400
    assert api.store.get_consumer("c") is None


def test_a_refused_request_is_not_remembered(api: AdminApi) -> None:
    refused = api.request(
        "POST", "/v1/consumers/acme/keys", json={}, headers={"Idempotency-Key": "k2"}
    )
    assert refused.status_code == 404
    api.request("POST", "/v1/consumers", json={"name": "acme"})
    retried = api.request(
        "POST", "/v1/consumers/acme/keys", json={}, headers={"Idempotency-Key": "k2"}
    )
    assert retried.status_code == 201
    assert retried.json()["key"]


def test_a_stale_if_match_is_refused_and_changes_nothing(any_api: AdminApi) -> None:
    any_api.request("POST", "/v1/consumers", json={"name": "acme"})
    stale = any_api.request("GET", "/v1/consumers/acme").headers["etag"]
    fresh = any_api.request(
        "PATCH", "/v1/consumers/acme", json={"metadata": {"v": 1}}, headers={"If-Match": stale}
    )
    assert fresh.status_code == 200
    again = any_api.request(
        "PATCH", "/v1/consumers/acme", json={"metadata": {"v": 2}}, headers={"If-Match": stale}
    )
    assert again.status_code == 412
    assert again.headers["content-type"] == "application/problem+json"
    assert any_api.store.get_consumer("acme").metadata == {"v": 1}  # type: ignore[union-attr]
    assert (
        any_api.request("DELETE", "/v1/consumers/acme", headers={"If-Match": stale}).status_code
        == 412
    )
    assert any_api.store.get_consumer("acme") is not None
    current = any_api.request("GET", "/v1/consumers/acme").headers["etag"]
    assert current == fresh.headers["etag"]
    assert (
        any_api.request("DELETE", "/v1/consumers/acme", headers={"If-Match": current}).status_code
        == 204
    )
    key_id = None
    any_api.request("POST", "/v1/consumers", json={"name": "k"})
    key_id = any_api.request("POST", "/v1/consumers/k/keys").json()["id"]
    revoked = any_api.request("POST", f"/v1/keys/{key_id}/revoke", headers={"If-Match": '"nope"'})
    assert revoked.status_code == 412
    assert any_api.store.get_api_key(key_id).revoked_at is None  # type: ignore[union-attr]


def test_request_ids(api: AdminApi) -> None:
    given = api.request("GET", "/v1/consumers", headers={"X-Request-Id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = api.request("GET", "/v1/consumers", headers={"X-Request-Id": "bad id;" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    problem = api.request("GET", "/v1/consumers/nobody", headers={"X-Request-Id": "r-9"})
    assert problem.headers["x-request-id"] == "r-9"
    assert problem.json()["instance"] == "r-9"
    assert api.request("GET", "/nowhere", token=None).headers["x-request-id"]


def test_a_key_created_through_the_api_works_at_a_gateway_and_stops_when_revoked(
    tmp_path: Path,
) -> None:
    with (
        recording_upstream() as upstream,
        running_gateway(tmp_path, upstream.url, real_clock=True) as gateway,
    ):
        secret = load_secret(gateway.db_url, env={})
        with running_admin(tmp_path, db_url=gateway.db_url, secret=secret) as api:
            created = api.request("POST", "/v1/consumers/acme/keys").json()
            key = created["key"]
            took = eventually(
                lambda: gateway.get("/hello", key=key).status_code == 200, timeout=1.0
            )
            assert took < 1.0
            assert api.request("POST", f"/v1/keys/{created['id']}/revoke").status_code == 200
            took = eventually(
                lambda: gateway.get("/hello", key=key).status_code == 401, timeout=1.0
            )
            assert took < 1.0


def test_a_revocation_replayed_with_its_idempotency_key_answers_the_same(api: AdminApi) -> None:
    api.request("POST", "/v1/consumers", json={"name": "acme"})
    key_id = api.request("POST", "/v1/consumers/acme/keys").json()["id"]
    first = api.request("POST", f"/v1/keys/{key_id}/revoke", headers={"Idempotency-Key": "r1"})
    again = api.request("POST", f"/v1/keys/{key_id}/revoke", headers={"Idempotency-Key": "r1"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    events = api.request("GET", "/v1/audit-events", params={"action": "key.revoke"}).json()
    assert len(events["items"]) == 1
