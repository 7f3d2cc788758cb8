"""``GET /metrics`` of the admin API: counts by method and status class, no token needed, no names."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from keyswap.admin.metrics import AdminMetrics
from tests.admin.test_cli import _token
from tests.support.admin_api import running_admin
from tests.support.asgi_server import free_port
from tests.support.gateway_state import SECRET_TEXT
from tests.support.keyswap_process import running_keyswap


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_admin_metrics_count_requests_and_auth_failures_without_a_token(tmp_path: Path) -> None:
    with running_admin(tmp_path, metrics=AdminMetrics()) as api:
        assert api.request("POST", "/v1/consumers", json={"name": "acme-corp"}).status_code == 201
        assert api.request("GET", "/v1/consumers").status_code == 200
        assert api.request("GET", "/v1/consumers", token=None).status_code == 401
        assert api.request("GET", "/v1/consumers", token="wrong").status_code == 401
        response = httpx.get(api.url + "/metrics", timeout=10)
        refused = httpx.post(api.url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    requests = "keyswap_admin_requests_total"
    assert found[(requests, (("method", "POST"), ("status_class", "2xx")))] == 1
    assert found[(requests, (("method", "GET"), ("status_class", "2xx")))] == 1
    assert found[(requests, (("method", "GET"), ("status_class", "4xx")))] == 2
    assert found[("keyswap_admin_auth_failures_total", ())] == 2
    assert found[("keyswap_admin_request_duration_seconds_count", ())] == 4
    assert "acme-corp" not in response.text
    assert all(token not in response.text for token in api.tokens.values())
    assert refused.status_code == 405


def test_without_metrics_the_path_is_an_ordinary_unknown_path(tmp_path: Path) -> None:
    with running_admin(tmp_path) as api:
        response = httpx.get(api.url + "/metrics", timeout=10)
    assert response.status_code == 404
    assert "keyswap_admin" not in response.text


def test_keyswap_admin_serves_metrics_and_logs_json_lines(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'k.db'}"
    port = free_port()
    env = {"KEYSWAP_ADMIN_DB": db_url, "KEYSWAP_SECRET": SECRET_TEXT}
    args = ["admin", "--port", str(port), "--log-format", "json"]
    with running_keyswap(args, port=port, ready_path="/healthz", env=env) as process:
        token = _token(db_url)
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(process.url + "/v1/consumers", json={"name": "acme"}, headers=headers)
        assert created.status_code == 201
        assert httpx.get(process.url + "/v1/consumers").status_code == 401
        scraped = httpx.get(process.url + "/metrics", timeout=10)
        assert scraped.status_code == 200
        assert 'keyswap_admin_requests_total{method="POST",status_class="2xx"} 1.0' in scraped.text
    log = process.stop()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["message"].startswith("keyswap admin API on http://") for line in lines)
    posted = [line for line in lines if line.get("method") == "POST"]
    assert len(posted) == 1
    assert posted[0]["path"] == "/v1/consumers"
    assert posted[0]["status"] == 201
    assert isinstance(posted[0]["latency_ms"], float)
    assert posted[0]["request_id"] == created.headers["x-request-id"]
    assert token not in log
