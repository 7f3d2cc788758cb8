"""The webhook routes: lifecycle, the secret shown once, deliveries, redelivery; and attacks (another
consumer's event, bad URLs, bad input), on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa

from keyswap.manage.webhooks import enqueue
from keyswap.webhooks.dispatch import Dispatcher, RetryPolicy
from tests.support.admin_api import AdminApi
from tests.support.webhook_receiver import webhook_receiver


def _consumer(api: AdminApi, name: str = "acme") -> int:
    assert api.request("POST", "/v1/consumers", json={"name": name}).status_code == 201
    consumer = api.store.get_consumer(name)
    assert consumer is not None
    return consumer.id


def test_webhook_lifecycle(any_api: AdminApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _consumer(any_api)
    assert any_api.request("GET", "/v1/consumers/acme/webhook").status_code == 404
    created = any_api.request(
        "PUT", "/v1/consumers/acme/webhook", json={"url": "https://hooks.example.com/in"}
    )
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/v1/consumers/acme/webhook"
    secret = created.json()["secret"]
    assert secret.startswith("whsec_")
    got = any_api.request("GET", "/v1/consumers/acme/webhook")
    assert got.status_code == 200
    assert got.json()["url"] == "https://hooks.example.com/in"
    assert "secret" not in got.json()
    etag = got.headers["etag"]
    changed = any_api.request(
        "PUT",
        "/v1/consumers/acme/webhook",
        json={"url": "https://other.example.com/in"},
        headers={"If-Match": etag},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["secret"] is None
    stale = any_api.request(
        "PUT",
        "/v1/consumers/acme/webhook",
        json={"url": "https://third.example.com/in"},
        headers={"If-Match": etag},
    )
    assert stale.status_code == 412
    rotated = any_api.request(
        "POST", "/v1/consumers/acme/webhook/rotate-secret", headers={"Idempotency-Key": "r1"}
    )
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != secret
    replay = any_api.request(
        "POST", "/v1/consumers/acme/webhook/rotate-secret", headers={"Idempotency-Key": "r1"}
    )
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["secret"] is None
    audit = any_api.request("GET", "/v1/audit-events", params={"action": "webhook"}).text
    assert "webhook.rotate_secret" in audit
    for text in (audit, caplog.text):
        assert secret not in text
        assert new_secret not in text
    deleted = any_api.request("DELETE", "/v1/consumers/acme/webhook")
    assert deleted.status_code == 204
    assert any_api.request("DELETE", "/v1/consumers/acme/webhook").status_code == 404


def test_events_deliveries_and_redelivery(any_api: AdminApi) -> None:
    consumer_id = _consumer(any_api)
    with webhook_receiver() as receiver:
        created = any_api.request(
            "PUT",
            "/v1/consumers/acme/webhook",
            json={"url": receiver.url, "allow_http_loopback": True},
        )
        receiver.secret = created.json()["secret"]
        event_id = enqueue(
            any_api.store, consumer_id=str(consumer_id), event_type="key.leaked", data={"k": 1}
        )
        dispatcher = Dispatcher(any_api.store, any_api.secret, policy=RetryPolicy(jitter=0))
        try:
            assert dispatcher.run_once() == 1
            events = any_api.request("GET", "/v1/consumers/acme/webhook/events").json()["items"]
            assert [(e["id"], e["state"], e["type"]) for e in events] == [
                (event_id, "delivered", "key.leaked")
            ]
            assert events[0]["payload"]["data"] == {"k": 1}
            page = any_api.request(
                "GET", "/v1/consumers/acme/webhook/deliveries", params={"event": event_id}
            ).json()
            assert [(d["attempt"], d["status_code"]) for d in page["items"]] == [(1, 204)]
            again = any_api.request(
                "POST", f"/v1/consumers/acme/webhook/events/{event_id}/redeliver"
            )
            assert again.status_code == 200, again.text
            assert again.json()["state"] == "pending"
            assert dispatcher.run_once() == 1
        finally:
            dispatcher.close()
        assert [r.headers["webhook-id"] for r in receiver.received] == [event_id, event_id]
        assert all(r.verified for r in receiver.received)
    paged = any_api.request(
        "GET", "/v1/consumers/acme/webhook/deliveries", params={"limit": 1}
    ).json()
    assert len(paged["items"]) == 1
    rest = any_api.request(
        "GET",
        "/v1/consumers/acme/webhook/deliveries",
        params={"limit": 1, "cursor": paged["next_cursor"]},
    ).json()
    assert [d["attempt"] for d in rest["items"]] == [1]
    assert rest["next_cursor"] is None


def test_another_consumers_event_cannot_be_redelivered_through_this_one(api: AdminApi) -> None:
    _consumer(api, "acme")
    bob = _consumer(api, "bob")
    for name in ("acme", "bob"):
        api.request("PUT", f"/v1/consumers/{name}/webhook", json={"url": "https://h.example.com/"})
    bobs = enqueue(api.store, consumer_id=str(bob), event_type="key.leaked", data={})
    refused = api.request("POST", f"/v1/consumers/acme/webhook/events/{bobs}/redeliver")
    assert refused.status_code == 404
    assert refused.headers["content-type"] == "application/problem+json"
    assert api.request("GET", "/v1/consumers/acme/webhook/events").json()["items"] == []
    listed = api.request("GET", "/v1/consumers/acme/webhook/deliveries", params={"event": bobs})
    assert listed.json()["items"] == []
    assert (
        api.request("GET", "/v1/audit-events", params={"action": "webhook.redeliver"}).json()[
            "items"
        ]
        == []
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/",
        "https://127.0.0.1/admin",
        "https://localhost:8081/v1/consumers",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00::1]/",
        "https://10.0.0.1/",
        "https://user:pass@hooks.example.com/",
        "file:///etc/passwd",
        "gopher://hooks.example.com/",
        "https://hooks.example.com/\r\nX-Injected: 1",
        "not a url",
    ],
)
def test_bad_urls_are_refused_with_422(api: AdminApi, url: str) -> None:
    _consumer(api)
    response = api.request("PUT", "/v1/consumers/acme/webhook", json={"url": url})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert api.request("GET", "/v1/consumers/acme/webhook").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/v1/consumers/acme/webhook", {"url": "https://a.example.com/", "x": 1}, 422),
        ("PUT", "/v1/consumers/acme/webhook", {"url": ""}, 422),
        ("PUT", "/v1/consumers/acme/webhook", {"url": "https://a.example.com/" + "a" * 3000}, 422),
        ("PUT", "/v1/consumers/acme/webhook", {"url": 5}, 422),
        ("PUT", "/v1/consumers/nobody/webhook", {"url": "https://a.example.com/"}, 404),
        ("PUT", "/v1/consumers/..%2F..%2Fetc/webhook", {"url": "https://a.example.com/"}, 404),
        ("GET", "/v1/consumers/acme/webhook/events?state=everything", None, 422),
        ("GET", "/v1/consumers/acme/webhook/events?limit=0", None, 422),
        ("GET", "/v1/consumers/acme/webhook/deliveries?cursor=-1", None, 422),
        ("GET", "/v1/consumers/acme/webhook/deliveries?event=msg_%27%20OR%201=1", None, 422),
        ("POST", "/v1/consumers/acme/webhook/events/msg_nope/redeliver", None, 404),
        (
            "POST",
            "/v1/consumers/acme/webhook/events/" + "msg_" + "0" * 32 + "/redeliver",
            None,
            404,
        ),
        ("POST", "/v1/consumers/acme/webhook/rotate-secret", None, 404),
        ("GET", "/v1/consumers/nobody/webhook/events", None, 404),
    ],
)
def test_bad_input_is_a_clear_4xx(
    api: AdminApi, method: str, path: str, body: object, status: int
) -> None:
    _consumer(api)
    kwargs: dict[str, Any] = {} if body is None else {"json": body}
    response = api.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_the_secret_is_stored_encrypted(api: AdminApi) -> None:
    _consumer(api)
    secret = api.request(
        "PUT", "/v1/consumers/acme/webhook", json={"url": "https://a.example.com/"}
    ).json()["secret"]
    with api.store.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM webhook_endpoints")).one()
    raw = repr(tuple(row)).encode()
    assert secret.encode() not in raw
    assert secret.removeprefix("whsec_").encode() not in raw


def test_scopes_read_cannot_write(api: AdminApi) -> None:
    _consumer(api)
    refused = api.request(
        "PUT",
        "/v1/consumers/acme/webhook",
        token="consumers:read",
        json={"url": "https://a.example.com/"},
    )
    assert refused.status_code == 403
    assert api.request("GET", "/v1/consumers/acme/webhook").status_code == 404
