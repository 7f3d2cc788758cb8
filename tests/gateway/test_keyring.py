from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keyswap.errors import ConfigError, KeysUnavailable
from keyswap.gateway.keyring import Keyring
from keyswap.gateway.secret import ServerSecret
from keyswap.store import SigningKeyRecord, Store
from keyswap.verifier.jwk import parse_jwks
from tests.support.gateway_state import Clock, database_bytes, db_url, secret

WINDOW = 300.0 + 300.0  # default token TTL + verifier cache margin
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class StaleOnceStore(Store):
    """Failure injection: the next signing-key read returns what was there before (a racing process)."""

    stale: list[SigningKeyRecord] | None = None

    def list_signing_keys(self) -> list[SigningKeyRecord]:
        if self.stale is not None:
            stale, self.stale = self.stale, None
            return stale
        return super().list_signing_keys()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StaleOnceStore]:
    store = StaleOnceStore(db_url(tmp_path))
    yield store
    store.close()


@pytest.fixture
def other_store(tmp_path: Path) -> Iterator[Store]:
    """A second, independent Store on the same file: another process."""
    other = Store(db_url(tmp_path))
    yield other
    other.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keyring(store: Store, clock: Clock) -> Keyring:
    return Keyring(store, secret(), clock=clock)


def _states(keyring: Keyring) -> dict[str, str]:
    return {record.kid: record.state for record in keyring.records()}


def _kids(jwks: dict[str, list[dict[str, str]]]) -> list[str]:
    return [jwk["kid"] for jwk in jwks["keys"]]


def test_the_first_start_creates_an_active_and_a_next_key_rs256_by_default(
    keyring: Keyring,
) -> None:
    keyring.ensure()
    states = sorted(_states(keyring).values())
    assert states == ["active", "next"]
    active = keyring.active()
    assert active.alg == "RS256"
    assert isinstance(active.private_key, rsa.RSAPrivateKey)
    assert active.private_key.key_size == 2048


def test_ensure_is_a_no_op_when_the_keys_exist(keyring: Keyring, store: Store) -> None:
    keyring.ensure("ES256")
    kids = _states(keyring)
    revision = store.revision()
    Keyring(store, secret()).ensure("ES256")
    keyring.ensure("EdDSA")
    keyring.reload()
    assert _states(keyring) == kids
    assert store.revision() == revision


def test_two_processes_starting_at_once_end_with_one_active_and_one_next_key(
    store: StaleOnceStore, other_store: Store
) -> None:
    winner = Keyring(other_store, secret())
    loser = Keyring(store, secret())
    store.stale = []  # the loser saw an empty table before the winner's insert landed
    winner.ensure("ES256")
    loser.ensure("ES256")
    assert _states(loser) == _states(winner)
    assert sorted(_states(loser).values()) == ["active", "next"]
    assert loser.active().kid == winner.active().kid


def test_gateways_racing_on_real_threads_agree_on_one_key_pair(tmp_path: Path) -> None:
    stores = [Store(db_url(tmp_path)) for _ in range(4)]
    keyrings = [Keyring(s, secret()) for s in stores]
    barrier = threading.Barrier(len(keyrings))
    errors: list[BaseException] = []

    def start(keyring: Keyring) -> None:
        try:
            barrier.wait()
            keyring.ensure("ES256")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(k,)) for k in keyrings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len({k.active().kid for k in keyrings}) == 1
        assert sorted(r.state for r in stores[0].list_signing_keys()) == ["active", "next"]
    finally:
        for store in stores:
            store.close()


def test_the_kid_is_the_rfc_7638_thumbprint_and_the_key_signs_as_published(
    keyring: Keyring,
) -> None:
    keyring.ensure("ES256")
    active = keyring.active()
    published, skipped = parse_jwks(keyring.public_jwks())
    assert skipped == []
    assert active.kid in published
    private = active.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    public = published[active.kid].public_key
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()


def test_the_next_key_is_published_before_it_signs(keyring: Keyring) -> None:
    keyring.ensure("ES256")
    next_kid = next(kid for kid, state in _states(keyring).items() if state == "next")
    assert next_kid in _kids(keyring.public_jwks())
    assert keyring.active().kid != next_kid
    keyring.rotate()
    assert keyring.active().kid == next_kid


def test_rotate_activates_next_retires_active_and_creates_a_new_next_key(
    keyring: Keyring, clock: Clock
) -> None:
    keyring.ensure("ES256")
    before = _states(keyring)
    old_active = keyring.active().kid
    old_next = next(kid for kid, state in before.items() if state == "next")
    clock.advance(100)
    keyring.rotate()
    after = _states(keyring)
    new_next = next(kid for kid, state in after.items() if state == "next")
    assert after == {old_active: "retired", old_next: "active", new_next: "next"}
    retired = next(r for r in keyring.records() if r.kid == old_active)
    assert retired.retired_at == clock.now
    assert keyring.published_until(retired) == clock.now + WINDOW
    assert _kids(keyring.public_jwks()) == [old_next, new_next, old_active]


def test_a_retired_key_stays_published_until_its_tokens_and_caches_expire_then_is_pruned(
    keyring: Keyring, clock: Clock, store: Store
) -> None:
    keyring.ensure("ES256")
    retired = keyring.active().kid
    keyring.rotate()
    clock.advance(WINDOW - 1)
    assert retired in _kids(keyring.public_jwks())
    assert keyring.prune() == []
    clock.advance(1)
    assert retired not in _kids(keyring.public_jwks())
    assert keyring.prune() == [retired]
    assert retired not in {r.kid for r in store.list_signing_keys()}
    assert len(keyring.public_jwks()["keys"]) == 2


def test_the_retirement_window_follows_the_token_ttl_and_cache_margin(
    store: Store, clock: Clock
) -> None:
    keyring = Keyring(store, secret(), token_ttl=60, cache_margin=30, clock=clock)
    keyring.ensure("ES256")
    retired = keyring.active().kid
    keyring.rotate()
    clock.advance(89)
    assert keyring.prune() == []
    assert keyring.prune(token_ttl=50, margin=30) == [retired]


def test_rotate_can_switch_the_algorithm_of_the_new_next_key(keyring: Keyring) -> None:
    keyring.ensure("ES256")
    keyring.rotate(alg="EdDSA")
    algs = {record.state: record.alg for record in keyring.records() if record.state != "retired"}
    assert algs == {"active": "ES256", "next": "EdDSA"}
    keyring.rotate()
    assert keyring.active().alg == "EdDSA"
    with pytest.raises(ConfigError, match="unsupported signing algorithm"):
        keyring.rotate(alg="none")


def test_rotating_an_empty_keyring_only_creates_the_keys(keyring: Keyring) -> None:
    keyring.rotate(alg="ES256")
    assert sorted(_states(keyring).values()) == ["active", "next"]


def test_a_rotation_by_another_keyring_shows_after_reload(store: Store, other_store: Store) -> None:
    gateway = Keyring(store, secret())
    cli = Keyring(other_store, secret())
    gateway.ensure("ES256")
    old = gateway.active().kid
    assert not gateway.reload()
    cli.rotate()
    assert gateway.active().kid == old  # no I/O on the hot path: the snapshot stands
    assert gateway.reload()
    assert gateway.active().kid == cli.active().kid != old
    assert gateway.public_jwks() == cli.public_jwks()
    assert not gateway.reload()


def test_a_concurrent_rotation_is_refused_without_changing_anything(
    store: StaleOnceStore, other_store: Store
) -> None:
    first = Keyring(other_store, secret())
    second = Keyring(store, secret())
    first.ensure("ES256")
    second.reload()
    store.stale = store.list_signing_keys()  # what `second` read before `first` rotated
    first.rotate()
    with pytest.raises(ConfigError, match="another process rotated"):
        second.rotate()
    assert _states(second) == _states(first)
    assert sorted(_states(second).values()) == ["active", "next", "retired"]


class SlowFirstReadStore(Store):
    """Failure injection: the next signing-key read returns its rows only when released (or after
    0.5 s), like a query that was slow while another thread reloaded."""

    hold: threading.Event | None = None
    reading = threading.Event()

    def list_signing_keys(self) -> list[SigningKeyRecord]:
        records = super().list_signing_keys()
        hold, self.hold = self.hold, None
        if hold is not None:
            self.reading.set()
            hold.wait(0.5)
        return records


def test_a_slow_reload_never_puts_back_keys_older_than_a_later_reload(tmp_path: Path) -> None:
    store = SlowFirstReadStore(db_url(tmp_path))
    other = Store(db_url(tmp_path))
    try:
        gateway = Keyring(store, secret(), token_ttl=30, cache_margin=30)
        gateway.ensure("ES256")
        retired = gateway.active().kid
        release = threading.Event()
        store.reading = threading.Event()
        store.hold = release
        slow = threading.Thread(target=gateway.reload)  # e.g. the prune task
        slow.start()
        assert store.reading.wait(5)
        cli = Keyring(other, secret())
        cli.rotate()
        gateway.reload()  # the change watcher, after the rotation committed
        release.set()
        slow.join(5)
        assert gateway.active().kid == cli.active().kid != retired
    finally:
        store.close()
        other.close()


def test_the_jwks_never_carries_private_members(
    keyring: Keyring, store: Store, clock: Clock
) -> None:
    keyring.ensure("RS256")
    keyring.rotate(alg="ES256")
    keyring.rotate(alg="EdDSA")
    # A tampered row with private members in its public JWK: still only public members go out.
    tampered = store.list_signing_keys()[0]
    for jwk in keyring.public_jwks()["keys"]:
        assert not PRIVATE_MEMBERS & set(jwk)
        assert jwk["use"] == "sig"
        assert jwk["alg"] in {"RS256", "ES256", "EdDSA"}
    poisoned = SigningKeyRecord(
        kid="poisoned",
        alg="RS256",
        state="retired",
        public_jwk={**tampered.public_jwk, "d": "private", "p": "x", "q": "y"},
        private_blob=tampered.private_blob,
        created_at=tampered.created_at,
        activated_at=None,
        retired_at=clock.now,
    )
    store.insert_signing_keys([poisoned])
    keyring.reload()
    published = {jwk["kid"]: jwk for jwk in keyring.public_jwks()["keys"]}
    assert "poisoned" in published
    assert not PRIVATE_MEMBERS & set(published["poisoned"])


def test_private_keys_are_encrypted_at_rest(tmp_path: Path) -> None:
    store = Store(db_url(tmp_path))
    keyring = Keyring(store, secret())
    keyring.ensure("ES256")
    private = keyring.active().private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    scalar = private.private_numbers().private_value.to_bytes(32, "big")
    store.close()
    content = database_bytes(tmp_path / "keyswap.db")
    assert keyring.active().kid.encode() in content
    assert der not in content
    assert scalar not in content


def test_active_before_any_key_is_loaded_is_keys_unavailable(keyring: Keyring) -> None:
    with pytest.raises(KeysUnavailable):
        keyring.active()


def test_a_keyring_refuses_a_database_set_up_with_another_secret(store: Store) -> None:
    Keyring(store, secret()).ensure("ES256")
    with pytest.raises(ConfigError, match="different server secret"):
        Keyring(store, ServerSecret.generate())


def test_negative_windows_are_refused(store: Store) -> None:
    with pytest.raises(ConfigError):
        Keyring(store, secret(), token_ttl=-1)
