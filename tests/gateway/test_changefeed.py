"""Targeted invalidation: a change reaches every node and invalidates only what it names.

Real gateways (uvicorn in a thread) over real SQLite and PostgreSQL; another ``Store`` plays the
process (CLI, admin service) making the changes.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from keyswap.gateway.apikeys import ApiKeys
from keyswap.gateway.app import GatewayApp, GatewaySettings, build_gateway
from keyswap.gateway.changefeed import FULL, ChangeFeed, Changes, parse
from keyswap.serverproto import http_protocol
from keyswap.store import Store
from tests.support.asgi_server import ServerThread, bound_socket
from tests.support.cluster import postgres_schema
from tests.support.gateway_state import SECRET_TEXT, secret
from tests.support.running_gateway import eventually, token_seen_by
from tests.support.upstream import RecordingUpstream

ENV = {"KEYSWAP_SECRET": SECRET_TEXT}


@dataclass
class Node:
    app: GatewayApp
    server: ServerThread

    def get(self, key: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.get(self.server.url + "/x", headers=headers, timeout=10)

    def cached(self, key: str) -> bool:
        """True if the node answers ``key`` from memory (no store lookup)."""
        api_keys = self.app.api_keys
        assert isinstance(api_keys, ApiKeys)
        return api_keys.lookup_cached(key, time.time()) is not None

    def refuses(self, key: str) -> bool:
        return self.get(key).status_code == 401

    def applied(self, store: Store) -> bool:
        changes = self.app.changes
        return changes is not None and changes.revision == store.revision()


@contextmanager
def node(db_url: str, upstream: RecordingUpstream) -> Iterator[Node]:
    sock = bound_socket()
    settings = GatewaySettings(
        upstream.url, f"http://127.0.0.1:{sock.getsockname()[1]}", alg="ES256", watch_interval=0.1
    )
    app = build_gateway(settings, db_url=db_url, env=ENV)
    server = ServerThread(app, sock=sock, http=http_protocol()).start()
    try:
        yield Node(app, server)
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'keyswap.db'}"
        Store(url).close()
        yield url
    else:
        with postgres_schema() as url:
            Store(url, schema="upgrade").close()
            yield url


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def admin(db_url: str) -> Iterator[tuple[Store, ApiKeys]]:
    store = Store(db_url)
    try:
        yield store, ApiKeys(store, secret(), cache_size=0)
    finally:
        store.close()


def _claims(upstream: RecordingUpstream) -> dict[str, Any]:
    payload = token_seen_by(upstream).split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def _jti(upstream: RecordingUpstream) -> str:
    return str(_claims(upstream)["jti"])


def test_an_unrelated_change_keeps_other_consumers_cached_lookups_and_tokens(
    db_url: str, upstream: RecordingUpstream, admin: tuple[Store, ApiKeys]
) -> None:
    store, keys = admin
    store.create_consumer("acme")
    _, key = keys.create("acme")
    with node(db_url, upstream) as gateway:
        assert gateway.get(key).status_code == 200
        minted = _jti(upstream)
        assert gateway.cached(key)
        for n in range(3):  # another process creates consumers and keys
            store.create_consumer(f"other{n}")
            keys.create(f"other{n}")
        eventually(lambda: gateway.applied(store), timeout=2)
        assert gateway.app.last_changes is not None
        assert not gateway.app.last_changes.full
        assert gateway.cached(key)  # no store lookup for acme's key
        assert gateway.get(key).status_code == 200
        assert _jti(upstream) == minted  # nor a new token


def test_a_change_to_a_key_reaches_every_node_within_a_second_and_only_that_key(
    db_url: str, upstream: RecordingUpstream, admin: tuple[Store, ApiKeys]
) -> None:
    store, keys = admin
    store.create_consumer("acme", {"plan": "free"})
    store.create_consumer("bolt")
    revoked_record, revoked = keys.create("acme")
    _, kept = keys.create("bolt")
    _, sibling = keys.create("acme")
    with ExitStack() as stack:
        nodes = [stack.enter_context(node(db_url, upstream)) for _ in range(2)]
        tokens = {}
        for gateway in nodes:
            for key in (revoked, kept, sibling):
                assert gateway.get(key).status_code == 200
            assert gateway.get(kept).status_code == 200
            tokens[id(gateway)] = _jti(upstream)
        keys.revoke(revoked_record.id)
        for gateway in nodes:
            assert eventually(partial(gateway.refuses, revoked), 2) < 1.0
        for gateway in nodes:
            assert gateway.cached(kept)
            assert gateway.cached(sibling)
            assert gateway.get(kept).status_code == 200
            assert _jti(upstream) == tokens[id(gateway)]
        # A consumer change re-reads that consumer's keys: the next token carries the new metadata.
        store.set_consumer_metadata("acme", {"plan": "gold"})
        for gateway in nodes:
            eventually(partial(gateway.applied, store), timeout=2)
            assert gateway.cached(kept)
            assert gateway.get(sibling).status_code == 200
            assert _claims(upstream)["metadata"] == {"plan": "gold"}


def test_a_gap_in_the_change_log_falls_back_to_clearing_everything(
    db_url: str, upstream: RecordingUpstream, admin: tuple[Store, ApiKeys]
) -> None:
    store, keys = admin
    store.create_consumer("acme")
    record, key = keys.create("acme")
    with node(db_url, upstream) as gateway:
        assert gateway.get(key).status_code == 200
        minted = _jti(upstream)
        with store.engine.begin() as conn:  # a revision the log does not describe (pruned)
            conn.execute(sa.text("UPDATE meta SET revision = revision + 1 WHERE id = 1"))
        eventually(lambda: gateway.applied(store), timeout=2)
        assert gateway.app.last_changes == FULL  # every known key re-read, every token flushed
        assert gateway.get(key).status_code == 200
        assert _jti(upstream) != minted
        # A key revoked while this node was not told what changed is still refused at once.
        keys.revoke(record.id)
        eventually(lambda: gateway.get(key).status_code == 401, timeout=1)


def test_the_store_log_says_what_changed_and_when_it_cannot(
    db_url: str, admin: tuple[Store, ApiKeys], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, keys = admin
    start = store.revision()
    acme = store.create_consumer("acme")
    record, _ = keys.create("acme")
    current, rows = store.changes_since(start)
    assert (current, rows) == (start + 2, [("consumer", str(acme.id)), ("key", record.id)])
    assert parse(rows or []) == Changes(
        key_ids=frozenset({record.id}), consumer_ids=frozenset({acme.id})
    )
    assert store.changes_since(current) == (current, [])
    monkeypatch.setattr("keyswap.store.sql.CHANGE_LOG_READ", 1)
    assert store.changes_since(start) == (current, None)  # too far behind: clear everything
    feed = ChangeFeed(store)
    assert feed.read() == FULL  # no baseline yet
    assert feed.read() == Changes()


def test_parse_refuses_what_it_does_not_know() -> None:
    assert parse([("signing", "")]) == Changes(signing=True)
    assert parse([("key", "key_a"), ("all", "")]) == FULL
    assert parse([("consumer", "x")]) == FULL


def test_admin_token_changes_invalidate_nothing_a_gateway_caches(tmp_path: Path) -> None:
    """Admin tokens (the admin API's credentials) are logged as their own kind: no full clear."""
    assert parse([("admin_token", "adm_x")]) == Changes()
    assert parse([("admin_token", "adm_x"), ("key", "key_a")]) == Changes(
        key_ids=frozenset({"key_a"})
    )
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        before = store.revision()
        store.insert_admin_token(
            token_id="adm_1",
            name="ops",
            digest=b"d" * 32,
            hint="ksadm_...abcd",
            scopes=("admin",),
            created_at=1.0,
            expires_at=None,
        )
        store.revoke_admin_token("adm_1", now=2.0)
        current, rows = store.changes_since(before)
        assert current == before + 2
        assert rows is not None
        assert parse(rows) == Changes()
    finally:
        store.close()


def test_webhook_changes_invalidate_nothing_a_gateway_caches() -> None:
    """Consumers' webhooks are logged as their own kind: a gateway caches nothing of them."""
    assert parse([("webhook", "7")]) == Changes()
    assert parse([("webhook", "7"), ("consumer", "7")]) == Changes(consumer_ids=frozenset({7}))
