"""The key filter (unknown keys refused without a key lookup) and the warm start."""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import exc as sa_exc

from keyswap.gateway.apikeys import ApiKeys, generate_key
from keyswap.gateway.app import GatewayApp, GatewaySettings, build_gateway
from keyswap.gateway.keyfilter import KeyFilter, _positions
from keyswap.gateway.keyring import Keyring
from keyswap.serverproto import http_protocol
from keyswap.store import Store
from keyswap.store.sql import QuickRevision
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


def test_a_lookup_reads_exactly_the_bits_an_add_sets() -> None:
    """may_hold's unrolled probes are _positions: a filter holding one digest says "maybe" for a
    digest only if all four of its bits are set, and for that digest itself."""
    for _ in range(2_000):
        key_filter = KeyFilter()
        key_filter.load(iter(()), 0, revision=1)
        held, other = _digests(2)
        key_filter.add(held)
        assert key_filter.may_hold(held)
        bits, mask = key_filter._table
        expected = all(bits[p >> 3] & (1 << (p & 7)) for p in _positions(other, mask))
        assert key_filter.may_hold(other) == expected
        # Clearing any one of the held digest's bits turns its answer to "no".
        position = _positions(held, mask)[secrets.randbelow(4)]
        bits[position >> 3] &= ~(1 << (position & 7))
        assert not key_filter.may_hold(held)


def test_a_load_covers_what_was_advanced_while_it_ran_unless_reset_or_cancelled() -> None:
    key_filter = KeyFilter()
    key_filter.begin_load()
    key_filter.add(b"\x01" * 32)  # a change applied during the load: its key, then its revision
    key_filter.advance(9)
    assert not key_filter.ready  # nothing covered before the load ends
    key_filter.load(iter(()), 0, revision=7)
    assert key_filter.revision == 9
    key_filter.reset()
    key_filter.begin_load()
    key_filter.advance(12)
    key_filter.reset()  # the log had a gap meanwhile: what was advanced no longer counts
    key_filter.load(iter(()), 0, revision=10)
    assert key_filter.revision == 10
    key_filter.reset()
    key_filter.begin_load()
    key_filter.advance(15)
    key_filter.cancel_load()  # the read failed
    key_filter.begin_load()
    key_filter.load(iter(()), 0, revision=11)
    assert key_filter.revision == 11


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
    db_url: str,
    upstream: RecordingUpstream,
    watch_interval: float = 1.0,
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


def test_on_sqlite_an_unknown_key_is_refused_without_a_store_thread(
    admin: tuple[str, Store, ApiKeys], upstream: RecordingUpstream
) -> None:
    """The revision is read on the event loop (its own connection, no SQLAlchemy, no thread);
    once the store has moved past the filter, the read goes through a store thread again, which
    applies the change first."""
    db_url, _store, keys = admin
    with gateway(db_url, upstream, watch_interval=60.0) as node:
        calls: list[str] = []
        store_calls = node.app.store_calls
        run = store_calls.run

        async def counted(function: Any, *args: Any) -> Any:
            calls.append(getattr(function, "__name__", "?"))
            return await run(function, *args)

        store_calls.run = counted  # type: ignore[method-assign]
        counter = QueryCounter(node.api_keys.store)
        for _ in range(20):
            assert get(node, generate_key()).status_code == 401
        assert calls == []
        assert counter.statements == []
        _, created = keys.create("acme")  # another process: the filter is now behind the store
        assert get(node, generate_key()).status_code == 401
        assert calls == ["_confirm_revision"]  # read on a thread, the change applied first
        assert get(node, created).status_code == 200
        calls.clear()
        assert get(node, generate_key()).status_code == 401
        assert calls == []  # caught up: back on the event loop


def test_a_failed_event_loop_read_falls_back_to_a_store_thread(
    admin: tuple[str, Store, ApiKeys], upstream: RecordingUpstream
) -> None:
    """The event loop's revision read failing (a locked or vanished file): the refusal is decided
    by a read on a store thread, as on PostgreSQL; a new key still works at once."""
    db_url, _store, keys = admin
    with gateway(db_url, upstream, watch_interval=60.0) as node:
        failures: list[int] = []
        calls: list[str] = []
        real = node.app._quick_revision
        assert real is not None
        quick: QuickRevision = real

        class Locked:
            def __call__(self) -> int:
                failures.append(1)
                raise sqlite3.OperationalError("database is locked")

            def close(self) -> None:
                quick.close()

        node.app._quick_revision = Locked()  # type: ignore[assignment]
        run = node.app.store_calls.run

        async def counted(function: Any, *args: Any) -> Any:
            calls.append(getattr(function, "__name__", "?"))
            return await run(function, *args)

        node.app.store_calls.run = counted  # type: ignore[method-assign]
        for _ in range(5):
            assert get(node, generate_key()).status_code == 401
        assert len(failures) == 5
        assert calls == ["_confirm_revision"] * 5  # each refusal after a read on a store thread
        _, created = keys.create("acme")
        assert get(node, created).status_code == 200


def test_a_restarted_gateway_has_recently_used_keys_cached_and_their_tokens_minted(
    admin: tuple[str, Store, ApiKeys], upstream: RecordingUpstream
) -> None:
    db_url, _store, keys = admin
    _, used = keys.create("acme")
    _, idle = keys.create("acme")
    revoked_record, revoked = keys.create("acme")
    keys.revoke(revoked_record.id)
    _, expired = keys.create("acme", expires_in=1, now=time.time() - 10)
    with gateway(db_url, upstream) as first:
        assert get(first, used).status_code == 200
    # Shut down: last-used times written. The next start caches the usable keys (that one first)
    # and mints their tokens before it reports ready: no store lookup, no signature on the request.
    with gateway(db_url, upstream) as second:
        assert second.api_keys.lookup_cached(used, time.time()) is not None
        assert second.api_keys.lookup_cached(idle, time.time()) is not None
        assert second.api_keys.lookup_cached(revoked, time.time()) is None
        assert second.api_keys.lookup_cached(expired, time.time()) is None
        assert len(second.app.minter) == 2
        assert httpx.get(second.url + "/__keyswap/ready", timeout=10).status_code == 200
        counter = QueryCounter(second.api_keys.store)
        assert get(second, used).status_code == 200
        assert get(second, idle).status_code == 200
        assert [s for s in counter.statements if "api_keys" in s] == []
        assert second.app.minter.minted == 2  # both at start, none since
        assert get(second, revoked).status_code == 401
        assert get(second, expired).status_code == 401


def test_the_warm_start_fills_the_cache_recent_keys_first_and_never_past_its_size(
    admin: tuple[str, Store, ApiKeys],
) -> None:
    _db_url, store, _keys = admin
    now = time.time()
    made = [_keys.create("acme", now=now - 100 + i) for i in range(5)]  # idle: newest last
    used_record, used = made[0]
    store.touch_api_keys({used_record.id: now - 5})
    small = ApiKeys(store, secret(), cache_size=3, cache_ttl=300)
    minted = small.warm(now - 3600, 10)
    # The usable keys cached, the recent one first, then the newest idle ones.
    assert [p.key_id for p in minted] == [used_record.id, made[4][0].id, made[3][0].id]
    assert small.cache_sizes[0] == 3
    # The idle keys are the least recently used, the oldest first: a new lookup evicts it.
    _, newer = _keys.create("acme")
    assert small.authenticate(newer, now).key_id
    cached = [key for _, key in made if small.lookup_cached(key, now) is not None]
    assert cached == [used, made[4][1]]  # the recent key and the newest idle key stayed
    assert small.cache_sizes[0] == 3
    # Without ``fill``, only recent keys.
    recent_only = ApiKeys(store, secret(), cache_size=3, cache_ttl=300)
    recent_only.warm(now - 3600, 10, fill=False)
    assert recent_only.cache_sizes[0] == 1


class _SlowStore(Store):
    """A store whose warm-start read waits for ``gate`` (a slow database, injected)."""

    def __init__(self, url: str, gate: threading.Event) -> None:
        super().__init__(url)
        self.gate = gate

    def recent_api_keys(self, since: float, limit: int) -> Any:
        assert self.gate.wait(10)
        return super().recent_api_keys(since, limit)


def test_the_node_reports_ready_only_once_its_warm_start_is_done(
    admin: tuple[str, Store, ApiKeys], upstream: RecordingUpstream
) -> None:
    db_url, _store, keys = admin
    _, key = keys.create("acme")
    gate = threading.Event()
    store = _SlowStore(db_url, gate)
    sock = bound_socket()
    settings = GatewaySettings(
        upstream.url, f"http://127.0.0.1:{sock.getsockname()[1]}", alg="ES256"
    )
    app = GatewayApp(
        settings, api_keys=ApiKeys(store, secret(), cache_ttl=300), keyring=Keyring(store, secret())
    )
    server = ServerThread(app, sock=sock, http=http_protocol()).start()
    try:
        health = httpx.get(server.url + "/__keyswap/health", timeout=10)
        warming = httpx.get(server.url + "/__keyswap/ready", timeout=10)
        assert health.status_code == 200  # alive: it serves
        assert (warming.status_code, warming.text) == (503, "warming")
        assert warming.headers["retry-after"] == "1"
        assert warming.headers["cache-control"] == "no-store"
        assert httpx.head(server.url + "/__keyswap/ready", timeout=10).status_code == 503
        assert httpx.post(server.url + "/__keyswap/ready", timeout=10).status_code == 405
        gate.set()
        assert app.warmed.wait(10)
        ready = httpx.get(server.url + "/__keyswap/ready", timeout=10)
        assert (ready.status_code, ready.text) == (200, "ready")
        assert len(app.minter) == 1  # the key's token was minted before "ready"
        assert (
            httpx.get(
                server.url + "/x", headers={"Authorization": f"Bearer {key}"}, timeout=10
            ).status_code
            == 200
        )
        assert app.minter.minted == 1
    finally:
        gate.set()
        server.stop()
        store.close()


class _PausedDigestsStore(Store):
    """A store whose key-filter reads each wait, once they have read, for their own gate (a slow
    read of a large key table, injected); ``entered[i]`` is set when read ``i`` has read."""

    def __init__(self, url: str, reads: int) -> None:
        super().__init__(url)
        self.gates = [threading.Event() for _ in range(reads)]
        self.entered = [threading.Event() for _ in range(reads)]
        self._calls = 0
        self._lock = threading.Lock()

    def all_api_key_digests(self) -> Any:
        result = super().all_api_key_digests()
        with self._lock:
            call, self._calls = self._calls, self._calls + 1
        if call < len(self.gates):
            self.entered[call].set()
            assert self.gates[call].wait(10)
        return result


def test_a_filter_reload_during_the_warm_start_load_never_loses_a_key(
    admin: tuple[str, Store, ApiKeys],
) -> None:
    """The warm start's filter load is slow (a large key table); a change the log cannot describe
    arrives meanwhile, so the node resets the filter and reloads it on a thread of its own. A key
    created after the first load finished and before the reload finished must stay in the filter:
    the reload must neither drop it (the adds it collects taken by the other load) nor replace a
    newer table by an older one; otherwise the filter covers the key's revision without holding it
    and the gateway refuses the new key with 401 (the store is no newer than the filter)."""
    db_url, _store, other = admin  # ``other``: another process creating keys
    store = _PausedDigestsStore(db_url, reads=2)
    try:
        keys = ApiKeys(store, secret(), cache_size=0)
        warm = threading.Thread(target=keys.load_filter)
        warm.start()  # the warm start's load
        assert store.entered[0].wait(10)
        keys.reload_filter_soon()  # a FULL change: reset, reload on a thread
        store.entered[1].wait(0.5)  # the reload has read (unless it waits for the first load)
        store.gates[0].set()
        warm.join(10)
        assert keys.filter.ready
        record, created = other.create("acme")  # created elsewhere; the change log names it
        keys.changed([record.id], [], store.revision())
        assert keys.absent(created) is None
        store.gates[1].set()
        deadline = time.monotonic() + 10
        while keys._filter_loading and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not keys._filter_loading
        assert keys.filter.ready
        covered = keys.absent(created)
        assert covered is None, (covered, store.revision())  # would be refused with 401
    finally:
        for gate in store.gates:
            gate.set()
        store.close()


def test_a_key_created_while_the_filter_loads_is_held_and_covered_when_the_load_ends(
    admin: tuple[str, Store, ApiKeys],
) -> None:
    """The filter is loading (the warm start, or a reload after a reset); a key is created after
    the load read the store and before the load ended, and the change log names it. The filter
    must hold that key, or the gateway refuses it with 401 once the filter covers its revision; and
    the load covers that revision as soon as it ends (the change was applied meanwhile), so that
    made-up keys are refused without a lookup at once, not only after the next change."""
    db_url, _store, other = admin  # ``other``: another process creating keys
    store = _PausedDigestsStore(db_url, reads=1)
    try:
        keys = ApiKeys(store, secret(), cache_size=0)
        loading = threading.Thread(target=keys.load_filter)
        loading.start()
        assert store.entered[0].wait(10)  # the load has read the store
        record, created = other.create("acme")
        keys.changed([record.id], [], store.revision())  # what the node does for the change
        store.gates[0].set()
        loading.join(10)
        assert keys.filter.ready
        assert keys.filter.revision == store.revision()  # not left behind the store
        assert keys.absent(created) is None  # held: looked up, never refused
        assert keys.absent(generate_key()) == store.revision()  # made-up keys: refused at once
        later, _ = other.create("acme")  # the next change
        keys.changed([later.id], [], store.revision())
        assert keys.filter.revision == store.revision()
        covered = keys.absent(created)
        assert covered is None, covered  # would be refused with 401
    finally:
        store.gates[0].set()
        store.close()


class _FailingDigestsStore(_PausedDigestsStore):
    """As :class:`_PausedDigestsStore`; the next ``api_key_digests`` read fails once ``fail`` is set
    (a store error, injected)."""

    def __init__(self, url: str, reads: int) -> None:
        super().__init__(url, reads)
        self.fail = threading.Event()

    def api_key_digests(self, key_ids: Any) -> Any:
        if self.fail.is_set():
            self.fail.clear()
            raise sa_exc.OperationalError("SELECT", (), Exception("injected"))
        return super().api_key_digests(key_ids)


def test_a_key_whose_digest_read_failed_during_a_load_is_never_covered_by_that_load(
    admin: tuple[str, Store, ApiKeys],
) -> None:
    """The filter is loading; the change log names a new key but reading its digest fails, so the
    node stops trusting the filter (reset, reload); a later change is applied while the same load
    still runs. That load must not cover the later change's revision (which is past the key it
    missed): the filter would then answer "surely absent" for the missed key at the store's
    revision, and the gateway would refuse it with 401 until the reload ends."""
    db_url, _store, other = admin  # ``other``: another process creating keys
    store = _FailingDigestsStore(db_url, reads=2)
    try:
        keys = ApiKeys(store, secret(), cache_size=0)
        loading = threading.Thread(target=keys.load_filter)
        loading.start()
        assert store.entered[0].wait(10)  # the load has read the store
        missed, missed_key = other.create("acme")
        store.fail.set()
        keys.changed([missed.id], [], store.revision())  # its digest read fails: reset, reload
        later, _ = other.create("acme")
        keys.changed([later.id], [], store.revision())  # applied while the same load runs
        store.gates[0].set()
        loading.join(10)
        assert not loading.is_alive()
        # The reload (read 1) is paused: the filter is what the first load left.
        covered = keys.absent(missed_key)
        now = store.revision()
        # "absent as of" a revision the store is past is looked up; as of the store's, refused 401.
        assert covered is None or covered < now, (covered, now)
    finally:
        for gate in store.gates:
            gate.set()
        store.close()
