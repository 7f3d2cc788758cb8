from __future__ import annotations

import hashlib
import math

import pytest

from keyswap.verifier.tokencache import CachedToken, TokenCache, token_digest


def entry(kid: str = "k1", issuer: str = "iss", nbf: float = 0, exp: float = 100) -> CachedToken:
    return CachedToken({"sub": "a"}, nbf, exp, issuer, kid)


def test_digest_is_sha256_of_the_token_and_never_the_token() -> None:
    assert token_digest("a.b.c") == hashlib.sha256(b"a.b.c").digest()
    assert b"a.b.c" not in token_digest("a.b.c")


def test_entry_is_returned_inside_its_window() -> None:
    cache = TokenCache()
    cache.put(b"d", entry(nbf=10, exp=20))
    assert cache.get(b"d", 10) is not None
    assert cache.get(b"d", 19.999) is not None


@pytest.mark.parametrize("now", [20, 25, 9.999])
def test_entry_outside_its_window_misses_and_is_dropped(now: float) -> None:
    cache = TokenCache()
    cache.put(b"d", entry(nbf=10, exp=20))
    assert cache.get(b"d", now) is None
    assert len(cache) == 0


def test_entry_without_nbf_has_an_open_start() -> None:
    cache = TokenCache()
    cache.put(b"d", entry(nbf=-math.inf, exp=20))
    assert cache.get(b"d", -1e12) is not None


def test_least_recently_used_entry_is_evicted_first() -> None:
    cache = TokenCache(max_size=2)
    cache.put(b"a", entry())
    cache.put(b"b", entry())
    assert cache.get(b"a", 1) is not None  # a is now the most recent
    cache.put(b"c", entry())
    assert len(cache) == 2
    assert cache.get(b"b", 1) is None
    assert cache.get(b"a", 1) is not None
    assert cache.get(b"c", 1) is not None


def test_size_stays_bounded_under_many_inserts() -> None:
    cache = TokenCache(max_size=100)
    for i in range(1000):
        cache.put(i.to_bytes(4, "big"), entry())
    assert len(cache) == 100


def test_size_zero_disables_caching() -> None:
    cache = TokenCache(max_size=0)
    cache.put(b"a", entry())
    assert cache.get(b"a", 1) is None


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenCache(max_size=-1)


def test_purge_drops_only_entries_of_that_issuer_and_kid() -> None:
    cache = TokenCache()
    cache.put(b"1", entry(kid="old", issuer="A"))
    cache.put(b"2", entry(kid="old", issuer="A"))
    cache.put(b"3", entry(kid="new", issuer="A"))
    cache.put(b"4", entry(kid="old", issuer="B"))
    assert cache.purge("A", {"old"}) == 2
    assert cache.get(b"1", 1) is None
    assert cache.get(b"2", 1) is None
    assert cache.get(b"3", 1) is not None
    assert cache.get(b"4", 1) is not None


def test_purge_with_no_kids_is_a_no_op() -> None:
    cache = TokenCache()
    cache.put(b"1", entry())
    assert cache.purge("iss", set()) == 0
    assert len(cache) == 1


def test_discard_and_clear() -> None:
    cache = TokenCache()
    cache.put(b"1", entry())
    cache.put(b"2", entry())
    cache.discard(b"1")
    cache.discard(b"missing")
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0
