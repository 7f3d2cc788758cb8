"""Quotas and credits through the admin API: set, clear, shown, audited; bad input is a 4xx."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.admin_api import AdminApi


def _acme(api: AdminApi) -> None:
    assert api.request("POST", "/v1/consumers", json={"name": "acme"}).status_code == 201


def test_quota_and_credits_are_set_shown_and_cleared(any_api: AdminApi) -> None:
    _acme(any_api)
    fresh = any_api.request("GET", "/v1/consumers/acme").json()
    assert (fresh["quota"], fresh["credits"], fresh["credits_refill"]) == (None, None, None)
    patched = any_api.request(
        "PATCH",
        "/v1/consumers/acme",
        json={"quota": "1000/daily", "credits": 500, "credits_refill": "500/month"},
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["quota"], body["credits"], body["credits_refill"]) == (
        "1000/day",
        500,
        "500/month",
    )
    assert body["credits_set_at"].endswith("Z")
    listed = any_api.request("GET", "/v1/consumers").json()["items"]
    assert listed[0]["quota"] == "1000/day"
    # the refill alone keeps the balance's grant
    refill_only = any_api.request(
        "PATCH", "/v1/consumers/acme", json={"credits_refill": None}
    ).json()
    assert (refill_only["credits"], refill_only["credits_refill"]) == (500, None)
    assert refill_only["credits_set_at"] == body["credits_set_at"]
    cleared = any_api.request(
        "PATCH", "/v1/consumers/acme", json={"quota": "off", "credits": None}
    ).json()
    assert (cleared["quota"], cleared["credits"], cleared["credits_set_at"]) == (None, None, None)
    events = any_api.request("GET", "/v1/audit-events", params={"action": "consumer.update"}).json()
    changes = [event["changes"] for event in events["items"]]
    assert any(c.get("quota") == "1000/day" and c.get("credits") == 500 for c in changes)


@pytest.mark.parametrize(
    "body",
    [
        {"quota": "1000"},
        {"quota": "1000/week"},
        {"quota": "0/day"},
        {"quota": 5},
        {"quota": "x" * 100},
        {"credits": -1},
        {"credits": 10**13},
        {"credits": "many"},
        {"credits": 1.5},
        {"credits_refill": "5/hour"},
        {"credits_refill": ["5/day"]},
    ],
)
def test_bad_quota_input_is_a_4xx_problem(api: AdminApi, body: dict[str, Any]) -> None:
    _acme(api)
    response = api.request("PATCH", "/v1/consumers/acme", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert api.request("GET", "/v1/consumers/acme").json()["quota"] is None


def test_an_unknown_consumer_is_404(api: AdminApi) -> None:
    response = api.request("PATCH", "/v1/consumers/nobody", json={"quota": "1/day"})
    assert response.status_code == 404


def test_the_quota_status_route(api: AdminApi) -> None:
    _acme(api)
    assert api.request("GET", "/v1/consumers/acme/quota").json() == {"items": []}
    api.request("PATCH", "/v1/consumers/acme", json={"quota": "10/day", "credits": 3})
    items = api.request("GET", "/v1/consumers/acme/quota").json()["items"]
    assert [(i["kind"], i["limit"], i["used"], i["remaining"]) for i in items] == [
        ("quota", 10, 0, 10),
        ("credits", 3, 0, 3),
    ]
    assert items[0]["refills_at"].endswith("T00:00:00Z")
    assert items[1]["refills_at"] is None
    assert api.request("GET", "/v1/consumers/nobody/quota").status_code == 404
    assert api.request("GET", "/v1/consumers/%2e%2e/quota").status_code == 404
