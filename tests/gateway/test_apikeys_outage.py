"""API keys while the database is unreachable: known keys keep working for a bounded time, unknown keys
get 503 (never 401), and everything recovers by itself. The outage is a TCP relay in front of a real
PostgreSQL that drops every connection and refuses new ones."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from keyswap.errors import InvalidApiKey, StoreUnavailable
from keyswap.gateway.apikeys import ApiKeys, generate_key
from keyswap.gateway.app import GatewayApp, GatewaySettings, build_gateway
from keyswap.gateway.cluster import ClusterSettings
from keyswap.gateway.keyring import Keyring
from keyswap.store import Store
from tests.support.asgi_server import ServerThread, bound_socket
from tests.support.cluster import TcpRelay, postgres_schema, relayed_url
from tests.support.gateway_state import SECRET_TEXT, Clock, secret
from tests.support.running_gateway import eventually
from tests.support.upstream import RecordingUpstream

GRACE = 300.0


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema() as url:
        Store(url, schema="upgrade").close()
        yield url


@pytest.fixture
def relay(pg_url: str) -> Iterator[TcpRelay]:
    target = sa.make_url(pg_url)
    with TcpRelay(target.host or "127.0.0.1", target.port or 5432) as relay:
        yield relay


class Setup:
    def __init__(self, pg_url: str, relay: TcpRelay, grace: float = GRACE) -> None:
        self.admin = Store(pg_url)  # direct: the outage is between the gateway and the database
        self.admin.create_consumer("acme", {"plan": "gold"})
        self.admin_keys = ApiKeys(self.admin, secret(), cache_size=0)
        self.store = Store(relayed_url(pg_url, relay))
        self.monotonic = Clock(1000.0)
        self.keys = ApiKeys(
            self.store, secret(), cache_ttl=5.0, outage_grace=grace, monotonic=self.monotonic
        )

    def close(self) -> None:
        self.store.close()
        self.admin.close()


@pytest.fixture
def setup(pg_url: str, relay: TcpRelay) -> Iterator[Setup]:
    made = Setup(pg_url, relay)
    yield made
    made.close()


def test_a_known_key_keeps_working_from_memory_while_the_database_is_away(
    setup: Setup, relay: TcpRelay
) -> None:
    record, key = setup.admin_keys.create("acme")
    assert setup.keys.authenticate(key).metadata == {"plan": "gold"}
    relay.cut()
    setup.monotonic.advance(60)  # long past the 5 s cache TTL: the store would be asked
    principal = setup.keys.authenticate(key)
    assert (principal.key_id, principal.consumer) == (record.id, "acme")
    assert setup.keys.store_down


def test_an_unknown_key_is_unavailable_not_invalid_during_an_outage(
    setup: Setup, relay: TcpRelay
) -> None:
    _, key = setup.admin_keys.create("acme")  # valid, but this node has never seen it
    relay.cut()
    with pytest.raises(StoreUnavailable):
        setup.keys.authenticate(key)
    with pytest.raises(StoreUnavailable):
        setup.keys.lookup_cached(key)  # answered from memory while the store is failing
    with pytest.raises(InvalidApiKey):
        setup.keys.authenticate("ks_malformed")  # no lookup needed to refuse this one


def test_a_key_known_to_be_revoked_stays_refused_during_an_outage(
    setup: Setup, relay: TcpRelay
) -> None:
    record, key = setup.admin_keys.create("acme")
    setup.admin.revoke_api_key(record.id, now=time.time())
    with pytest.raises(InvalidApiKey):
        setup.keys.authenticate(key)
    relay.cut()
    setup.monotonic.advance(60)
    with pytest.raises(InvalidApiKey):
        setup.keys.authenticate(key)


def test_known_keys_work_only_for_the_outage_grace(setup: Setup, relay: TcpRelay) -> None:
    _, key = setup.admin_keys.create("acme")
    setup.keys.authenticate(key)
    relay.cut()
    setup.monotonic.advance(GRACE - 1)
    setup.keys.authenticate(key)
    setup.monotonic.advance(1)
    with pytest.raises(StoreUnavailable):
        setup.keys.authenticate(key)


def test_a_failing_store_is_left_alone_for_the_retry_interval_then_used_again(
    setup: Setup, relay: TcpRelay
) -> None:
    _, known = setup.admin_keys.create("acme")
    _, new = setup.admin_keys.create("acme")
    setup.keys.authenticate(known)
    relay.cut()
    setup.monotonic.advance(10)
    assert setup.keys.lookup_cached(known) is None  # stale: the store must be asked, off the loop
    setup.keys.authenticate(known)  # ...which fails, and the known key is served from memory
    assert setup.keys.lookup_cached(known) is not None  # ...then known keys need no thread at all
    relay.restore()
    with pytest.raises(StoreUnavailable):
        setup.keys.authenticate(new)  # within the retry interval: the store is not asked
    setup.monotonic.advance(1.0)
    assert setup.keys.authenticate(new).consumer == "acme"
    assert not setup.keys.store_down


def test_a_cache_flush_during_an_outage_keeps_known_keys(setup: Setup, relay: TcpRelay) -> None:
    _, key = setup.admin_keys.create("acme")
    setup.keys.authenticate(key)
    relay.cut()
    setup.keys.clear_cache()  # a change notification arriving over Redis, say
    assert setup.keys.authenticate(key).consumer == "acme"


def test_no_grace_means_every_key_waits_for_the_database(pg_url: str, relay: TcpRelay) -> None:
    setup = Setup(pg_url, relay, grace=0)
    try:
        _, key = setup.admin_keys.create("acme")
        setup.keys.authenticate(key)
        relay.cut()
        setup.monotonic.advance(6)
        with pytest.raises(StoreUnavailable):
            setup.keys.authenticate(key)
    finally:
        setup.close()


def test_the_gateway_answers_503_for_unknown_keys_and_serves_known_ones_then_recovers(
    pg_url: str, relay: TcpRelay
) -> None:
    upstream = RecordingUpstream().start()
    admin = Store(pg_url)
    admin.create_consumer("acme")
    admin_keys = ApiKeys(admin, secret(), cache_size=0)
    _, known = admin_keys.create("acme")
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = GatewaySettings(upstream.url, url, alg="ES256", watch_interval=0.1)
    app = build_gateway(
        settings,
        db_url=relayed_url(pg_url, relay),
        env={"KEYSWAP_SECRET": SECRET_TEXT},
        cluster=ClusterSettings(rotate_every=0),
    )
    app.prepare()
    server = ServerThread(app, sock=sock).start()

    def get(key: str) -> httpx.Response:
        return httpx.get(url + "/x", headers={"Authorization": f"Bearer {key}"}, timeout=10)

    try:
        assert app.warmed.wait(10)
        # Made after the warm start (which caches every usable key): unseen by this node.
        _, unknown = admin_keys.create("acme")
        assert get(known).status_code == 200
        relay.cut()
        assert get(known).status_code == 200
        refused = get(unknown)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert get(generate_key()).status_code == 503  # unknown to this node: cannot say 401
        relay.restore()
        eventually(lambda: get(unknown).status_code == 200)
        assert get(generate_key()).status_code == 401
        assert len(upstream.received) >= 3
    finally:
        server.stop()
        admin.close()
        upstream.stop()


# -- what this node learned is never forgotten (issue 11, item 3) ----------------------------------


def test_a_revocation_this_node_was_told_about_holds_through_an_outage(
    setup: Setup, relay: TcpRelay
) -> None:
    record, key = setup.admin_keys.create("acme")
    setup.keys.authenticate(key)  # known here, good as an outage fallback
    setup.admin.revoke_api_key(record.id, now=time.time())
    setup.keys.clear_cache()  # what the gateway does on the change notification
    relay.cut()
    setup.monotonic.advance(60)
    with pytest.raises(InvalidApiKey):
        setup.keys.authenticate(key)
    with pytest.raises(InvalidApiKey):
        setup.keys.lookup_cached(key)


def test_a_roll_this_node_was_told_about_ends_the_old_key_through_an_outage(
    setup: Setup, relay: TcpRelay
) -> None:
    record, key = setup.admin_keys.create("acme")
    setup.keys.authenticate(key)
    setup.admin_keys.roll(record.id, grace=60, now=time.time())
    setup.keys.clear_cache()
    relay.cut()
    setup.keys.authenticate(key)  # within the roll's grace: still good
    with pytest.raises(InvalidApiKey):
        setup.keys.authenticate(key, now=time.time() + 61)  # the new expiry, learned before the cut


def test_a_deleted_key_is_not_served_from_memory_after_the_change(
    setup: Setup, relay: TcpRelay
) -> None:
    _, key = setup.admin_keys.create("acme")
    setup.keys.authenticate(key)
    setup.admin.delete_consumer("acme")
    setup.keys.clear_cache()
    relay.cut()
    setup.monotonic.advance(60)
    with pytest.raises(StoreUnavailable):  # not known any more: cannot say more than 503
        setup.keys.authenticate(key)


def test_an_expired_key_is_refused_during_an_outage(setup: Setup, relay: TcpRelay) -> None:
    now = time.time()
    _, key = setup.admin_keys.create("acme", expires_in=30, now=now)
    setup.keys.authenticate(key, now=now)
    relay.cut()
    setup.monotonic.advance(60)
    setup.keys.authenticate(key, now=now + 29)
    with pytest.raises(InvalidApiKey):
        setup.keys.authenticate(key, now=now + 30)


def test_the_change_refresh_reads_known_keys_in_one_batch_and_makes_them_fresh(
    setup: Setup, relay: TcpRelay
) -> None:
    keys = [setup.admin_keys.create("acme")[1] for _ in range(3)]
    for key in keys:
        setup.keys.authenticate(key)
    setup.admin.set_consumer_metadata("acme", {"plan": "platinum"})
    setup.keys.clear_cache()
    relay.cut()  # no lookup needed: the refresh confirmed every known key
    assert {setup.keys.authenticate(key).metadata["plan"] for key in keys} == {"platinum"}
    assert not setup.keys.store_down


def test_the_gateway_refuses_a_key_revoked_before_the_outage(
    pg_url: str, relay: TcpRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = RecordingUpstream().start()
    admin = Store(pg_url)
    admin.create_consumer("acme")
    admin_keys = ApiKeys(admin, secret(), cache_size=0)
    record, key = admin_keys.create("acme")
    _, other = admin_keys.create("acme")
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = GatewaySettings(upstream.url, url, alg="ES256", watch_interval=0.1)
    app = build_gateway(
        settings,
        db_url=relayed_url(pg_url, relay),
        env={"KEYSWAP_SECRET": SECRET_TEXT},
        cluster=ClusterSettings(rotate_every=0),
    )
    changes: list[None] = []
    react = app.on_change

    def on_change() -> None:
        react()
        changes.append(None)

    monkeypatch.setattr(app, "on_change", on_change)
    app.prepare()
    server = ServerThread(app, sock=sock).start()

    def get(key: str) -> httpx.Response:
        return httpx.get(url + "/x", headers={"Authorization": f"Bearer {key}"}, timeout=10)

    try:
        assert get(key).status_code == 200
        assert get(other).status_code == 200
        admin_keys.revoke(record.id)
        eventually(lambda: bool(changes))  # the gateway saw the change (LISTEN/NOTIFY or a poll)
        relay.cut()
        assert get(key).status_code == 401
        assert get(other).status_code == 200  # the outage fallback still serves good keys
    finally:
        server.stop()
        admin.close()
        upstream.stop()


# -- unknown keys have a cache of their own (issue 11, item 5) -------------------------------------


def test_a_flood_of_unknown_keys_does_not_evict_known_keys(pg_url: str, relay: TcpRelay) -> None:
    setup = Setup(pg_url, relay)
    try:
        setup.keys = ApiKeys(
            setup.store, secret(), cache_size=50, cache_ttl=5.0, monotonic=setup.monotonic
        )
        _, key = setup.admin_keys.create("acme")
        setup.keys.authenticate(key)
        for _ in range(120):  # well-formed (the checksum is public), unknown
            with pytest.raises(InvalidApiKey):
                setup.keys.authenticate(generate_key())
        relay.cut()
        setup.monotonic.advance(60)
        assert setup.keys.authenticate(key).consumer == "acme"
    finally:
        setup.close()


def test_unknown_keys_are_cached_within_their_own_bound(setup: Setup, relay: TcpRelay) -> None:
    keys = ApiKeys(setup.store, secret(), cache_size=10, unknown_cache_size=5, cache_ttl=5.0)
    _, good = setup.admin_keys.create("acme")
    keys.authenticate(good)
    unknown = [generate_key() for _ in range(8)]
    for candidate in unknown:
        with pytest.raises(InvalidApiKey):
            keys.authenticate(candidate)
    assert keys.cache_sizes == (1, 5)
    relay.cut()
    with pytest.raises(InvalidApiKey):  # still cached: refused without the store
        keys.authenticate(unknown[-1])


def test_the_gateway_serves_a_known_key_through_an_outage_after_a_flood_of_unknown_keys(
    pg_url: str, relay: TcpRelay
) -> None:
    upstream = RecordingUpstream().start()
    admin = Store(pg_url)
    admin.create_consumer("acme")
    _, key = ApiKeys(admin, secret(), cache_size=0).create("acme")
    store = Store(relayed_url(pg_url, relay))
    monotonic = Clock(1000.0)
    api_keys = ApiKeys(store, secret(), cache_size=20, cache_ttl=5.0, monotonic=monotonic)
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = GatewayApp(
        GatewaySettings(upstream.url, url, alg="ES256"),
        api_keys=api_keys,
        keyring=Keyring(store, secret()),
    )
    app.prepare()
    server = ServerThread(app, sock=sock).start()

    def get(key: str) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.get(url + "/x", headers=headers, timeout=10).status_code

    try:
        assert get(key) == 200
        with httpx.Client(timeout=10) as client:  # twice the cache's size in made-up keys
            for _ in range(40):
                bearer = {"Authorization": f"Bearer {generate_key()}"}
                assert client.get(url + "/x", headers=bearer).status_code == 401
        relay.cut()
        monotonic.advance(60)
        assert get(key) == 200
    finally:
        server.stop()
        store.close()
        admin.close()
        upstream.stop()
