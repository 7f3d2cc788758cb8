"""The key filter (unknown keys refused without a key lookup) and the warm start."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from keyswap.gateway.apikeys import ApiKeys, generate_key
from keyswap.gateway.app import GatewayApp, GatewaySettings, build_gateway
from keyswap.gateway.keyfilter import KeyFilter
from keyswap.serverproto import http_protocol
from keyswap.store import Store
from tests.support.asgi_server import ServerThread, bound_socket
from tests.support.gateway_state import SECRET_TEXT, QueryCounter, secret
from tests.support.upstream import RecordingUpstream

ENV = {"KEYSWAP_SECRET": SECRET_TEXT}


def _digests(count: int) -> list[bytes]:
    return [secrets.token_bytes(32) for _ in range(count)]


def test_the_filter_holds_what_it_loaded_and_what_was_added_meanwhile() -> None:
    key_filter = KeyFilter()
    outside = _digests(20_000)
    assert key_filter.may_hold(outside[0])  # not loaded: "maybe" for everything
    loaded, added = _digests(2_000), _digests(10)
    key_filter.begin_load()
    for digest in added:  # a change applied while the store is being read
        key_filter.add(digest)
    key_filter.load(iter(loaded), len(loaded), revision=7)
    assert key_filter.revision == 7
    assert all(key_filter.may_hold(d) for d in loaded + added)
    assert sum(key_filter.may_hold(d) for d in outside) < 10  # about 1 in 5,000 says "maybe"
    key_filter.advance(9)
    assert key_filter.revision == 9
    key_filter.reset()
    assert not key_filter.ready
    assert key_filter.may_hold(outside[0])
    key_filter.advance(12)  # not loaded: nothing to advance
    assert not key_filter.ready


def test_a_crowded_filter_asks_to_be_reloaded() -> None:
    key_filter = KeyFilter()
    key_filter.load(iter(()), 0, revision=1)
    for digest in _digests(5_000):
        key_filter.add(digest)
    assert key_filter.crowded


@dataclass
class Node:
    app: GatewayApp
    url: str

    @property
    def api_keys(self) -> ApiKeys:
        api_keys = self.app.api_keys
        assert isinstance(api_keys, ApiKeys)
        return api_keys


@contextmanager
def gateway(
    db_url: str, upstream: RecordingUpstream, watch_interval: float = 1.0
) -> Iterator[Node]:
    sock = bound_socket()
    config = GatewaySettings(
        upstream.url,
        f"http://127.0.0.1:{sock.getsockname()[1]}",
        alg="ES256",
        watch_interval=watch_interval,
    )
    app = build_gateway(config, db_url=db_url, env=ENV)
    server = ServerThread(app, sock=sock, http=http_protocol()).start()
    try:
        assert app.warmed.wait(10)
        yield Node(app, server.url)
    finally:
        server.stop()


def get(node: Node, key: str) -> httpx.Response:
    return httpx.get(node.url + "/x", headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[str, Store, ApiKeys]]:
    db_url = f"sqlite:///{tmp_path / 'keyswap.db'}"
    store = Store(db_url)
    try:
        store.create_consumer("acme")
        yield db_url, store, ApiKeys(store, secret(), cache_size=0)
    finally:
        store.close()


def test_unknown_keys_are_refused_without_a_key_lookup_and_a_new_key_works_at_once(
    admin: tuple[str, Store, ApiKeys], upstream: RecordingUpstream
) -> None:
    db_url, _store, keys = admin
    _, known = keys.create("acme")
    # No push on SQLite and a poll a minute apart: only the revision read can tell of a new key.
    with gateway(db_url, upstream, watch_interval=60.0) as app:
        counter = QueryCounter(app.api_keys.store)
        for _ in range(50):
            assert get(app, generate_key()).status_code == 401
        lookups = [s for s in counter.statements if "api_keys" in s]
        assert lookups == []  # the revision read only
        assert get(app, known).status_code == 200
        _, created = keys.create("acme")  # by another process, just now
        assert get(app, created).status_code == 200


def test_a_restarted_gateway_has_recently_used_keys_cached_and_their_tokens_minted(
    admin: tuple[str, Store, ApiKeys], upstream: RecordingUpstream
) -> None:
    db_url, _store, keys = admin
    _, used = keys.create("acme")
    _, idle = keys.create("acme")
    with gateway(db_url, upstream) as first:
        assert get(first, used).status_code == 200
    # Shut down: last-used times written. The next start caches that key and mints its token.
    with gateway(db_url, upstream) as second:
        assert second.api_keys.lookup_cached(used, time.time()) is not None
        assert second.api_keys.lookup_cached(idle, time.time()) is None
        assert len(second.app.minter) == 1
        assert get(second, used).status_code == 200
        assert len(second.app.minter) == 1
