"""A leak report to one node of two real ``keyswap gateway`` processes on PostgreSQL + Redis."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from keyswap.gateway.apikeys import ApiKeys
from keyswap.gateway.secretscanning import REPORT_PATH
from keyswap.store import Store
from tests.support.cluster import GatewayProcess, gateways, postgres_schema, redis_prefix
from tests.support.gateway_state import secret
from tests.support.github import github_stand_in, report
from tests.support.running_gateway import eventually
from tests.support.upstream import recording_upstream

pytestmark = pytest.mark.slow


def _get(node: GatewayProcess, key: str) -> int:
    return httpx.get(
        node.url + "/x", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).status_code


def test_a_key_reported_to_one_node_is_refused_by_every_node_within_a_second(
    tmp_path: Path,
) -> None:
    with (
        postgres_schema() as db_url,
        redis_prefix() as (redis_url, prefix),
        github_stand_in() as github,
        recording_upstream() as upstream,
    ):
        store = Store(db_url, schema="upgrade")
        try:
            store.create_consumer("acme")
            _, key = ApiKeys(store, secret(), cache_size=0).create("acme")
            extra = (
                "--redis",
                redis_url,
                "--redis-prefix",
                prefix,
                "--secret-scanning",
                "github",
                "--secret-scanning-keys-url",
                github.keys_url,
                "--no-webhooks",
            )
            with gateways(db_url, upstream.url, tmp_path, 2, extra) as nodes:
                for node in nodes:
                    assert _get(node, key) == 200  # cached on every node now
                body = report([key])
                response = httpx.post(
                    nodes[0].url + REPORT_PATH, content=body, headers=github.sign(body), timeout=10
                )
                reported = time.monotonic()
                assert response.status_code == 200, response.text
                assert response.json()[0]["label"] == "true_positive"
                for node in nodes:
                    eventually(lambda node=node: _get(node, key) == 401, timeout=1.0)  # type: ignore[misc]
                assert time.monotonic() - reported < 1.0
        finally:
            store.close()
