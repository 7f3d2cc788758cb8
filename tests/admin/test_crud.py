"""Happy paths of every resource, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.support.admin_api import AdminApi


def test_consumer_lifecycle(any_api: AdminApi) -> None:
    created = any_api.request(
        "POST",
        "/v1/consumers",
        json={"name": "acme", "metadata": {"plan": "pro"}, "scopes": ["orders:read"]},
    )
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "acme"
    assert created.headers["location"] == "/v1/consumers/acme"
    got = any_api.request("GET", "/v1/consumers/acme")
    assert got.status_code == 200
    assert got.json()["metadata"] == {"plan": "pro"}
    etag = got.headers["etag"]
    patched = any_api.request(
        "PATCH",
        "/v1/consumers/acme",
        json={"rate_limit": "100/60s", "max_connections": 5, "metadata": {"plan": "team"}},
        headers={"If-Match": etag},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["rate_limit"] == "100/60s"
    assert patched.json()["max_connections"] == 5
    assert patched.headers["etag"] != etag
    cleared = any_api.request("PATCH", "/v1/consumers/acme", json={"rate_limit": None})
    assert cleared.json()["rate_limit"] is None
    assert cleared.json()["max_connections"] == 5
    deleted = any_api.request("DELETE", "/v1/consumers/acme")
    assert deleted.status_code == 204
    assert any_api.request("GET", "/v1/consumers/acme").status_code == 404


def test_consumer_listing_pages_and_prefix(any_api: AdminApi) -> None:
    for name in ("a1", "a2", "a3", "b1", "a_x"):
        assert any_api.request("POST", "/v1/consumers", json={"name": name}).status_code == 201
    first = any_api.request("GET", "/v1/consumers", params={"limit": 2}).json()
    assert [c["name"] for c in first["items"]] == ["a1", "a2"]
    second = any_api.request(
        "GET", "/v1/consumers", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [c["name"] for c in second["items"]] == ["a3", "a_x"]
    third = any_api.request(
        "GET", "/v1/consumers", params={"limit": 2, "cursor": second["next_cursor"]}
    ).json()
    assert [c["name"] for c in third["items"]] == ["b1"]
    assert third["next_cursor"] is None
    # '_' in a prefix is a character, not a LIKE wildcard
    assert [
        c["name"]
        for c in any_api.request("GET", "/v1/consumers", params={"prefix": "a_"}).json()["items"]
    ] == ["a_x"]
    assert [
        c["name"]
        for c in any_api.request("GET", "/v1/consumers", params={"prefix": "a"}).json()["items"]
    ] == ["a1", "a2", "a3", "a_x"]


def test_key_lifecycle(any_api: AdminApi) -> None:
    any_api.request("POST", "/v1/consumers", json={"name": "acme", "scopes": ["r", "w"]})
    created = any_api.request(
        "POST", "/v1/consumers/acme/keys", json={"expires_in": 3600, "scopes": ["r"]}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["key"].startswith("ks_")
    assert body["state"] == "active"
    assert body["effective_scopes"] == ["r"]
    key_id = body["id"]
    got = any_api.request("GET", f"/v1/keys/{key_id}")
    assert got.status_code == 200
    assert "key" not in got.json()
    assert body["key"] not in got.text
    listed = any_api.request("GET", "/v1/consumers/acme/keys").json()
    assert [k["id"] for k in listed["items"]] == [key_id]
    assert [k["id"] for k in any_api.request("GET", "/v1/keys").json()["items"]] == [key_id]
    rolled = any_api.request("POST", f"/v1/keys/{key_id}/roll", json={"grace": 60})
    assert rolled.status_code == 201, rolled.text
    assert rolled.json()["old"]["replaced_by"] == rolled.json()["new"]["id"]
    assert rolled.json()["new"]["key"].startswith("ks_")
    revoked = any_api.request("POST", f"/v1/keys/{key_id}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["state"] == "revoked"
    assert any_api.request("GET", "/v1/consumers/nobody/keys").status_code == 404


def test_signing_keys_and_audit(any_api: AdminApi) -> None:
    first = any_api.request("POST", "/v1/signing-keys/rotate")
    assert first.status_code == 200, first.text
    states = sorted(k["state"] for k in first.json()["items"])
    assert states == ["active", "next"]
    assert all("private" not in str(k) for k in first.json()["items"])
    too_soon = any_api.request("POST", "/v1/signing-keys/rotate", json={"force": False})
    assert too_soon.status_code == 409
    assert too_soon.headers["content-type"] == "application/problem+json"
    forced = any_api.request("POST", "/v1/signing-keys/rotate", json={"force": True})
    assert forced.status_code == 200
    assert len(any_api.request("GET", "/v1/signing-keys").json()["items"]) == 3
    any_api.request(
        "POST", "/v1/consumers", json={"name": "acme"}, headers={"X-Request-Id": "req-42"}
    )
    events = any_api.request("GET", "/v1/audit-events", params={"action": "consumer"}).json()[
        "items"
    ]
    assert events[0]["action"] == "consumer.create"
    assert events[0]["actor"] == "token:admin"
    assert events[0]["request_id"] == "req-42"
    assert events[0]["client"] == "127.0.0.1"
    rotations = any_api.request(
        "GET", "/v1/audit-events", params={"action": "signing_key", "limit": 1}
    ).json()
    assert len(rotations["items"]) == 1
    rest = any_api.request(
        "GET",
        "/v1/audit-events",
        params={"action": "signing_key", "cursor": rotations["next_cursor"]},
    ).json()
    assert len(rest["items"]) == 1
    none_yet = any_api.request("GET", "/v1/audit-events", params={"until": "2000-01-01T00:00:00Z"})
    assert none_yet.json()["items"] == []
    assert any_api.request("GET", "/v1/audit-events", params={"actor": "token:admin"}).json()[
        "items"
    ]
    assert any_api.request("GET", "/v1/audit-events", params={"actor": "nobody"}).status_code == 422


def test_health(api: AdminApi) -> None:
    assert api.request("GET", "/healthz", token=None).json() == {"status": "ok"}
    assert api.request("GET", "/readyz", token=None).json() == {"status": "ready"}
    docs = api.request("GET", "/docs", token=None)
    assert docs.status_code == 200
    assert "/v1/consumers" in docs.text
    # nothing fetched from elsewhere
    assert "http://" not in docs.text
    assert "https://" not in docs.text


def test_a_consumer_leak_policy_is_set_cleared_and_refused_when_unknown(any_api: AdminApi) -> None:
    any_api.request("POST", "/v1/consumers", json={"name": "acme"})
    assert any_api.request("GET", "/v1/consumers/acme").json()["leak_policy"] is None
    rolled = any_api.request("PATCH", "/v1/consumers/acme", json={"leak_policy": "roll"})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["leak_policy"] == "roll"
    bad = any_api.request("PATCH", "/v1/consumers/acme", json={"leak_policy": "delete"})
    assert bad.status_code in (400, 422)
    assert any_api.request("GET", "/v1/consumers/acme").json()["leak_policy"] == "roll"
    cleared = any_api.request("PATCH", "/v1/consumers/acme", json={"leak_policy": None})
    assert cleared.json()["leak_policy"] is None
