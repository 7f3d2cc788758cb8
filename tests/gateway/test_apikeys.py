from __future__ import annotations

import hashlib
import hmac
import math
import re
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from keyswap.errors import ConfigError, InvalidApiKey, InvalidInput, NotFound
from keyswap.gateway.apikeys import (
    BASE62,
    KEY_REGEX,
    RANDOM_LENGTH,
    ApiKeys,
    PreparedMac,
    Principal,
    generate_key,
    generate_key_id,
    is_well_formed,
    key_regex,
    mac_digest,
)
from keyswap.gateway.secret import ServerSecret
from keyswap.store import ApiKeyRecord, Consumer, Store
from tests.support.gateway_state import Clock, QueryCounter, database_bytes, db_url, secret

HOUR = 3600.0


class CountingStore(Store):
    """A real store that counts key lookups and last-used writes."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.lookups = 0
        self.touches: list[dict[str, float]] = []
        self.fail_touch = False

    def find_api_key(self, digest: bytes) -> tuple[ApiKeyRecord, Consumer] | None:
        self.lookups += 1
        return super().find_api_key(digest)

    def touch_api_keys(self, last_used: Mapping[str, float]) -> None:
        if self.fail_touch:
            raise RuntimeError("database is locked")
        self.touches.append(dict(last_used))
        super().touch_api_keys(last_used)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    store = CountingStore(db_url(tmp_path))
    store.create_consumer("acme", {"tier": "gold"})
    yield store
    store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monotonic() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def api_keys(store: CountingStore, clock: Clock, monotonic: Clock) -> ApiKeys:
    return ApiKeys(store, secret(), clock=clock, monotonic=monotonic)


def _refusal(api_keys: ApiKeys, key: str) -> InvalidApiKey:
    with pytest.raises(InvalidApiKey) as caught:
        api_keys.authenticate(key)
    return caught.value


# -- format ---------------------------------------------------------------------------------------------


def test_generated_keys_have_prefix_random_part_and_checksum_and_match_the_published_regex() -> (
    None
):
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(KEY_REGEX, key)
        assert key.startswith("ks_")
        assert len(key) == 3 + 36
        body = key[3:]
        crc = zlib.crc32(body[:30].encode())
        checksum = 0
        for char in body[30:]:
            checksum = checksum * 62 + BASE62.index(char)
        assert checksum == crc
        assert is_well_formed(key)


def test_the_published_regex_finds_keys_in_text_for_secret_scanners() -> None:
    key = generate_key()
    text = f'config = {{"api_key": "{key}"}} and ks_tooShort and x{key}'
    assert re.findall(KEY_REGEX, text) == [key]


def test_keys_carry_at_least_128_bits_of_randomness() -> None:
    assert len(set(BASE62)) == 62
    assert RANDOM_LENGTH * math.log2(len(BASE62)) >= 128


def test_every_single_character_change_in_a_key_is_detected_as_malformed() -> None:
    key = generate_key()
    for position in range(3, len(key)):
        replacement = "a" if key[position] != "a" else "b"
        changed = key[:position] + replacement + key[position + 1 :]
        assert not is_well_formed(changed), position


@pytest.mark.parametrize(
    "key",
    [
        "",
        "ks_",
        "ks_short",
        "xx_" + "A" * 36,
        "KS_" + "A" * 36,
        "ks-" + "A" * 36,
        "ks_" + "A" * 35 + "!",
        "ks_" + "\u00e9" * 36,
        "ks_" + "A" * 100,
        "Bearer ks_" + "A" * 36,
    ],
)
def test_malformed_keys_are_recognised_without_io(key: str) -> None:
    assert not is_well_formed(key)


def test_a_checksum_that_is_valid_base62_but_not_the_crc32_is_malformed() -> None:
    random_part = generate_key()[3:33]
    crc = zlib.crc32(random_part.encode("ascii"))
    # "zzzzzz" is above any CRC32; "000000" is CRC32 0; the right value plus one, 62 and 62**5.
    for wrong in ("zzzzzz", "000000"):
        assert not is_well_formed(f"ks_{random_part}{wrong}")
    for delta in (1, 62, 62**5):
        value, digits = (crc + delta) % 62**6, []
        for _ in range(6):
            value, rest = divmod(value, 62)
            digits.append(BASE62[rest])
        assert not is_well_formed(f"ks_{random_part}{''.join(reversed(digits))}"), delta


def test_prefixes_are_matched_literally() -> None:
    key = generate_key("acme")
    assert is_well_formed(key.replace("acme_", "acm._"), "acm.")
    assert not is_well_formed(key.replace("acme_", "acmX_"), "acm.")
    assert not is_well_formed("x" + key, "acme")
    assert not is_well_formed(key + "\n", "acme")


@pytest.mark.parametrize("key_length", [0, 1, 32, 63, 64, 65, 200])
def test_the_prepared_mac_is_hmac_sha256(key_length: int) -> None:
    mac_key = bytes(range(256))[:key_length]
    prepared = PreparedMac(mac_key)
    for message in (b"", b"ks_" + b"A" * 36, bytes(range(256)) * 5):
        expected = hmac.new(mac_key, message, hashlib.sha256).digest()
        assert prepared(message) == expected
        assert prepared(message) == expected  # the prepared state is not consumed


def test_the_prepared_mac_gives_the_same_digests_from_several_threads() -> None:
    prepared = PreparedMac(b"k" * 32)
    keys = [generate_key() for _ in range(200)]
    expected = [mac_digest(b"k" * 32, key) for key in keys]
    results: list[list[bytes]] = []

    def work() -> None:
        results.append([prepared(key.encode()) for key in keys])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4


def test_api_keys_store_the_stdlib_hmac_of_the_key(api_keys: ApiKeys) -> None:
    key = generate_key()
    assert api_keys.digest(key) == mac_digest(secret().api_key_mac_key, key)


def test_the_last_digest_memo_never_answers_for_another_key(api_keys: ApiKeys) -> None:
    """``digest`` remembers the last key by identity: equal strings that are different objects, and
    other keys from other threads between two calls, still get their own HMAC."""
    mac_key = secret().api_key_mac_key
    key = generate_key()
    twin = "".join(list(key))  # equal, another object
    assert twin is not key
    assert api_keys.digest(key) == api_keys.digest(twin) == mac_digest(mac_key, key)
    keys = [generate_key() for _ in range(300)]
    expected = {key: mac_digest(mac_key, key) for key in keys}
    wrong: list[str] = []

    def work(offset: int) -> None:
        for i in range(2_000):
            chosen = keys[(i * 7 + offset) % len(keys)]
            if api_keys.digest(chosen) != expected[chosen] or (
                api_keys.digest(chosen) != expected[chosen]  # a second call: the memo's answer
            ):
                wrong.append(chosen)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_a_custom_prefix_is_used_and_required() -> None:
    key = generate_key("acme")
    assert key.startswith("acme_")
    assert is_well_formed(key, "acme")
    assert not is_well_formed(key)
    assert re.fullmatch(key_regex("acme"), key)


@pytest.mark.parametrize("prefix", ["", "a", "UPPER", "with_underscore", "1abc", "x" * 17])
def test_a_bad_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        generate_key(prefix)


def test_key_ids_are_short_random_and_public() -> None:
    ids = {generate_key_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"key_[0-9A-Za-z]{12}", key_id) for key_id in ids)


# -- create and storage ---------------------------------------------------------------------------------


def test_a_created_key_authenticates_as_its_consumer(api_keys: ApiKeys) -> None:
    record, key = api_keys.create("acme")
    principal = api_keys.authenticate(key)
    assert principal == Principal(
        key_id=record.id,
        consumer="acme",
        consumer_id=record.consumer_id,
        metadata=principal.metadata,
    )
    assert dict(principal.metadata) == {"tier": "gold"}
    assert record.hint == f"ks_...{key[-4:]}"
    assert record.id not in key


def test_principal_metadata_is_read_only(api_keys: ApiKeys) -> None:
    _, key = api_keys.create("acme")
    principal = api_keys.authenticate(key)
    with pytest.raises(TypeError):
        principal.metadata["tier"] = "platinum"  # type: ignore[index]


def test_the_database_never_holds_a_key_in_clear_only_its_hmac(tmp_path: Path) -> None:
    store = Store(db_url(tmp_path))
    store.create_consumer("acme")
    api_keys = ApiKeys(store, secret())
    created = [api_keys.create("acme")[1] for _ in range(3)]
    _record, rolled = api_keys.roll(api_keys.authenticate(created[0]).key_id)
    created.append(rolled)
    for key in created:
        api_keys.authenticate(key)
    api_keys.flush_last_used(force=True)
    content_before_close = database_bytes(tmp_path / "keyswap.db")
    store.close()
    for content in (content_before_close, database_bytes(tmp_path / "keyswap.db")):
        for key in created:
            assert key.encode() not in content
            assert key[3:33].encode() not in content  # the random part alone
    assert api_keys.digest(rolled) in database_bytes(tmp_path / "keyswap.db")


def test_the_hmac_depends_on_the_server_secret(store: CountingStore) -> None:
    other_store = Store("sqlite://")
    try:
        one = ApiKeys(store, secret())
        other = ApiKeys(other_store, ServerSecret.generate())
        key = generate_key()
        assert one.digest(key) != other.digest(key)
    finally:
        other_store.close()


def test_creating_a_key_for_an_unknown_consumer_fails(api_keys: ApiKeys) -> None:
    with pytest.raises(NotFound, match="unknown consumer 'ghost'"):
        api_keys.create("ghost")


@pytest.mark.parametrize("expires_in", [0, -5, float("inf"), float("nan")])
def test_an_expiry_must_be_a_positive_finite_duration(api_keys: ApiKeys, expires_in: float) -> None:
    with pytest.raises(InvalidInput, match="positive"):
        api_keys.create("acme", expires_in=expires_in)


def test_api_keys_refuse_a_database_set_up_with_another_secret(store: CountingStore) -> None:
    ApiKeys(store, secret())
    with pytest.raises(ConfigError, match="different server secret"):
        ApiKeys(store, ServerSecret.generate())


# -- refusals -------------------------------------------------------------------------------------------


def test_malformed_keys_are_refused_before_any_database_query(
    api_keys: ApiKeys, store: CountingStore
) -> None:
    queries = QueryCounter(store)
    good = generate_key()
    for key in ["", "nonsense", good[:-1] + ("A" if good[-1] != "A" else "B"), "ks_" + "A" * 36]:
        _refusal(api_keys, key)
        with pytest.raises(InvalidApiKey):
            api_keys.lookup_cached(key)
    assert store.lookups == 0
    assert queries.count == 0


def test_the_hmac_is_computed_for_malformed_keys_too(store: CountingStore) -> None:
    class CountingApiKeys(ApiKeys):
        digests = 0

        def digest(self, key: str) -> bytes:
            CountingApiKeys.digests += 1
            return super().digest(key)

    api_keys = CountingApiKeys(store, secret())
    _refusal(api_keys, "not-a-key")
    _refusal(api_keys, generate_key())
    assert CountingApiKeys.digests == 2


def test_every_refusal_is_identical_whatever_the_cause(
    api_keys: ApiKeys, store: CountingStore, clock: Clock
) -> None:
    _, revoked = api_keys.create("acme")
    api_keys.revoke(api_keys.authenticate(revoked).key_id)
    _, expired = api_keys.create("acme", expires_in=60)
    clock.advance(61)
    causes = {
        "malformed": "ks_not-a-key",
        "unknown": generate_key(),
        "revoked": revoked,
        "expired": expired,
    }
    refusals = {cause: _refusal(api_keys, key) for cause, key in causes.items()}
    shapes = {
        (type(e), str(e), e.args, e.code, e.status, e.reason, e.__cause__, e.__suppress_context__)
        for e in refusals.values()
    }
    assert len(shapes) == 1
    refusal = refusals["unknown"]
    assert str(refusal) == "Invalid API key"
    assert refusal.__context__ is None
    for key in causes.values():
        assert key not in str(refusal)


# -- expiry, revocation, roll ---------------------------------------------------------------------------


def test_a_key_works_until_its_expiry_even_when_cached(
    api_keys: ApiKeys, store: CountingStore, clock: Clock
) -> None:
    record, key = api_keys.create("acme", expires_in=HOUR)
    assert record.expires_at == clock.now + HOUR
    api_keys.authenticate(key)
    clock.advance(HOUR - 1)
    api_keys.authenticate(key)
    clock.advance(1)
    lookups = store.lookups
    _refusal(api_keys, key)
    with pytest.raises(InvalidApiKey):
        api_keys.lookup_cached(key)
    assert store.lookups == lookups  # refused from the cache, by the request time


def test_revocation_takes_effect_at_once_in_the_same_process(api_keys: ApiKeys) -> None:
    record, key = api_keys.create("acme")
    api_keys.authenticate(key)
    revoked = api_keys.revoke(record.id)
    assert revoked.revoked_at is not None
    _refusal(api_keys, key)


def test_revoking_an_unknown_key_id_fails(api_keys: ApiKeys) -> None:
    with pytest.raises(NotFound, match="unknown key id"):
        api_keys.revoke("key_doesnotexist")


def test_a_rolled_key_keeps_working_for_the_grace_period_and_the_new_one_works_at_once(
    api_keys: ApiKeys, store: CountingStore, clock: Clock
) -> None:
    old, old_key = api_keys.create("acme")
    new, new_key = api_keys.roll(old.id, grace=HOUR)
    assert new.id != old.id
    assert new_key != old_key
    assert new.expires_at is None
    assert api_keys.authenticate(new_key).consumer == "acme"
    stored_old = store.get_api_key(old.id)
    assert stored_old is not None
    assert stored_old.expires_at == clock.now + HOUR
    assert stored_old.replaced_by == new.id
    clock.advance(HOUR - 1)
    assert api_keys.authenticate(old_key).key_id == old.id
    clock.advance(1)
    _refusal(api_keys, old_key)
    assert api_keys.authenticate(new_key).key_id == new.id


def test_the_default_grace_period_is_24_hours(
    api_keys: ApiKeys, store: CountingStore, clock: Clock
) -> None:
    old, _ = api_keys.create("acme")
    api_keys.roll(old.id)
    stored = store.get_api_key(old.id)
    assert stored is not None
    assert stored.expires_at == clock.now + 24 * HOUR


def test_a_rolled_key_passes_its_expiry_on_to_the_new_key(
    api_keys: ApiKeys, store: CountingStore, clock: Clock
) -> None:
    old, _ = api_keys.create("acme", expires_in=10 * HOUR)
    new, _ = api_keys.roll(old.id, grace=HOUR)
    assert new.expires_at == old.expires_at
    stored = store.get_api_key(old.id)
    assert stored is not None
    assert stored.expires_at == clock.now + HOUR


def test_the_grace_period_never_extends_an_expiry(api_keys: ApiKeys, store: CountingStore) -> None:
    old, _ = api_keys.create("acme", expires_in=HOUR)
    api_keys.roll(old.id, grace=24 * HOUR)
    stored = store.get_api_key(old.id)
    assert stored is not None
    assert stored.expires_at == old.expires_at


def test_a_zero_grace_stops_the_old_key_at_once(api_keys: ApiKeys) -> None:
    old, old_key = api_keys.create("acme")
    api_keys.authenticate(old_key)
    api_keys.roll(old.id, grace=0)
    _refusal(api_keys, old_key)


def test_a_key_is_rolled_once_then_its_replacement_is_rolled(api_keys: ApiKeys) -> None:
    old, _ = api_keys.create("acme", expires_in=10 * HOUR)
    new, _ = api_keys.roll(old.id, grace=HOUR)
    with pytest.raises(InvalidInput, match=f"is rolled and cannot be rolled; roll '{new.id}'"):
        api_keys.roll(old.id)
    newer, _ = api_keys.roll(new.id, grace=HOUR)
    assert newer.expires_at == old.expires_at


def test_revoked_expired_and_unknown_keys_cannot_be_rolled(api_keys: ApiKeys, clock: Clock) -> None:
    revoked, _ = api_keys.create("acme")
    api_keys.revoke(revoked.id)
    with pytest.raises(InvalidInput, match="is revoked"):
        api_keys.roll(revoked.id)
    expired, _ = api_keys.create("acme", expires_in=60)
    clock.advance(60)
    with pytest.raises(InvalidInput, match="is expired"):
        api_keys.roll(expired.id)
    with pytest.raises(NotFound):
        api_keys.roll("key_unknown")
    with pytest.raises(InvalidInput, match="grace"):
        api_keys.roll(expired.id, grace=-1)


# -- cache ----------------------------------------------------------------------------------------------


def test_a_cached_key_is_authenticated_without_a_database_query(
    api_keys: ApiKeys, store: CountingStore
) -> None:
    _, key = api_keys.create("acme")
    assert api_keys.lookup_cached(key) is None  # a miss: the caller must authenticate()
    api_keys.authenticate(key)
    queries = QueryCounter(store)
    for _ in range(50):
        api_keys.authenticate(key)
        assert api_keys.lookup_cached(key) is not None
    assert queries.count == 0
    assert store.lookups == 1


def test_unknown_keys_are_cached_too(api_keys: ApiKeys, store: CountingStore) -> None:
    key = generate_key()
    _refusal(api_keys, key)
    _refusal(api_keys, key)
    with pytest.raises(InvalidApiKey):
        api_keys.lookup_cached(key)
    assert store.lookups == 1


def test_cached_lookups_expire_after_the_ttl(
    api_keys: ApiKeys, store: CountingStore, monotonic: Clock
) -> None:
    _, key = api_keys.create("acme")
    api_keys.authenticate(key)
    monotonic.advance(0.999)
    api_keys.authenticate(key)
    assert store.lookups == 1
    monotonic.advance(0.001)
    assert api_keys.lookup_cached(key) is None
    api_keys.authenticate(key)
    assert store.lookups == 2


def test_clearing_the_cache_re_reads_known_keys_and_forgets_unknown_ones(
    api_keys: ApiKeys, store: CountingStore
) -> None:
    record, key = api_keys.create("acme")
    unknown = generate_key()
    api_keys.authenticate(key)
    _refusal(api_keys, unknown)
    api_keys.revoke(record.id)  # clears the cache, which re-reads the known key in one batch
    _refusal(api_keys, key)
    assert store.lookups == 2  # the revocation was learned by the re-read, not by a new lookup
    _refusal(api_keys, unknown)
    assert store.lookups == 3


def test_the_cache_is_bounded(store: CountingStore) -> None:
    api_keys = ApiKeys(store, secret(), cache_size=2, cache_ttl=60)
    keys = [api_keys.create("acme")[1] for _ in range(3)]
    for key in keys:
        api_keys.authenticate(key)
    assert api_keys.lookup_cached(keys[0]) is None
    assert api_keys.lookup_cached(keys[2]) is not None


def test_a_lookup_overlapping_a_cache_clear_is_not_cached(tmp_path: Path) -> None:
    class RacingStore(Store):
        """Failure injection: a revocation lands while a lookup is in flight."""

        api_keys: ApiKeys

        def find_api_key(self, digest: bytes) -> tuple[ApiKeyRecord, Consumer] | None:
            found = super().find_api_key(digest)
            self.api_keys.clear_cache()
            return found

    store = RacingStore(db_url(tmp_path))
    store.create_consumer("acme")
    store.api_keys = ApiKeys(store, secret(), cache_ttl=60)
    _, key = store.api_keys.create("acme")
    store.api_keys.authenticate(key)
    assert store.api_keys.lookup_cached(key) is None
    store.close()


def test_a_change_made_by_another_store_shows_within_the_cache_ttl(
    tmp_path: Path, monotonic: Clock
) -> None:
    gateway_store, cli_store = Store(db_url(tmp_path)), Store(db_url(tmp_path))
    cli_store.create_consumer("acme")
    record, key = ApiKeys(cli_store, secret()).create("acme")
    gateway = ApiKeys(gateway_store, secret(), monotonic=monotonic)
    gateway.authenticate(key)
    cli_store.revoke_api_key(record.id, now=time.time())
    monotonic.advance(1.0)
    _refusal(gateway, key)
    gateway_store.close()
    cli_store.close()


# -- last used ------------------------------------------------------------------------------------------


def test_last_used_times_are_written_in_one_batch_not_per_request(
    api_keys: ApiKeys, store: CountingStore, clock: Clock, monotonic: Clock
) -> None:
    (first, key_a), (second, key_b) = api_keys.create("acme"), api_keys.create("acme")
    for _ in range(5):
        api_keys.authenticate(key_a)
        clock.advance(1)
    api_keys.authenticate(key_b)
    assert store.touches == []
    assert api_keys.flush_last_used() == 0  # the interval has not passed
    monotonic.advance(10)
    assert api_keys.flush_last_used() == 2
    assert store.touches == [{first.id: clock.now - 1, second.id: clock.now}]
    stored = store.get_api_key(first.id)
    assert stored is not None
    assert stored.last_used_at == clock.now - 1
    assert api_keys.flush_last_used(force=True) == 0


def test_last_used_times_survive_a_failed_flush(api_keys: ApiKeys, store: CountingStore) -> None:
    record, key = api_keys.create("acme")
    api_keys.authenticate(key)
    store.fail_touch = True
    with pytest.raises(RuntimeError):
        api_keys.flush_last_used(force=True)
    store.fail_touch = False
    assert api_keys.flush_last_used(force=True) == 1
    stored = store.get_api_key(record.id)
    assert stored is not None
    assert stored.last_used_at is not None


def test_refused_owner_names_only_revoked_or_expired_keys_it_knows(
    api_keys: ApiKeys, store: CountingStore, clock: Clock
) -> None:
    revoked_record, revoked = api_keys.create("acme")
    api_keys.authenticate(revoked)
    api_keys.revoke(revoked_record.id)
    _refusal(api_keys, revoked)
    expiring_record, expiring = api_keys.create("acme", expires_in=60)
    api_keys.authenticate(expiring)
    _, valid = api_keys.create("acme")
    api_keys.authenticate(valid)
    lookups = store.lookups
    assert api_keys.refused_owner(revoked) == ("acme", revoked_record.id)
    assert api_keys.refused_owner(expiring) is None
    clock.advance(61)
    assert api_keys.refused_owner(expiring) == ("acme", expiring_record.id)
    assert api_keys.refused_owner(valid) is None
    assert api_keys.refused_owner(generate_key()) is None
    assert api_keys.refused_owner("ks_not-a-key") is None
    assert store.lookups == lookups  # never a store query
