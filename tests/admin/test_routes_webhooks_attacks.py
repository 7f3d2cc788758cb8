"""Attacks on the webhook routes by a token that manages consumers but not keys: a rolled key's
``key.rolled`` event (which carries the new API key) must not be sent again where that token chose."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from keyswap.manage.webhooks import enqueue
from tests.support.admin_api import AdminApi, running_admin


def _rolled_event(api: AdminApi) -> str:
    assert api.request("POST", "/v1/consumers", json={"name": "acme"}).status_code == 201
    consumer = api.store.get_consumer("acme")
    assert consumer is not None
    put = api.request(
        "PUT", "/v1/consumers/acme/webhook", json={"url": "https://hooks.acme.example/in"}
    )
    assert put.status_code == 201, put.text
    event_id = enqueue(
        api.store,
        consumer_id=str(consumer.id),
        event_type="key.rolled",
        data={"new_key_id": "key_x", "new_key": "ks_live_secret"},
        seal=api.secret,
    )
    assert event_id is not None
    return event_id


def test_a_consumers_write_token_cannot_redeliver_a_sealed_event_to_its_own_url(
    api: AdminApi,
) -> None:
    event_id = _rolled_event(api)
    with api.store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE webhook_events SET state = 'delivered'"))
    moved = api.request(
        "PUT",
        "/v1/consumers/acme/webhook",
        token="consumers:write",
        json={"url": "https://attacker.example/in"},
    )
    assert moved.status_code == 200, moved.text
    refused = api.request(
        "POST",
        f"/v1/consumers/acme/webhook/events/{event_id}/redeliver",
        token="consumers:write",
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["scope"] == "keys:write"


@pytest.mark.parametrize("scopes", [("consumers:write", "keys:write"), ("admin",)])
def test_a_token_that_may_write_keys_can_redeliver_a_sealed_event(
    api: AdminApi, scopes: tuple[str, ...]
) -> None:
    event_id = _rolled_event(api)
    _, token = api.token("both", scopes)
    done = api.request(
        "POST", f"/v1/consumers/acme/webhook/events/{event_id}/redeliver", token=token
    )
    assert done.status_code == 200, done.text
    assert done.json()["payload"]["sealed"] is True


def test_an_unsealed_event_needs_only_consumers_write(api: AdminApi) -> None:
    assert api.request("POST", "/v1/consumers", json={"name": "acme"}).status_code == 201
    consumer = api.store.get_consumer("acme")
    assert consumer is not None
    api.request("PUT", "/v1/consumers/acme/webhook", json={"url": "https://hooks.acme.example/"})
    event_id = enqueue(api.store, consumer_id=str(consumer.id), event_type="key.leaked", data={})
    done = api.request(
        "POST",
        f"/v1/consumers/acme/webhook/events/{event_id}/redeliver",
        token="consumers:write",
    )
    assert done.status_code == 200, done.text


def test_a_consumers_write_token_cannot_move_the_url_while_a_sealed_event_waits(
    api: AdminApi,
) -> None:
    _rolled_event(api)  # pending: the receiver was down, say
    moved = api.request(
        "PUT",
        "/v1/consumers/acme/webhook",
        token="consumers:write",
        json={"url": "https://attacker.example/in"},
    )
    assert moved.status_code == 403, moved.text
    assert moved.json()["scope"] == "keys:write"
    shown = api.request("GET", "/v1/consumers/acme/webhook").json()
    assert shown["url"] == "https://hooks.acme.example/in"
    same = api.request(
        "PUT",
        "/v1/consumers/acme/webhook",
        token="consumers:write",
        json={"url": "https://hooks.acme.example/in"},
    )
    assert same.status_code == 200, same.text
    _, token = api.token("both", ("consumers:write", "keys:write"))
    allowed = api.request(
        "PUT",
        "/v1/consumers/acme/webhook",
        token=token,
        json={"url": "https://hooks2.acme.example/in"},
    )
    assert allowed.status_code == 200, allowed.text


def test_loopback_webhooks_need_the_admins_own_opt_in(tmp_path: Path) -> None:
    """Without --webhooks-allow-loopback, no caller can point the dispatcher at the admin's host."""
    with running_admin(tmp_path, webhooks_allow_loopback=False) as admin:
        assert admin.request("POST", "/v1/consumers", json={"name": "acme"}).status_code == 201
        for url in ("http://127.0.0.1:6379/", "https://localhost:5432/", "http://[::1]:8081/"):
            refused = admin.request(
                "PUT",
                "/v1/consumers/acme/webhook",
                json={"url": url, "allow_http_loopback": True},
            )
            assert refused.status_code in (400, 422), refused.text
            assert refused.headers["content-type"] == "application/problem+json"
        assert admin.request("GET", "/v1/consumers/acme/webhook").status_code == 404  # nothing set
        public = admin.request(
            "PUT", "/v1/consumers/acme/webhook", json={"url": "https://hooks.example.com/in"}
        )
        assert public.status_code == 201, public.text
