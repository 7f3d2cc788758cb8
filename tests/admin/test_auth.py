"""The failure throttle and the idempotency cache, with injected clocks."""

from __future__ import annotations

from keyswap.admin.auth import FailureThrottle
from keyswap.admin.idempotency import IdempotencyCache
from tests.support.gateway_state import Clock


def test_the_throttle_counts_failures_per_address_in_windows() -> None:
    clock = Clock(1000.0)
    throttle = FailureThrottle(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("a") is None
        throttle.failed("a")
    assert throttle.retry_after("a") == 60
    assert throttle.retry_after("b") is None  # another address is not affected
    clock.advance(59.5)
    assert throttle.retry_after("a") == 1
    clock.advance(0.5)
    assert throttle.retry_after("a") is None
    throttle.failed("a")
    assert throttle.retry_after("a") is None  # a new window


def test_the_throttle_tracks_a_bounded_number_of_addresses() -> None:
    throttle = FailureThrottle(limit=1, window=60, max_addresses=2, clock=Clock())
    for address in ("a", "b", "c"):
        throttle.failed(address)
    assert throttle.retry_after("a") is None  # dropped, oldest first
    assert throttle.retry_after("b") is not None
    assert throttle.retry_after("c") is not None


def test_idempotency_entries_expire_and_are_bounded() -> None:
    clock = Clock(0.0)
    cache = IdempotencyCache(ttl=10, max_entries=2, clock=clock)
    first = cache.slot(("t", "POST", "/x", "k"), "f")
    assert cache.slot(("t", "POST", "/x", "k"), "f") is first
    clock.advance(11)
    assert cache.slot(("t", "POST", "/x", "k"), "f") is not first
    one = cache.slot(("t", "POST", "/x", "1"), "f")
    cache.slot(("t", "POST", "/x", "2"), "f")
    cache.slot(("t", "POST", "/x", "3"), "f")
    assert cache.slot(("t", "POST", "/x", "1"), "f") is not one
