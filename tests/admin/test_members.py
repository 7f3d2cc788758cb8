"""Consumer members and portal sign-in links through the admin API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyswap.manage import Actor, Context
from keyswap.manage.audit import AuditQuery, list_events
from keyswap.manage.portal import redeem_link
from tests.support.admin_api import AdminApi, running_admin


def _ctx(api: AdminApi) -> Context:
    return Context(api.store, Actor.cli("test"))


@pytest.fixture
def portal_api(tmp_path: Path) -> Iterator[AdminApi]:
    with running_admin(tmp_path, portal_url="https://api.example.com") as api:
        assert api.request("POST", "/v1/consumers", json={"name": "acme"}).status_code == 201
        yield api


def test_members_are_added_listed_and_removed(portal_api: AdminApi) -> None:
    api = portal_api
    added = api.request(
        "POST", "/v1/consumers/acme/members", json={"kind": "email", "value": "Dev@Example.com"}
    )
    assert added.status_code == 201, added.text
    assert added.json()["value"] == "dev@example.com"
    again = api.request(
        "POST", "/v1/consumers/acme/members", json={"kind": "email", "value": "dev@example.com"}
    )
    assert again.status_code == 409
    bad = api.request(
        "POST", "/v1/consumers/acme/members", json={"kind": "email", "value": "not-an-address"}
    )
    assert bad.status_code in (400, 422)
    listed = api.request("GET", "/v1/consumers/acme/members").json()["items"]
    assert [(m["kind"], m["value"]) for m in listed] == [("email", "dev@example.com")]
    member_id = listed[0]["id"]
    assert api.request("DELETE", "/v1/consumers/nobody/members/1").status_code == 404
    assert api.request("DELETE", f"/v1/consumers/acme/members/{member_id}").status_code == 204
    assert api.request("DELETE", f"/v1/consumers/acme/members/{member_id}").status_code == 404
    assert api.request("GET", "/v1/consumers/acme/members").json()["items"] == []
    actions = [e.action for e in list_events(_ctx(api), AuditQuery(action="member")).events]
    assert actions == ["member.remove", "member.add"]


def test_a_portal_link_is_whole_once_and_works_once(portal_api: AdminApi) -> None:
    made = portal_api.request(
        "POST",
        "/v1/consumers/acme/portal-links",
        json={"email": "dev@example.com", "expires_in": 60},
    )
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    body = made.json()
    assert body["url"] == "https://api.example.com" + body["path"]
    assert body["path"].endswith(body["token"])
    assert redeem_link(_ctx(portal_api), body["token"]) is not None
    assert redeem_link(_ctx(portal_api), body["token"]) is None
    events = list_events(_ctx(portal_api), AuditQuery(action="portal.link")).events
    assert body["token"] not in repr(events)
    assert (
        portal_api.request(
            "POST", "/v1/consumers/nobody/portal-links", json={"email": "dev@example.com"}
        ).status_code
        == 404
    )
