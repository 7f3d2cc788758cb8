"""``GET /v1/usage`` and ``/v1/usage/top`` on a real admin server (SQLite and PostgreSQL), with hostile
input: every bad value a 4xx problem, never a 500, and nothing of another consumer leaks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from keyswap.store.usage import COUNTS, SqlUsageSink, UsageRow
from tests.support.admin_api import AdminApi, running_admin

PROBLEM = "application/problem+json"
NOW = time.time()
MINUTE = int(NOW) // 60 * 60


def row(consumer: str, key_id: str, requests: int, *, s5xx: int = 0, ago: int = 0) -> UsageRow:
    counts: dict[str, float] = dict.fromkeys(COUNTS, 0)
    counts.update(
        requests=requests,
        status_2xx=requests - s5xx,
        status_5xx=s5xx,
        bytes_out=requests * 10,
        latency_sum=requests * 0.02,
        latency_50ms=requests,
    )
    return UsageRow("n1", MINUTE - ago, consumer, key_id, tuple(counts[n] for n in COUNTS))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AdminApi]:
    with running_admin(tmp_path_factory.mktemp("admin"), request.param) as running:
        running.request("POST", "/v1/consumers", json={"name": "acme"})
        running.request("POST", "/v1/consumers", json={"name": "beta"})
        SqlUsageSink(running.store).write(
            [
                row("acme", "key_a", 5),
                row("acme", "key_b", 2, s5xx=1),
                row("acme", "key_a", 3, ago=3 * 3600),
                row("beta", "key_c", 1, s5xx=1),
                row("gone", "key_d", 4),  # a deleted consumer keeps its usage
                row("", "", 7),  # refused before a key was known
            ]
        )
        yield running


def test_usage_of_one_consumer_per_hour(api: AdminApi) -> None:
    response = api.request("GET", "/v1/usage?consumer=acme&by=hour", token="usage:read")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["consumer"] == "acme"
    assert body["by"] == "hour"
    assert [b["requests"] for b in body["buckets"]] == [3, 7]
    assert body["total"]["requests"] == 10
    assert body["total"]["status_5xx"] == 1
    assert body["total"]["latency_buckets"] == [0, 10, 0, 0, 0]
    assert body["buckets"][-1]["start"].endswith(":00:00Z")
    assert response.headers["etag"]


def test_usage_of_one_key_and_of_everyone(api: AdminApi) -> None:
    one = api.request("GET", "/v1/usage?consumer=acme&key=key_b", token="usage:read").json()
    assert one["total"]["requests"] == 2
    everyone = api.request("GET", "/v1/usage", token="usage:read").json()
    assert everyone["consumer"] is None
    assert everyone["total"]["requests"] == 22
    deleted = api.request("GET", "/v1/usage?consumer=gone", token="usage:read").json()
    assert deleted["total"]["requests"] == 4


def test_usage_window(api: AdminApi) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(MINUTE - 3600))
    body = api.request(
        "GET", f"/v1/usage?consumer=acme&since={since}&by=minute", token="usage:read"
    ).json()
    assert [b["requests"] for b in body["buckets"]] == [7]


def test_top_consumers(api: AdminApi) -> None:
    top = api.request("GET", "/v1/usage/top", token="usage:read").json()
    assert [(c["consumer"], c["totals"]["requests"]) for c in top["consumers"]] == [
        ("acme", 10),
        ("gone", 4),
        ("beta", 1),
    ]
    errors = api.request("GET", "/v1/usage/top?by=errors&limit=2", token="usage:read").json()
    assert [(c["consumer"], c["error_rate"]) for c in errors["consumers"]] == [
        ("beta", 1.0),
        ("acme", 0.1),
    ]
    sure = api.request("GET", "/v1/usage/top?by=errors&min_requests=5", token="usage:read")
    assert [c["consumer"] for c in sure.json()["consumers"]] == ["acme"]


def test_unknown_consumer_is_404(api: AdminApi) -> None:
    response = api.request("GET", "/v1/usage?consumer=nobody", token="usage:read")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(
    "query",
    [
        "consumer=" + quote("acme' OR '1'='1"),
        "consumer=" + quote("../acme"),
        "consumer=" + "a" * 65,
        "consumer=%00",
        "key=" + quote("key_a' --"),
        "key=" + "k" * 65,
        "by=week",
        "by=",
        "since=yesterday",
        "since=1700000000",
        "since=2026-12-07",
        "until=99999-01-01T00:00:00Z",
        "since=2026-12-07T00:00:00Z&until=2026-12-01T00:00:00Z",
        "since=0001-01-01T00:00:00Z&by=minute",
        "until=9999-12-31T23:59:59-12:00",
        "since=" + quote("2026-12-07T00:00:00+25:00"),
        "consumer=acme&consumer=beta&consumr=x",
        "prefix=a",
    ],
)
def test_bad_queries_are_4xx_problems(api: AdminApi, query: str) -> None:
    response = api.request("GET", "/v1/usage?" + query, token="usage:read")
    assert 400 <= response.status_code < 500, (query, response.status_code, response.text)
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(
    "query",
    ["by=latency", "limit=0", "limit=1001", "limit=x", "min_requests=0", "since=now", "until=-1"],
)
def test_bad_top_queries_are_4xx_problems(api: AdminApi, query: str) -> None:
    response = api.request("GET", "/v1/usage/top?" + query, token="usage:read")
    assert 400 <= response.status_code < 500, (query, response.status_code, response.text)
    assert response.headers["content-type"] == PROBLEM


def test_usage_needs_its_scope(api: AdminApi) -> None:
    assert api.request("GET", "/v1/usage", token=None).status_code == 401
    for scope in ("consumers:read", "audit:read", "keys:read"):
        response = api.request("GET", "/v1/usage?consumer=acme", token=scope)
        assert response.status_code == 403
        assert "usage:read" in response.text
    assert api.request("GET", "/v1/usage/top", token="consumers:write").status_code == 403
    assert api.request("GET", "/v1/usage", token="admin").status_code == 200


def test_a_far_past_since_is_fine_by_day(api: AdminApi) -> None:
    response = api.request("GET", "/v1/usage?since=2000-01-01T00:00:00Z&by=day", token="usage:read")
    assert response.status_code == 200
    assert response.json()["total"]["requests"] == 22
