from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from keyswap.errors import ConfigError
from keyswap.gateway.mint import _SIGNERS, TokenMinter, _jti, sign_compact
from tests.support.keys import ec_key, ed_key, rsa_key

ISSUER = "http://127.0.0.1:8080/__keyswap/issuer"
AUDIENCE = "http://127.0.0.1:7878"


@dataclass(frozen=True)
class Key:
    kid: str
    alg: str
    private_key: Any


@dataclass(frozen=True)
class Principal:
    key_id: str
    consumer: str
    metadata: dict[str, Any] = field(default_factory=dict)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ActiveKey:
    """Stands in for Keyring.active: a key the test can swap (rotation)."""

    def __init__(self, key: Key) -> None:
        self.key = key

    def __call__(self) -> Key:
        return self.key


def _key(alg: str = "ES256", kid: str = "k1") -> Key:
    if alg == "RS256":
        return Key(kid, alg, rsa_key(kid).private)
    if alg == "ES256":
        return Key(kid, alg, ec_key(kid).private)
    return Key(kid, alg, ed_key(kid).private)


def _minter(active: ActiveKey, clock: Clock, **kw: Any) -> TokenMinter:
    return TokenMinter(active, issuer=ISSUER, audience=AUDIENCE, clock=clock, **kw)


def _header(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return decoded


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_minted_token_verifies_with_pyjwt_and_carries_every_claim(alg: str) -> None:
    key = _key(alg)
    clock = Clock()
    minter = _minter(ActiveKey(key), clock, ttl=300)
    principal = Principal("key_abc", "acme", {"plan": "free", "n": 1})

    minted = minter.token_for(principal)

    claims = jwt.decode(
        minted.token,
        key.private_key.public_key(),
        algorithms=[alg],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert _header(minted.token) == {"alg": alg, "kid": "k1", "typ": "JWT"}
    assert minted.header == b"Bearer " + minted.token.encode("ascii")
    assert claims["sub"] == "acme"
    assert claims["iat"] == 1_700_000_000
    assert claims["exp"] == claims["iat"] + 300
    assert claims["key_id"] == "key_abc"
    assert claims["metadata"] == {"plan": "free", "n": 1}
    assert claims["jti"] == minted.jti
    assert len(claims["jti"]) >= 16
    assert set(claims) == {"iss", "sub", "aud", "iat", "exp", "jti", "key_id", "metadata"}


def test_token_is_reused_while_more_than_half_its_life_remains() -> None:
    clock = Clock()
    minter = _minter(ActiveKey(_key()), clock, ttl=300)
    principal = Principal("key_abc", "acme")
    first = minter.token_for(principal)

    clock.now += 149
    assert minter.token_for(principal).jti == first.jti

    clock.now += 1  # exactly half the lifetime gone
    second = minter.token_for(principal)
    assert second.jti != first.jti
    assert second.iat == first.iat + 150


def test_each_api_key_gets_its_own_token() -> None:
    minter = _minter(ActiveKey(_key()), Clock())
    a = minter.token_for(Principal("key_a", "acme"))
    b = minter.token_for(Principal("key_b", "acme"))
    assert a.jti != b.jti
    assert len(minter) == 2


def test_rotation_of_the_active_key_mints_with_the_new_kid_at_once() -> None:
    active = ActiveKey(_key(kid="old"))
    minter = _minter(active, Clock())
    principal = Principal("key_abc", "acme")
    assert minter.token_for(principal).kid == "old"

    active.key = _key(kid="new")

    renewed = minter.token_for(principal)
    assert renewed.kid == "new"
    assert _header(renewed.token)["kid"] == "new"


def test_changed_metadata_is_never_served_from_the_cache() -> None:
    minter = _minter(ActiveKey(_key()), Clock())
    first = minter.token_for(Principal("key_abc", "acme", {"plan": "free"}))
    second = minter.token_for(Principal("key_abc", "acme", {"plan": "pro"}))
    assert second.jti != first.jti
    assert second.metadata == {"plan": "pro"}


def test_an_equal_principal_object_reuses_the_token_and_a_changed_one_does_not() -> None:
    minter = _minter(ActiveKey(_key()), Clock())
    first = minter.token_for(Principal("key_abc", "acme", {"plan": "free"}))
    assert minter.token_for(Principal("key_abc", "acme", {"plan": "free"})).jti == first.jti
    assert minter.token_for(Principal("key_abc", "other", {"plan": "free"})).jti != first.jti


def test_flush_forgets_every_cached_token() -> None:
    minter = _minter(ActiveKey(_key()), Clock())
    principal = Principal("key_abc", "acme")
    first = minter.token_for(principal)
    minter.flush()
    assert len(minter) == 0
    assert minter.token_for(principal).jti != first.jti


def test_cache_is_bounded_and_evicts_the_oldest_entry() -> None:
    minter = _minter(ActiveKey(_key()), Clock(), max_entries=2)
    first = minter.token_for(Principal("key_1", "a"))
    minter.token_for(Principal("key_2", "a"))
    minter.token_for(Principal("key_3", "a"))
    assert len(minter) == 2
    assert minter.token_for(Principal("key_1", "a")).jti != first.jti


@pytest.mark.parametrize(
    ("alg", "private_key"),
    [
        ("RS256", ec.generate_private_key(ec.SECP256R1())),
        ("ES256", ed25519.Ed25519PrivateKey.generate()),
        ("ES256", ec.generate_private_key(ec.SECP384R1())),
        ("EdDSA", rsa_key().private),
        ("HS256", rsa_key().private),
    ],
)
def test_a_key_that_does_not_fit_its_algorithm_refuses_to_sign(alg: str, private_key: Any) -> None:
    with pytest.raises(ConfigError):
        sign_compact(Key("k", alg, private_key), {"sub": "x"})


def test_es256_signature_is_the_raw_64_byte_form() -> None:
    key = _key("ES256")
    token = sign_compact(key, {"sub": "x"})
    signature = token.split(".")[2]
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64


@pytest.mark.parametrize("ttl", [0, -1, 86_401, 1.5])
def test_token_ttl_out_of_range_is_a_config_error(ttl: Any) -> None:
    with pytest.raises(ConfigError):
        TokenMinter(ActiveKey(_key()), issuer=ISSUER, audience=AUDIENCE, ttl=ttl)


@dataclass(frozen=True)
class ScopedPrincipal:
    key_id: str
    consumer: str
    metadata: dict[str, Any] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()


def _claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def test_scopes_are_minted_as_one_space_separated_scope_claim_and_omitted_when_none() -> None:
    minter = _minter(ActiveKey(_key()), Clock())
    scoped = minter.token_for(ScopedPrincipal("key_a", "acme", scopes=("orders:read", "x:y")))
    assert _claims(scoped.token)["scope"] == "orders:read x:y"
    assert "scope" not in _claims(minter.token_for(ScopedPrincipal("key_b", "acme")).token)
    assert "scope" not in _claims(minter.token_for(Principal("key_c", "acme")).token)


def test_a_change_of_scopes_re_mints_at_once() -> None:
    minter = _minter(ActiveKey(_key()), Clock())
    first = minter.token_for(ScopedPrincipal("key_a", "acme", scopes=("a", "b")))
    assert minter.token_for(ScopedPrincipal("key_a", "acme", scopes=("a", "b"))) is first
    narrowed = minter.token_for(ScopedPrincipal("key_a", "acme", scopes=("a",)))
    assert narrowed is not first
    assert _claims(narrowed.token)["scope"] == "a"


def test_token_ids_are_unique_well_formed_and_never_shared_with_a_forked_child() -> None:
    taken = [_jti() for _ in range(700)]  # across batch boundaries (256 a batch)
    assert len(set(taken)) == 700
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{24}", jti) for jti in taken)
    _jti()  # a batch is now in memory: a forked child must not reuse it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, " ".join(_jti() for _ in range(20)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    mine = [_jti() for _ in range(20)]
    assert len(child) == 20
    assert not set(child) & set(mine)


def test_a_signer_is_made_once_per_key_and_follows_a_new_key() -> None:
    first, second = Key("a", "ES256", ec_key().private), Key("b", "EdDSA", ed_key().private)
    claims = {"sub": "acme"}
    made: list[Any] = []
    for key in (first, second, first, second):
        token = sign_compact(key, claims)
        public = key.private_key.public_key()
        assert jwt.decode(token, public, algorithms=[key.alg]) == claims
        made.append(_SIGNERS[id(key.private_key)][2])
    assert made[0] is made[2]  # made once per key, then reused
    assert made[1] is made[3]
    assert made[0] is not made[1]
    # The same key object declared with another algorithm is checked again, not signed with.
    with pytest.raises(ConfigError):
        sign_compact(Key("a", "RS256", first.private_key), claims)
