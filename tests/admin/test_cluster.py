"""A real ``keyswap admin`` process and two ``keyswap gateway`` nodes on PostgreSQL and Redis: a key
created through the API works at every node within a second, and is refused everywhere within a second
of its revocation through the API."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import httpx
import pytest

from keyswap.manage.actor import Actor
from keyswap.manage.context import Context
from keyswap.manage.tokens import NewAdminToken, create_admin_token
from keyswap.store import Store
from tests.support.asgi_server import free_port
from tests.support.cluster import gateways, postgres_schema, redis_prefix
from tests.support.gateway_state import SECRET_TEXT, secret
from tests.support.keyswap_process import running_keyswap
from tests.support.running_gateway import eventually
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.slow


def test_api_changes_reach_two_gateway_nodes_on_postgresql_within_a_second(tmp_path: Path) -> None:
    with postgres_schema() as db_url, redis_prefix() as (redis_url, prefix):
        store = Store(db_url, schema="upgrade")
        upstream = RecordingUpstream().start()
        try:
            store.create_consumer("acme", {})
            token = create_admin_token(
                Context(store, Actor.cli("test")), secret(), NewAdminToken("ops", ("admin",))
            ).token
            extra = ("--redis", redis_url, "--redis-prefix", prefix)
            port = free_port()
            args = ["admin", "--port", str(port), "--db", db_url, "--redis", redis_url]
            env = {"KEYSWAP_SECRET": SECRET_TEXT, "KEYSWAP_REDIS_PREFIX": prefix}
            with (
                gateways(db_url, upstream.url, tmp_path, 2, extra) as nodes,
                running_keyswap(args, port=port, ready_path="/healthz", env=env) as admin,
            ):
                headers = {"Authorization": f"Bearer {token}"}
                created = httpx.post(
                    admin.url + "/v1/consumers/acme/keys", headers=headers, timeout=10
                ).json()
                made = time.monotonic()

                def answers(url: str, status: int) -> bool:
                    auth = {"Authorization": f"Bearer {created['key']}"}
                    return httpx.get(url + "/x", headers=auth, timeout=5).status_code == status

                for node in nodes:
                    eventually(functools.partial(answers, node.url, 200), timeout=1.0)
                assert time.monotonic() - made < 1.0
                revoked = httpx.post(
                    admin.url + f"/v1/keys/{created['id']}/revoke", headers=headers, timeout=10
                )
                assert revoked.status_code == 200
                gone = time.monotonic()
                for node in nodes:
                    eventually(functools.partial(answers, node.url, 401), timeout=1.0)
                assert time.monotonic() - gone < 1.0
        finally:
            upstream.stop()
            store.close()
