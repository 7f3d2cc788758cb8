from __future__ import annotations

import math

import pytest

from keyswap.verifier.tokencache import CHECK_LENGTH, CachedToken, TokenCache, token_key

TOKEN = (
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi13aXRoLWVub3VnaC1ieXRlcw"
)


def entry(kid: str = "k1", issuer: str = "iss", nbf: float = 0, exp: float = 100) -> CachedToken:
    return CachedToken({"sub": "a"}, nbf, exp, issuer, kid)


class Colliding(str):
    """A string whose hash() is fixed: stands in for a hash collision (failure injection)."""

    __slots__ = ()

    def __hash__(self) -> int:
        return 42


def test_key_is_the_strings_hash_and_never_the_token() -> None:
    assert token_key(TOKEN) == hash(TOKEN)
    cache = TokenCache()
    cache.put(TOKEN, entry())
    stored = list(cache._entries.items())
    assert [type(k) for k, _ in stored] == [int]
    assert stored[0][1].check == TOKEN[-CHECK_LENGTH:]
    assert TOKEN not in repr(stored)
    assert TOKEN.rpartition(".")[2] not in repr(stored)  # not even the whole signature


def test_a_colliding_string_with_another_tail_misses_and_keeps_the_entry() -> None:
    cache = TokenCache()
    first = Colliding("a.b." + "x" * 40)
    other = Colliding("c.d." + "y" * 40)
    assert hash(first) == hash(other)
    cache.put(first, entry())
    assert cache.get(other, 1) is None
    cache.discard(other)  # a collision does not drop someone else's entry either
    assert cache.get(first, 1) is not None


def test_put_fills_in_the_check_when_the_entry_lacks_it() -> None:
    cache = TokenCache()
    cache.put(TOKEN, entry())  # entry() has check=""
    found = cache.get(TOKEN, 1)
    assert found is not None
    assert found.check == TOKEN[-CHECK_LENGTH:]


def test_an_equal_string_built_anew_hits() -> None:
    cache = TokenCache()
    cache.put(TOKEN, entry())
    assert cache.get("".join(list(TOKEN)), 1) is not None


def test_entry_is_returned_inside_its_window() -> None:
    cache = TokenCache()
    cache.put("d.d.d", entry(nbf=10, exp=20))
    assert cache.get("d.d.d", 10) is not None
    assert cache.get("d.d.d", 19.999) is not None


@pytest.mark.parametrize("now", [20, 25, 9.999])
def test_entry_outside_its_window_misses_and_is_dropped(now: float) -> None:
    cache = TokenCache()
    cache.put("d.d.d", entry(nbf=10, exp=20))
    assert cache.get("d.d.d", now) is None
    assert len(cache) == 0


def test_entry_without_nbf_has_an_open_start() -> None:
    cache = TokenCache()
    cache.put("d.d.d", entry(nbf=-math.inf, exp=20))
    assert cache.get("d.d.d", -1e12) is not None


def test_least_recently_used_entry_is_evicted_first() -> None:
    cache = TokenCache(max_size=2)
    cache.put("a.a.a", entry())
    cache.put("b.b.b", entry())
    assert cache.get("a.a.a", 1) is not None  # a is now the most recent
    cache.put("c.c.c", entry())
    assert len(cache) == 2
    assert cache.get("b.b.b", 1) is None
    assert cache.get("a.a.a", 1) is not None
    assert cache.get("c.c.c", 1) is not None


def test_size_stays_bounded_under_many_inserts() -> None:
    cache = TokenCache(max_size=100)
    for i in range(1000):
        cache.put(f"t.t.{i}", entry())
    assert len(cache) == 100


def test_size_zero_disables_caching() -> None:
    cache = TokenCache(max_size=0)
    cache.put("a.a.a", entry())
    assert cache.get("a.a.a", 1) is None


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenCache(max_size=-1)


def test_purge_drops_only_entries_of_that_issuer_and_kid() -> None:
    cache = TokenCache()
    cache.put("1.1.1", entry(kid="old", issuer="A"))
    cache.put("2.2.2", entry(kid="old", issuer="A"))
    cache.put("3.3.3", entry(kid="new", issuer="A"))
    cache.put("4.4.4", entry(kid="old", issuer="B"))
    assert cache.purge("A", {"old"}) == 2
    assert cache.get("1.1.1", 1) is None
    assert cache.get("2.2.2", 1) is None
    assert cache.get("3.3.3", 1) is not None
    assert cache.get("4.4.4", 1) is not None


def test_purge_with_no_kids_is_a_no_op() -> None:
    cache = TokenCache()
    cache.put("1.1.1", entry())
    assert cache.purge("iss", set()) == 0
    assert len(cache) == 1


def test_discard_and_clear() -> None:
    cache = TokenCache()
    cache.put("1.1.1", entry())
    cache.put("2.2.2", entry())
    cache.discard("1.1.1")
    cache.discard("missing")
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0
