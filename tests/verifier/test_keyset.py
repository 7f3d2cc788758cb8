"""KeySet cache policy, against a real JWKS server on 127.0.0.1 and a fake clock.

Each rule of the KeySet docstring has tests named after it. Time-based policy (TTL, staleness,
cooldown) is driven by advancing a fake clock; only backoff retries use real (short) waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keyswap.errors import ConfigError, JWKSFetchError, KeysUnavailable, UnknownKey
from keyswap.verifier.fetch import FetchResult, JWKSFetcher
from keyswap.verifier.keyset import KeySet, KeySetStatus
from keyswap.verifier.metrics import Metrics
from tests.support.forking import answer_from_forked_child
from tests.support.jwks_server import JWKSServer
from tests.support.keys import ec_key, ed_key, jwks, rsa_key

K1 = rsa_key("k1")
K2 = ec_key("k2")
K3 = ed_key("k3")
LOGGER = "keyswap.verifier.keyset"


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeKeySet = Callable[..., KeySet]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def make_keyset(
    jwks_server: JWKSServer, clock: FakeClock, metrics: Metrics
) -> Iterator[MakeKeySet]:
    """Build KeySets on the test server with test-friendly defaults; close them and check for leaks."""
    made: list[KeySet] = []
    fetchers: list[JWKSFetcher] = []

    def make(*, timeout: float = 2.0, max_bytes: int = 1 << 20, **kw: Any) -> KeySet:
        fetcher = JWKSFetcher(timeout=timeout, max_bytes=max_bytes)
        fetchers.append(fetcher)
        kw.setdefault("clock", clock)
        kw.setdefault("metrics", metrics)
        kw.setdefault("retry_min", 0.01)
        kw.setdefault("retry_max", 0.05)
        ks = KeySet(jwks_server.url, fetcher=fetcher, **kw)
        made.append(ks)
        return ks

    yield make
    jwks_server.release_hangs()
    for ks in made:
        ks.close()
    for f in fetchers:
        f.close()
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("keyswap-jwks")]
    assert leaked == []


def warm(server: JWKSServer, ks: KeySet, *keys: Any, **behaviour: Any) -> None:
    """Serve `keys` and load them into `ks` (one fetch)."""
    server.serve(jwks(*keys), **behaviour)
    ks.refresh_sync()


def wait_idle(ks: KeySet, timeout: float = 5.0) -> None:
    """Wait (real time, bounded) until the key set has no fetch in flight."""
    deadline = time.monotonic() + timeout
    while ks.status().fetching:
        assert time.monotonic() < deadline, "fetch did not finish"
        time.sleep(0.005)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("url", ["file:///etc/jwks.json", "ftp://idp.test/jwks", "jwks.json"])
def test_a_non_http_url_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ConfigError):
        KeySet(url)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_ttl": 0.5},
        {"cooldown": 0.5},
        {"cooldown": float("nan")},
        {"min_ttl": 0},
        {"min_ttl": 10, "max_ttl": 5},
        {"max_stale": -1},
        {"retry_min": 0},
        {"retry_min": 5, "retry_max": 1},
        {"cold_retry_max": 0},
        {"wait_timeout": 0},
        {"negative_cache_size": -1},
    ],
)
def test_out_of_range_durations_are_refused_at_construction(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        KeySet("https://idp.test/jwks", **kwargs)  # type: ignore[arg-type]


def test_ttl_and_cooldown_are_honoured_down_to_one_second(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(default_ttl=1, cooldown=1)
    warm(jwks_server, ks, K1)
    assert ks.status().expires_in == 1
    clock.advance(1)
    jwks_server.serve(jwks(K1, K2))
    assert ks.get_key_sync("k2").kid == "k2"


# ------------------------------------------------------------------ rule 1: hot path


def test_a_fresh_known_kid_is_answered_without_io(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    for _ in range(100):
        assert ks.get_key_sync("k1").kid == "k1"
    assert not ks.status().fetching
    assert jwks_server.count() == 1


def test_a_fresh_lookup_takes_no_lock(jwks_server: JWKSServer, make_keyset: MakeKeySet) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    result: list[str] = []
    with ks._cond:  # hold the key set's lock: a lookup that needed it would block
        t = threading.Thread(target=lambda: result.append(ks.get_key_sync("k1").kid))
        t.start()
        t.join(2.0)
        assert result == ["k1"]


async def test_a_fresh_async_lookup_does_not_await_anything(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    coro = ks.get_key("k1")
    with pytest.raises(StopIteration) as done:
        coro.send(None)  # runs to completion without suspending once
    assert done.value.value.kid == "k1"


def test_fresh_key_answers_only_from_a_fresh_set_without_io(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(default_ttl=60)
    assert ks.fresh_key("k1") is None  # nothing fetched yet, and nothing fetched by asking
    assert jwks_server.count() == 0
    warm(jwks_server, ks, K1)
    key = ks.fresh_key("k1")
    assert key is not None
    assert key.kid == "k1"
    assert ks.fresh_key("nope") is None
    clock.advance(61)
    assert ks.fresh_key("k1") is None  # stale: get_key decides (and may refresh)
    assert not ks.status().fetching
    assert jwks_server.count() == 1


def test_has_kid_reports_the_cached_set_without_io(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset()
    assert not ks.has_kid("k1")
    warm(jwks_server, ks, K1, K2)
    assert ks.has_kid("k1")
    assert not ks.has_kid("nope")
    assert ks.kids == {"k1", "k2"}
    assert jwks_server.count() == 1


# ------------------------------------------------------------------ rule 2: TTL


@pytest.mark.parametrize(
    ("cache_control", "kwargs", "ttl"),
    [
        ("public, max-age=60", {}, 60),
        ("max-age=100000", {"max_ttl": 100}, 100),
        ("max-age=0", {"min_ttl": 5}, 5),
        ("no-store", {"min_ttl": 5}, 5),
        ("no-cache", {"min_ttl": 5}, 5),
        (None, {"default_ttl": 42}, 42),
        (None, {}, 300),
    ],
)
def test_max_age_sets_the_ttl_clamped_to_min_and_max(
    jwks_server: JWKSServer,
    make_keyset: MakeKeySet,
    cache_control: str | None,
    kwargs: dict[str, float],
    ttl: float,
) -> None:
    ks = make_keyset(**kwargs)
    warm(jwks_server, ks, K1, cache_control=cache_control)
    assert ks.status().expires_in == ttl


def test_a_lookup_within_the_ttl_does_not_refresh_and_one_after_it_does(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1, cache_control="max-age=60")
    clock.advance(59.9)
    ks.get_key_sync("k1")
    assert not ks.status().fetching
    clock.advance(0.2)
    ks.get_key_sync("k1")
    assert ks.status().fetching
    assert jwks_server.wait_for_hits(2)


# ------------------------------------------------------------------ rule 3: stale-while-revalidate


async def test_a_stale_known_kid_is_answered_at_once_while_the_refresh_hangs(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(timeout=3.0)
    warm(jwks_server, ks, K1)
    jwks_server.behaviour.delay = 3.0
    clock.advance(301)
    started = time.monotonic()
    assert (await ks.get_key("k1")).kid == "k1"
    assert ks.get_key_sync("k1").kid == "k1"
    assert time.monotonic() - started < 0.5  # well under the 3 s hang
    assert jwks_server.wait_for_hits(2)
    assert ks.status().fetching  # the refresh is stuck...
    for _ in range(20):  # ...and known kids still answer at once, with no extra fetch
        assert (await ks.get_key("k1")).kid == "k1"
    assert time.monotonic() - started < 1.0
    assert jwks_server.count() == 2


def test_a_successful_background_refresh_renews_the_ttl(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1, cache_control="max-age=60")
    clock.advance(61)
    ks.get_key_sync("k1")
    wait_idle(ks)
    assert ks.status().expires_in == pytest.approx(60)
    assert jwks_server.count() == 2


# ------------------------------------------------------------------ rules 4-6: outages


def _fail(server: JWKSServer, how: str) -> None:
    b = server.behaviour
    if how == "5xx":
        b.status = 503
    elif how == "html":
        b.body, b.content_type = b"<html>maintenance</html>", "text/html"
    elif how == "garbage":
        b.body = b"\x00\x01garbage"
    elif how == "empty-object":
        b.document = {}
    elif how == "keys-not-a-list":
        b.document = {"keys": "x"}
    elif how == "no-usable-keys":
        b.document = {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}
    elif how == "too-big":
        b.body = b'{"keys": []' + b" " * 5000 + b"}"
    elif how == "timeout":
        b.delay = 5.0
    else:  # pragma: no cover
        raise AssertionError(how)


OUTAGES = [
    "5xx",
    "html",
    "garbage",
    "empty-object",
    "keys-not-a-list",
    "no-usable-keys",
    "too-big",
    "timeout",
]


@pytest.mark.parametrize("how", OUTAGES)
async def test_the_last_good_set_is_kept_when_a_refresh_fails(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock, metrics: Metrics, how: str
) -> None:
    ks = make_keyset(timeout=0.6, max_bytes=4000)
    warm(jwks_server, ks, K1)
    _fail(jwks_server, how)
    clock.advance(301)
    with pytest.raises(JWKSFetchError):
        ks.refresh_sync()
    started = time.monotonic()
    assert (await ks.get_key("k1")).kid == "k1"
    assert ks.get_key_sync("k1").kid == "k1"
    assert time.monotonic() - started < 0.3  # not delayed by a hanging retry
    assert metrics.get("jwks_fetch_failures") >= 1
    clock.advance(3600 - 2)  # just inside max_stale past expiry
    assert ks.get_key_sync("k1").kid == "k1"


@pytest.mark.parametrize("how", ["5xx", "timeout"])
async def test_past_max_stale_lookups_raise_keys_unavailable_never_unknown_key(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock, how: str
) -> None:
    ks = make_keyset(timeout=0.3, max_stale=600)
    warm(jwks_server, ks, K1)
    _fail(jwks_server, how)
    clock.advance(300 + 600)
    for kid in ("k1", "never-seen"):
        with pytest.raises(KeysUnavailable) as info:
            await ks.get_key(kid)
        assert info.value.retry_after >= 1
        with pytest.raises(KeysUnavailable):
            ks.get_key_sync(kid)
    assert not ks.status().usable


def test_failed_fetches_retry_in_the_background_with_backoff(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock, metrics: Metrics
) -> None:
    ks = make_keyset(retry_min=0.01, retry_max=0.04)
    warm(jwks_server, ks, K1)
    jwks_server.behaviour.status = 500
    clock.advance(301)
    ks.get_key_sync("k1")  # stale: starts the refresh, which fails and retries by itself
    assert jwks_server.wait_for_hits(6)
    status = ks.status()
    assert status.failures >= 3
    assert status.next_retry_in is None or status.next_retry_in <= 0.04
    jwks_server.serve(jwks(K1, K2))
    wait_until(lambda: ks.has_kid("k2"))
    assert ks.status().failures == 0
    assert metrics.get("jwks_fetch_failures", reason="status") >= 3


def test_lookups_add_no_fetches_while_a_retry_is_pending(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(retry_min=30, retry_max=60)
    warm(jwks_server, ks, K1)
    jwks_server.behaviour.status = 500
    clock.advance(301)
    with pytest.raises(JWKSFetchError):
        ks.refresh_sync()
    for _ in range(50):
        ks.get_key_sync("k1")
    clock.advance(60)  # past the cooldown too: the unknown kid may refetch once...
    with pytest.raises(UnknownKey):
        ks.get_key_sync("new-kid")
    assert jwks_server.count() == 3  # warm + failed refresh + one unknown-kid refetch


# ------------------------------------------------------------------ rule 7-8: unknown kids


def test_a_new_kid_is_accepted_on_first_sight(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock, metrics: Metrics
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    jwks_server.serve(jwks(K1, K2))
    clock.advance(10)
    assert ks.get_key_sync("k2").kid == "k2"
    assert jwks_server.count() == 2
    assert metrics.get("kid_misses") == 1


def test_an_unknown_kid_within_the_cooldown_is_refused_at_once_without_io(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    jwks_server.serve(jwks(K1, K2))
    clock.advance(9.9)
    with pytest.raises(UnknownKey):
        ks.get_key_sync("k2")
    assert not ks.status().fetching
    assert jwks_server.count() == 1
    clock.advance(0.1)
    assert ks.get_key_sync("k2").kid == "k2"
    assert jwks_server.count() == 2


def test_a_random_kid_flood_within_the_cooldown_causes_no_fetch(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    clock.advance(1)
    started = time.monotonic()
    for _ in range(1000):
        with pytest.raises(UnknownKey):
            ks.get_key_sync(uuid.uuid4().hex)
    assert time.monotonic() - started < 2.0
    assert jwks_server.count() == 1


async def test_a_random_kid_flood_after_the_cooldown_causes_exactly_one_fetch(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    jwks_server.behaviour.delay = 0.1
    clock.advance(10)
    results = await asyncio.gather(
        *(ks.get_key(uuid.uuid4().hex) for _ in range(200)), return_exceptions=True
    )
    assert all(isinstance(r, UnknownKey) for r in results)
    assert jwks_server.count() == 2


def test_a_kid_confirmed_missing_is_refused_after_the_cooldown_without_io(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    clock.advance(10)
    with pytest.raises(UnknownKey):
        ks.get_key_sync("bad")  # one refetch confirms it is missing
    assert jwks_server.count() == 2
    clock.advance(60)
    with pytest.raises(UnknownKey):
        ks.get_key_sync("bad")  # negative cache: no refetch
    assert jwks_server.count() == 2
    with pytest.raises(UnknownKey):
        ks.get_key_sync("other")  # a kid not checked yet may refetch once
    assert jwks_server.count() == 3


async def test_the_negative_cache_is_bounded(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(negative_cache_size=5)
    warm(jwks_server, ks, K1)
    jwks_server.behaviour.delay = 0.1
    clock.advance(10)
    results = await asyncio.gather(
        *(ks.get_key(f"bad-{i}") for i in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, UnknownKey) for r in results)
    assert ks.status().negative_cache == 5
    assert jwks_server.count() == 2


def test_a_zero_size_negative_cache_remembers_nothing(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(negative_cache_size=0)
    warm(jwks_server, ks, K1, K2)
    jwks_server.serve(jwks(K1))
    ks.refresh_sync()  # removes k2
    clock.advance(10)
    with pytest.raises(UnknownKey):
        ks.get_key_sync("k2")
    assert ks.status().negative_cache == 0
    assert jwks_server.count() == 3  # without the cache, the removed kid may refetch once


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_an_unknown_kid_lookup_waits_for_its_refetch_at_most_the_wait_bound(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock, mode: str
) -> None:
    ks = make_keyset(timeout=3.0, wait_timeout=0.2)
    warm(jwks_server, ks, K1)
    jwks_server.serve(jwks(K1, K2), delay=3.0)
    clock.advance(10)
    started = time.monotonic()
    lookup = ks.get_key("k2") if mode == "async" else asyncio.to_thread(ks.get_key_sync, "k2")
    with pytest.raises(UnknownKey):
        await lookup
    assert 0.15 < time.monotonic() - started < 1.0
    assert ks.status().negative_cache == 0  # not confirmed missing: the fetch did not finish


# ------------------------------------------------------------------ rule 9: single flight


async def test_fifty_concurrent_async_lookups_of_a_new_kid_cause_exactly_one_fetch(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    jwks_server.serve(jwks(K1, K2), delay=0.1)
    clock.advance(10)
    keys = await asyncio.gather(*(ks.get_key("k2") for _ in range(50)))
    assert {k.kid for k in keys} == {"k2"}
    assert jwks_server.count() == 2


def test_thirty_two_threads_on_a_cold_start_cause_exactly_one_fetch(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset()
    jwks_server.serve(jwks(K1), delay=0.1)
    barrier = threading.Barrier(32)
    results: list[str] = []
    lock = threading.Lock()

    def lookup() -> None:
        barrier.wait()
        kid = ks.get_key_sync("k1").kid
        with lock:
            results.append(kid)

    threads = [threading.Thread(target=lookup) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == ["k1"] * 32
    assert jwks_server.count() == 1


async def test_async_tasks_and_threads_share_one_fetch(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset()
    jwks_server.serve(jwks(K1), delay=0.2)
    ks.start()
    from_threads: list[str] = []
    threads = [
        threading.Thread(target=lambda: from_threads.append(ks.get_key_sync("k1").kid))
        for _ in range(12)
    ]
    for t in threads:
        t.start()
    keys = await asyncio.gather(*(ks.get_key("k1") for _ in range(20)))
    for t in threads:
        t.join(5)
    assert [k.kid for k in keys] == ["k1"] * 20
    assert from_threads == ["k1"] * 12
    assert jwks_server.count() == 1


async def test_the_event_loop_keeps_running_while_a_lookup_waits_for_a_fetch(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset()
    jwks_server.serve(jwks(K1), delay=0.3)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not ks.has_kid("k1"):
            ticks += 1
            await asyncio.sleep(0.01)

    key, _ = await asyncio.gather(ks.get_key("k1"), ticker())
    assert key.kid == "k1"
    assert ticks >= 10


# ------------------------------------------------------------------ rule 10: rotation


def test_a_removed_kid_is_refused_after_one_refresh_and_reported(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    removed: list[set[str]] = []
    ks = make_keyset(on_keys_removed=removed.append)
    warm(jwks_server, ks, K1, K2)
    jwks_server.serve(jwks(K2, K3))
    clock.advance(301)
    assert ks.get_key_sync("k1").kid == "k1"  # stale answer; starts the refresh
    wait_idle(ks)
    assert removed == [{"k1"}]
    with pytest.raises(UnknownKey):
        ks.get_key_sync("k1")
    clock.advance(60)  # even past the cooldown a removed kid costs no refetch
    with pytest.raises(UnknownKey):
        ks.get_key_sync("k1")
    assert jwks_server.count() == 2
    assert ks.get_key_sync("k3").kid == "k3"


def test_a_failing_on_keys_removed_callback_does_not_break_the_key_set(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(kids: set[str]) -> None:
        raise RuntimeError("boom")

    ks = make_keyset(on_keys_removed=explode)
    warm(jwks_server, ks, K1, K2)
    with caplog.at_level(logging.ERROR, LOGGER):
        warm(jwks_server, ks, K2)
    assert "on_keys_removed" in caplog.text
    assert ks.kids == {"k2"}
    warm(jwks_server, ks, K2, K3)
    assert ks.has_kid("k3")


# ------------------------------------------------------------------ rule 11: skipped keys


def test_unusable_keys_are_skipped_and_logged_once(
    jwks_server: JWKSServer,
    make_keyset: MakeKeySet,
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ks = make_keyset()
    doc = jwks(K1)
    doc["keys"] += [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        K2.public_jwk(use="enc"),
        {"kty": "AKP", "kid": "ml-dsa", "alg": "ML-DSA-44", "pub": "AAAA"},
    ]
    with caplog.at_level(logging.INFO, LOGGER):
        for _ in range(3):
            jwks_server.serve(doc)
            ks.refresh_sync()
    skipped = [r.getMessage() for r in caplog.records if "key skipped" in r.getMessage()]
    assert len(skipped) == 3
    assert any("'hmac'" in m and "oct" in m for m in skipped)
    assert metrics.get("jwks_keys_skipped") == 3
    assert ks.kids == {"k1"}


def test_a_kid_present_twice_matches_nothing(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset()
    doc = jwks(K1, K2)
    doc["keys"].append(K3.public_jwk(kid="k2"))
    warm(jwks_server, ks, K1)
    jwks_server.serve(doc)
    ks.refresh_sync()
    clock.advance(10)
    with pytest.raises(UnknownKey):
        ks.get_key_sync("k2")
    assert ks.get_key_sync("k1").kid == "k1"


# ------------------------------------------------------------------ rule 12: cold start


def test_start_returns_at_once_even_if_the_jwks_hangs(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset(timeout=3.0)
    jwks_server.serve(jwks(K1), delay=3.0)
    started = time.monotonic()
    ks.start()
    ks.start()  # idempotent
    assert time.monotonic() - started < 0.1
    assert jwks_server.wait_for_hits(1)
    assert jwks_server.count() == 1


def test_a_lookup_during_the_first_fetch_waits_for_it(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset()
    jwks_server.serve(jwks(K1), delay=0.2)
    ks.start()
    assert ks.get_key_sync("k1").kid == "k1"
    assert jwks_server.count() == 1


async def test_a_never_started_key_set_starts_on_the_first_lookup(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset()
    jwks_server.serve(jwks(K1))
    assert (await ks.get_key("k1")).kid == "k1"
    with pytest.raises(UnknownKey):
        await ks.get_key("other")  # within the cooldown of that first fetch
    assert jwks_server.count() == 1


async def test_a_cold_start_with_the_jwks_down_answers_keys_unavailable_then_recovers_by_itself(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, metrics: Metrics
) -> None:
    ks = make_keyset()
    jwks_server.serve(jwks(K1), status=503)
    ks.start()
    with pytest.raises(KeysUnavailable):
        await ks.get_key("k1")  # waits for the first attempt, which fails
    started = time.monotonic()
    for _ in range(20):  # after a failed attempt: at once, while retries continue
        with pytest.raises(KeysUnavailable) as info:
            ks.get_key_sync("k1")
        assert info.value.retry_after >= 1
    assert time.monotonic() - started < 0.2
    jwks_server.serve(jwks(K1))
    wait_until(lambda: ks.has_kid("k1"))
    assert (await ks.get_key("k1")).kid == "k1"
    assert jwks_server.count() >= 2
    assert metrics.get("jwks_fetches") == 1


def test_a_cold_start_lookup_waits_at_most_the_fetch_timeout(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset(timeout=0.3)
    jwks_server.serve(jwks(K1), delay=5.0)
    started = time.monotonic()
    with pytest.raises(KeysUnavailable):
        ks.get_key_sync("k1")
    assert 0.2 < time.monotonic() - started < 1.0
    assert jwks_server.wait_for_hits(2)  # a background retry is now hanging too...
    started = time.monotonic()
    with pytest.raises(KeysUnavailable):
        ks.get_key_sync("k1")  # ...but after a failed attempt nobody waits for it
    assert time.monotonic() - started < 0.25


def _fail_until(ks: KeySet, failures: int) -> KeySetStatus:
    """Wait (real time, bounded) for ``ks`` to fail ``failures`` times; its status between fetches."""
    deadline = time.monotonic() + 5.0
    while True:
        status = ks.status()
        if status.failures >= failures and not status.fetching:
            return status
        assert time.monotonic() < deadline, "not enough failures"
        time.sleep(0.005)


def test_a_set_that_never_had_keys_retries_at_most_cold_retry_max_apart(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset(retry_min=0.01, retry_max=60, cold_retry_max=0.05)
    jwks_server.serve(jwks(K1), status=503)
    ks.start()
    next_retry = _fail_until(ks, 8).next_retry_in  # without the cap: 0.64-1.28 s after the 8th
    assert next_retry is not None
    assert next_retry <= 0.05
    jwks_server.serve(jwks(K1))
    wait_until(lambda: ks.has_kid("k1"), timeout=1.0)


def test_once_a_set_has_had_keys_the_full_backoff_applies_again(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(retry_min=0.01, retry_max=60, cold_retry_max=0.05)
    warm(jwks_server, ks, K1)
    jwks_server.behaviour.status = 503
    clock.advance(301)
    ks.get_key_sync("k1")  # stale: starts the refresh, which fails and retries by itself
    next_retry = _fail_until(ks, 6).next_retry_in  # the 6th wait is 0.16-0.32 s: past the cold cap
    assert next_retry is not None
    assert next_retry > 0.05


async def test_after_a_long_outage_since_start_the_next_request_fetches_and_gets_the_key(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(retry_min=30, retry_max=60, cold_retry_max=30)  # no retry within the test
    jwks_server.serve(jwks(K1), status=503)
    ks.start()
    with pytest.raises(KeysUnavailable):
        await ks.get_key("k1")  # waits for the first attempt, which fails
    for _ in range(20):  # within the cooldown of that attempt: at once, no fetch
        with pytest.raises(KeysUnavailable):
            ks.get_key_sync("k1")
    assert jwks_server.count() == 1
    clock.advance(3600)  # the gateway stays down for an hour, then comes up
    jwks_server.serve(jwks(K1))
    assert (await ks.get_key("k1")).kid == "k1"  # this request fetches and waits for it
    assert ks.get_key_sync("k1").kid == "k1"
    assert jwks_server.count() == 2
    assert ks.status().failures == 0


async def test_after_a_long_outage_since_start_concurrent_requests_share_one_fetch(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(retry_min=30, retry_max=60, cold_retry_max=30)
    jwks_server.serve(jwks(K1), status=503)
    with pytest.raises(KeysUnavailable):
        ks.get_key_sync("k1")
    clock.advance(3600)
    jwks_server.serve(jwks(K1), delay=0.2)
    found: list[str] = []

    def in_thread() -> None:
        found.append(ks.get_key_sync("k1").kid)

    threads = [threading.Thread(target=in_thread) for _ in range(8)]
    tasks = [asyncio.create_task(ks.get_key("k1")) for _ in range(20)]
    await asyncio.sleep(0)
    for t in threads:
        t.start()
    keys = await asyncio.gather(*tasks)
    for t in threads:
        t.join(5)
    assert [k.kid for k in keys] == ["k1"] * 20
    assert found == ["k1"] * 8
    assert jwks_server.count() == 2


def test_a_request_started_retry_on_a_hanging_jwks_holds_requests_at_most_a_second(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(timeout=3.0, retry_min=30, retry_max=60, cold_retry_max=30)
    jwks_server.serve(jwks(K1), status=503)
    with pytest.raises(KeysUnavailable):
        ks.get_key_sync("k1")
    clock.advance(3600)
    jwks_server.serve(jwks(K1), delay=5.0)
    started = time.monotonic()
    with pytest.raises(KeysUnavailable) as info:
        ks.get_key_sync("k1")
    assert 0.8 < time.monotonic() - started < 1.6
    assert info.value.retry_after == 1
    started = time.monotonic()
    with pytest.raises(KeysUnavailable):
        ks.get_key_sync("k1")  # joins the same hanging fetch, with the same bound
    assert time.monotonic() - started < 1.6
    assert jwks_server.count() == 2


def test_past_max_stale_after_having_keys_requests_add_no_fetches_while_a_retry_is_pending(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset(retry_min=30, retry_max=60, cold_retry_max=0.05, max_stale=600)
    warm(jwks_server, ks, K1)
    jwks_server.behaviour.status = 503
    clock.advance(301)
    with pytest.raises(JWKSFetchError):
        ks.refresh_sync()
    clock.advance(3600)  # past max_stale, and far past the cooldown
    for _ in range(20):
        with pytest.raises(KeysUnavailable):
            ks.get_key_sync("k1")
    assert jwks_server.count() == 2  # warm + the failed refresh: the long backoff is kept


def test_failures_before_the_first_keys_are_warned_about_once_a_minute(
    jwks_server: JWKSServer,
    make_keyset: MakeKeySet,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ks = make_keyset(retry_min=0.01, retry_max=60, cold_retry_max=0.02)
    jwks_server.serve(jwks(K1), status=503)
    with caplog.at_level(logging.DEBUG, LOGGER):
        ks.start()
        _fail_until(ks, 5)
        jwks_server.serve(jwks(K1))
        wait_until(lambda: ks.has_kid("k1"))
        jwks_server.behaviour.status = 503
        clock.advance(301)
        for _ in range(2):
            with pytest.raises(JWKSFetchError):
                ks.refresh_sync()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    ok = next(i for i, (_, m) in enumerate(messages) if m.startswith("JWKS fetch ok"))
    cold = [(lvl, m) for lvl, m in messages[:ok] if m.startswith("JWKS fetch failed")]
    warm_ = [lvl for lvl, m in messages[ok:] if m.startswith("JWKS fetch failed")]
    assert cold[0][0] == logging.WARNING
    assert "(failure 1)" in cold[0][1]
    assert len(cold) >= 5
    assert {lvl for lvl, _ in cold[1:]} == {logging.DEBUG}
    assert len(warm_) >= 2
    assert set(warm_) == {logging.WARNING}  # once it has had keys, every failure warns


def test_an_idle_set_past_max_stale_fetches_again_before_answering(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    clock.advance(100_000)
    assert ks.get_key_sync("k1").kid == "k1"
    assert jwks_server.count() == 2
    assert ks.status().usable


# ------------------------------------------------------------------ logging, metrics, lifecycle


def test_fetches_are_logged_with_url_key_count_ttl_and_failure_reason(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, caplog: pytest.LogCaptureFixture
) -> None:
    ks = make_keyset()
    with caplog.at_level(logging.INFO, LOGGER):
        warm(jwks_server, ks, K1, K2, cache_control="max-age=120")
        jwks_server.behaviour.status = 502
        with pytest.raises(JWKSFetchError):
            ks.refresh_sync()
    ok, failed = caplog.records[0].getMessage(), caplog.records[1].getMessage()
    assert jwks_server.url in ok
    assert "keys=2" in ok
    assert "ttl=120s" in ok
    assert jwks_server.url in failed
    assert "reason=status" in failed
    assert caplog.records[1].levelno == logging.WARNING


async def test_async_refresh_fetches_now_and_reports_failures(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset()
    jwks_server.serve(jwks(K1))
    await ks.refresh()
    assert ks.kids == {"k1"}
    jwks_server.behaviour.status = 500
    with pytest.raises(JWKSFetchError, match="HTTP 500"):
        await ks.refresh()
    assert ks.kids == {"k1"}


async def test_refresh_gives_up_at_the_wait_bound(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset(timeout=3.0, wait_timeout=0.1)
    jwks_server.serve(jwks(K1), delay=3.0)
    with pytest.raises(JWKSFetchError, match="did not finish"):
        await ks.refresh()
    with pytest.raises(JWKSFetchError, match="did not finish"):
        ks.refresh_sync()


class ExplodingFetcher(JWKSFetcher):
    """Failure injection: a fetcher with a bug."""

    def fetch(self, url: str) -> FetchResult:
        raise RuntimeError("bug")


def test_the_worker_survives_a_fetcher_that_raises(
    jwks_server: JWKSServer, clock: FakeClock, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        ExplodingFetcher() as fetcher,
        KeySet(jwks_server.url, fetcher=fetcher, clock=clock, metrics=metrics) as ks,
    ):
        with caplog.at_level(logging.ERROR, LOGGER), pytest.raises(JWKSFetchError):
            ks.refresh_sync()
        assert "raised unexpectedly" in caplog.text
        assert metrics.get("jwks_fetch_failures", reason="internal") == 1
        with pytest.raises(KeysUnavailable):
            ks.get_key_sync("k1")


def test_a_key_set_closes_the_fetcher_it_made(jwks_server: JWKSServer, clock: FakeClock) -> None:
    ks = KeySet(jwks_server.url, clock=clock)
    jwks_server.serve(jwks(K1))
    ks.refresh_sync()
    ks.close()
    assert ks._fetcher._client.is_closed
    assert not any(t.name.startswith("keyswap-jwks") for t in threading.enumerate())


def test_close_stops_the_worker_thread(jwks_server: JWKSServer, make_keyset: MakeKeySet) -> None:
    ks = make_keyset()
    warm(jwks_server, ks, K1)
    assert any(t.name.startswith("keyswap-jwks") for t in threading.enumerate())
    ks.close()
    assert not any(t.name.startswith("keyswap-jwks") for t in threading.enumerate())
    with pytest.raises(JWKSFetchError):
        ks.refresh_sync()


def test_close_releases_a_lookup_waiting_for_an_unstarted_fetch(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset()
    ks.close()
    with pytest.raises(KeysUnavailable):
        ks.get_key_sync("k1")
    assert jwks_server.count() == 0


def _lookup_in_a_forked_child(ks: KeySet, kid: str) -> str:
    """Fork; the child looks `kid` up and reports the kid found or the exception's name."""
    return answer_from_forked_child(lambda: ks.get_key_sync(kid).kid)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_fetches_with_its_own_worker_thread(
    jwks_server: JWKSServer, make_keyset: MakeKeySet, clock: FakeClock
) -> None:
    # A pre-fork server (gunicorn --preload) may warm the key set in the parent: the child inherits
    # the set but not the worker thread, and must still be able to fetch (here: a rotated-in kid).
    ks = make_keyset(wait_timeout=1.0)
    warm(jwks_server, ks, K1)
    jwks_server.serve(jwks(K1, K2))
    clock.advance(60)  # past the cooldown
    assert _lookup_in_a_forked_child(ks, "k2") == "k2"
    assert jwks_server.count() == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_during_the_parents_first_fetch_fetches_for_itself(
    jwks_server: JWKSServer, make_keyset: MakeKeySet
) -> None:
    ks = make_keyset(wait_timeout=1.0)
    jwks_server.serve(jwks(K1), delay=30)  # the parent's fetch hangs until the test ends
    ks.start()
    assert jwks_server.wait_for_hits(1)
    jwks_server.serve(jwks(K1))
    assert _lookup_in_a_forked_child(ks, "k1") == "k1"
