"""Failures that are not the caller's: the database goes away (503, then recovery), and a bug (a problem
500 with the request id, logged; the server keeps serving)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.admin_api import AdminApi, running_admin
from tests.support.cluster import TcpRelay, postgres_schema, relayed_url


def test_a_database_that_goes_away_is_503_and_service_comes_back(tmp_path: Path) -> None:
    with postgres_schema() as url:
        target = url.split("@", 1)[1].split("/", 1)[0]
        host, port = target.split(":")
        with (
            TcpRelay(host, int(port)) as relay,
            running_admin(tmp_path, db_url=relayed_url(url, relay)) as api,
        ):
            assert api.request("GET", "/v1/consumers").status_code == 200
            relay.cut()
            down = api.request("GET", "/v1/consumers")
            assert down.status_code == 503
            assert down.headers["content-type"] == "application/problem+json"
            assert down.headers["retry-after"] == "1"
            ready = api.request("GET", "/readyz", token=None)
            assert ready.status_code == 503
            relay.restore()
            assert api.request("GET", "/v1/consumers").status_code == 200
            assert api.request("GET", "/readyz", token=None).status_code == 200


def test_a_bug_is_a_problem_500_with_the_request_id_and_is_logged(
    api: AdminApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**_: object) -> None:
        raise RuntimeError("a bug with a detail the caller must not see")

    monkeypatch.setattr(api.store, "page_consumers", broken)
    with caplog.at_level(logging.ERROR, logger="keyswap.admin"):
        response = api.request("GET", "/v1/consumers", headers={"X-Request-Id": "bug-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "bug-1"
    assert "detail the caller" not in response.text
    assert response.json()["instance"] == "bug-1"
    assert any("bug-1" in record.getMessage() for record in caplog.records)
    monkeypatch.undo()
    assert api.request("GET", "/v1/consumers").status_code == 200
