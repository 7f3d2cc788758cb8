"""The Verifier end to end, against real JWKS servers on 127.0.0.1, with a frozen clock."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keyswap.errors import (
    BadSignature,
    ConfigError,
    ExpiredToken,
    InvalidAudience,
    InvalidClaim,
    InvalidIssuer,
    InvalidToken,
    KeysUnavailable,
    MalformedToken,
    TokenNotYetValid,
    UnknownKey,
    UnsupportedAlgorithm,
)
from keyswap.verifier.metrics import Metrics
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.jwks_server import JWKSServer, running_jwks_server
from tests.support.keys import TestKey as SigningKey
from tests.support.keys import b64u, claims, ec_key, ed_key, jwks, rsa_key

NOW = 1_700_000_000.0
ISS = "https://issuer.test"
AUD = "https://api.test"
ALL_ALGS = ("RS256", "PS256", "ES256", "EdDSA")


class Clock:
    """A frozen wall clock that tests move by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def valid_claims(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"iss": ISS, "aud": AUD, "now": NOW} | overrides
    return claims(**arguments)


def forge(key: SigningKey, header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes,
          alg: str | None = None) -> str:  # fmt: skip
    """Sign arbitrary header/payload bytes with a real key (to show the check is not the signature)."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64u(h)}.{b64u(p)}"
    return f"{signing_input}.{b64u(key.raw_sign(signing_input.encode(), alg or key.alg))}"


def make_verifier(
    url: str, clock: Clock | None = None, metrics: Metrics | None = None, **config: Any
) -> Verifier:
    config.setdefault("audience", AUD)
    return Verifier(
        IssuerConfig(issuer=config.pop("issuer", ISS), jwks_url=url, **config),
        clock=clock or Clock(),
        metrics=metrics,
    )


@pytest.fixture
def signer() -> SigningKey:
    return rsa_key("rsa-1")


@pytest.fixture
def verifier(jwks_server: JWKSServer, signer: SigningKey) -> Iterator[Verifier]:
    jwks_server.serve(jwks(signer))
    v = make_verifier(jwks_server.url, jwks_cooldown=3600)
    try:
        yield v
    finally:
        v.close()


# --- the happy paths ------------------------------------------------------------------------------


def test_verify_sync_returns_the_claims(verifier: Verifier, signer: SigningKey) -> None:
    c = valid_claims(scope="read")
    assert verifier.verify_sync(signer.sign(c)) == c


async def test_verify_returns_the_claims(verifier: Verifier, signer: SigningKey) -> None:
    c = valid_claims()
    assert await verifier.verify(signer.sign(c)) == c


@pytest.mark.parametrize(
    "make_key",
    [lambda: rsa_key("ps", alg="PS256"), lambda: ec_key("ec"), lambda: ed_key("ed")],
    ids=["PS256", "ES256", "EdDSA"],
)
def test_every_supported_algorithm_verifies_when_allowed(
    jwks_server: JWKSServer, make_key: Callable[[], SigningKey]
) -> None:
    key = make_key()
    jwks_server.serve(jwks(key))
    with make_verifier(jwks_server.url, algorithms=(key.alg,)) as v:
        assert v.verify_sync(key.sign(valid_claims()))["sub"] == "consumer-1"


def test_default_allow_list_is_rs256_only(jwks_server: JWKSServer) -> None:
    key = ec_key("ec")
    jwks_server.serve(jwks(key, rsa_key()))
    with make_verifier(jwks_server.url) as v, pytest.raises(UnsupportedAlgorithm):
        v.verify_sync(key.sign(valid_claims()))


def test_returned_claims_are_a_copy(verifier: Verifier, signer: SigningKey) -> None:
    token = signer.sign(valid_claims())
    verifier.verify_sync(token)["sub"] = "admin"
    assert verifier.verify_sync(token)["sub"] == "consumer-1"


def test_verify_sync_works_from_threads_without_an_event_loop(
    verifier: Verifier, signer: SigningKey
) -> None:
    results: list[str] = []

    def work(i: int) -> None:
        results.append(verifier.verify_sync(signer.sign(valid_claims(sub=f"s{i}")))["sub"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(f"s{i}" for i in range(8))


def test_bytes_and_other_non_strings_are_malformed(verifier: Verifier) -> None:
    for token in (b"a.b.c", None, 5, ["a.b.c"]):
        with pytest.raises(MalformedToken):
            verifier.verify_sync(token)  # type: ignore[arg-type]


def test_token_over_the_size_cap_is_rejected_without_io(jwks_server: JWKSServer) -> None:
    key = rsa_key()
    jwks_server.serve(jwks(key))
    v = Verifier(IssuerConfig(ISS, jwks_server.url), clock=Clock(), max_token_size=256)
    with v, pytest.raises(MalformedToken, match="too large"):
        v.verify_sync(key.sign(valid_claims()))
    assert jwks_server.count() <= 1  # only the background start-up fetch


# --- issuers ----------------------------------------------------------------------------------------


@pytest.fixture
def second_server() -> Iterator[JWKSServer]:
    with running_jwks_server() as server:
        yield server


def test_each_issuer_verifies_with_its_own_key_set(
    jwks_server: JWKSServer, second_server: JWKSServer
) -> None:
    a, b = rsa_key("a"), ec_key("b")
    jwks_server.serve(jwks(a))
    second_server.serve(jwks(b))
    issuers = [
        IssuerConfig("https://a.test", jwks_server.url, audience="api-a"),
        IssuerConfig("https://b.test", second_server.url, audience="api-b", algorithms=("ES256",)),
    ]
    with Verifier(issuers, clock=Clock()) as v:
        token_a = a.sign(claims(iss="https://a.test", aud="api-a", now=NOW))
        token_b = b.sign(claims(iss="https://b.test", aud="api-b", now=NOW))
        assert v.verify_sync(token_a)["iss"] == "https://a.test"
        assert v.verify_sync(token_b)["iss"] == "https://b.test"
        # A kid from another set is unknown; B's audience and algorithms apply to B's tokens.
        with pytest.raises(UnknownKey):
            v.verify_sync(ec_key("a").sign(claims(iss="https://b.test", aud="api-b", now=NOW)))
        with pytest.raises(InvalidAudience):
            v.verify_sync(b.sign(claims(iss="https://b.test", aud="api-a", now=NOW)))
        with pytest.raises(UnsupportedAlgorithm):
            v.verify_sync(a.sign(claims(iss="https://b.test", aud="api-b", now=NOW)))
    assert v.issuers == tuple(issuers)


def test_unknown_issuer_is_rejected_with_zero_jwks_requests(
    jwks_server: JWKSServer, signer: SigningKey
) -> None:
    jwks_server.serve(jwks(signer))
    v = make_verifier(jwks_server.url)  # not started: any fetch would be caused by the token
    try:
        for iss in ("https://other.test", ISS + "/", ISS.upper(), "", None, [ISS], 7):
            with pytest.raises(InvalidIssuer):
                v.verify_sync(
                    signer.sign(
                        valid_claims(iss=iss) if iss is not None else valid_claims() | {"iss": None}
                    )
                )
        assert jwks_server.count() == 0
    finally:
        v.close()


def test_issuer_specific_leeway_applies(jwks_server: JWKSServer, signer: SigningKey) -> None:
    jwks_server.serve(jwks(signer))
    token = signer.sign(valid_claims(ttl=-50))  # expired 50 s ago
    with make_verifier(jwks_server.url, leeway=60) as v:
        assert v.verify_sync(token)
    with make_verifier(jwks_server.url, leeway=30) as v, pytest.raises(ExpiredToken):
        v.verify_sync(token)


def test_expired_token_causes_no_jwks_request(jwks_server: JWKSServer, signer: SigningKey) -> None:
    jwks_server.serve(jwks(signer))
    v = make_verifier(jwks_server.url)
    try:
        with pytest.raises(ExpiredToken):
            v.verify_sync(signer.sign(valid_claims(ttl=-100)))
        assert jwks_server.count() == 0
    finally:
        v.close()


def test_an_unsigned_token_with_a_huge_integer_exp_is_an_invalid_claim_without_io(
    jwks_server: JWKSServer, signer: SigningKey
) -> None:
    jwks_server.serve(jwks(signer))
    header = b64u(json.dumps({"alg": "RS256", "kid": signer.kid}).encode())
    payload = b64u(json.dumps(valid_claims() | {"exp": 10**400}).encode())
    token = f"{header}.{payload}.{b64u(bytes(256))}"
    v = make_verifier(jwks_server.url)
    try:
        with pytest.raises(InvalidClaim):
            v.verify_sync(token)
        assert jwks_server.count() == 0
    finally:
        v.close()


def test_required_claims_are_configurable_per_issuer(
    jwks_server: JWKSServer, signer: SigningKey
) -> None:
    jwks_server.serve(jwks(signer))
    with make_verifier(jwks_server.url, required_claims=("sub", "jti")) as v:
        with pytest.raises(InvalidClaim, match="jti"):
            v.verify_sync(signer.sign(valid_claims()))
        assert v.verify_sync(signer.sign(valid_claims(jti="j1")))["jti"] == "j1"


def test_keys_unavailable_when_the_jwks_cannot_be_fetched(
    jwks_server: JWKSServer, signer: SigningKey
) -> None:
    jwks_server.serve({"keys": []}, status=500)
    metrics = Metrics()
    with make_verifier(jwks_server.url, metrics=metrics) as v, pytest.raises(KeysUnavailable):
        v.verify_sync(signer.sign(valid_claims()))
    assert metrics.get("rejections", reason="keys_unavailable") == 1


# --- the token cache --------------------------------------------------------------------------------


def test_cache_hit_skips_the_signature_check(verifier: Verifier, signer: SigningKey) -> None:
    token = signer.sign(valid_claims())
    for _ in range(3):
        verifier.verify_sync(token)
    m = verifier.metrics
    assert m.get("token_cache_misses") == 1
    assert m.get("token_cache_hits") == 2
    assert m.get("verifications") == 3


async def test_sync_and_async_share_one_cache(verifier: Verifier, signer: SigningKey) -> None:
    token = signer.sign(valid_claims())
    await asyncio.to_thread(verifier.verify_sync, token)
    await verifier.verify(token)
    assert verifier.metrics.get("token_cache_hits") == 1


def test_cached_answers_only_for_tokens_verified_before_and_still_valid(
    jwks_server: JWKSServer, signer: SigningKey
) -> None:
    jwks_server.serve(jwks(signer))
    clock = Clock()
    with make_verifier(jwks_server.url, clock=clock, leeway=0) as v:
        token = signer.sign(valid_claims(ttl=60, scope={"read": ["a"]}))
        assert v.cached(token) is None  # unseen: no parsing, no I/O, no rejection counted
        assert v.metrics.get("rejections") == 0
        assert v.metrics.get("jwks_fetches") == 0
        expected = v.verify_sync(token)
        first = v.cached(token)
        assert first == expected
        assert first is not None
        first["scope"]["read"].append("admin")  # the caller's own copy, nested values included
        assert v.cached("".join(list(token))) == expected  # an equal string built anew hits too
        assert v.metrics.get("token_cache_hits") == 2
        assert v.metrics.get("verifications") == 3
        for other in (token[:-1] + ("A" if token[-1] != "A" else "B"), token + ".", ""):
            assert v.cached(other) is None
        assert v.cached(token.encode()) is None  # type: ignore[arg-type]
        assert v.cached(None) is None  # type: ignore[arg-type]
        assert v.cached(token + "x" * 8192) is None  # beyond the size cap
        clock.now = NOW + 60
        assert v.cached(token) is None  # expired: dropped, verify gives the reason
        with pytest.raises(ExpiredToken):
            v.verify_sync(token)


def test_cache_hit_really_skips_rsa(verifier: Verifier, signer: SigningKey) -> None:
    # With the key set gone (no I/O possible, no key), only a cache hit can still accept the token.
    token = signer.sign(valid_claims())
    verifier.verify_sync(token)
    verifier.keyset(ISS).close()
    assert verifier.verify_sync(token)["sub"] == "consumer-1"
    assert verifier.metrics.get("token_cache_hits") == 1


def test_cache_honours_exp_with_a_frozen_clock(jwks_server: JWKSServer, signer: SigningKey) -> None:
    jwks_server.serve(jwks(signer))
    clock = Clock()
    with make_verifier(jwks_server.url, clock=clock, leeway=30) as v:
        token = signer.sign(valid_claims(ttl=60))
        v.verify_sync(token)
        clock.now = NOW + 60 + 29
        v.verify_sync(token)
        assert v.metrics.get("token_cache_hits") == 1
        clock.now = NOW + 60 + 30
        with pytest.raises(ExpiredToken):
            v.verify_sync(token)
        assert v.metrics.get("token_cache_hits") == 1


def test_cache_honours_nbf_when_the_clock_moves_back(
    jwks_server: JWKSServer, signer: SigningKey
) -> None:
    jwks_server.serve(jwks(signer))
    clock = Clock()
    with make_verifier(jwks_server.url, clock=clock, leeway=0) as v:
        token = signer.sign(valid_claims(nbf=int(NOW)))
        v.verify_sync(token)
        clock.now = NOW - 10
        with pytest.raises(TokenNotYetValid):
            v.verify_sync(token)


def test_cache_is_purged_when_the_kid_leaves_the_jwks(jwks_server: JWKSServer) -> None:
    old, new = rsa_key("old"), rsa_key("new", slot=1)
    jwks_server.serve(jwks(old, new))
    with make_verifier(jwks_server.url) as v:
        token = old.sign(valid_claims())
        v.verify_sync(token)
        v.verify_sync(token)
        assert v.metrics.get("token_cache_hits") == 1
        jwks_server.serve(jwks(new))
        v.keyset(ISS).refresh_sync()  # the key set sees "old" removed and calls back
        with pytest.raises(UnknownKey):
            v.verify_sync(token)
        assert v.metrics.get("token_cache_hits") == 1
        assert v.verify_sync(new.sign(valid_claims()))


def test_cache_size_zero_disables_the_cache(jwks_server: JWKSServer, signer: SigningKey) -> None:
    jwks_server.serve(jwks(signer))
    v = Verifier(IssuerConfig(ISS, jwks_server.url), clock=Clock(), token_cache_size=0)
    with v:
        token = signer.sign(valid_claims())
        v.verify_sync(token)
        v.verify_sync(token)
    assert v.metrics.get("token_cache_hits") == 0
    assert v.metrics.get("verifications") == 2


def test_rejected_token_is_not_cached(verifier: Verifier, signer: SigningKey) -> None:
    token = signer.sign(valid_claims())
    bad = token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")
    for _ in range(2):
        with pytest.raises(InvalidToken):
            verifier.verify_sync(bad)
    assert verifier.metrics.get("token_cache_hits") == 0


# --- metrics and logs -----------------------------------------------------------------------------


def test_rejections_are_counted_and_logged_without_the_token(
    verifier: Verifier, signer: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="keyswap")
    expired = signer.sign(valid_claims(ttl=-3600))
    with pytest.raises(ExpiredToken):
        verifier.verify_sync(expired)
    with pytest.raises(MalformedToken):
        verifier.verify_sync("not-a-token")
    assert verifier.metrics.get("rejections", reason="expired") == 1
    assert verifier.metrics.get("rejections", reason="malformed") == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "keyswap.verifier"]
    assert any("expired" in m for m in messages)
    text = caplog.text
    for part in expired.split("."):
        assert part not in text
    assert "not-a-token" not in text


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algorithms": ("none",)}, "algorithms"),
        ({"algorithms": ("HS256",)}, "algorithms"),
        ({"algorithms": ("rs256",)}, "algorithms"),
        ({"algorithms": ()}, "algorithms"),
        ({"leeway": -1}, "leeway"),
        ({"leeway": 3600}, "leeway"),
        ({"issuer": ""}, "issuer"),
        ({"audience": ""}, "audience"),
        ({"jwks_url": "file:///etc/passwd"}, "http"),
        ({"required_claims": ("",)}, "required_claims"),
        ({"jwks_cache_ttl": float("nan")}, "jwks_cache_ttl"),
        ({"jwks_cooldown": 0}, "jwks_cooldown"),
        ({"jwks_max_stale": -1}, "jwks_max_stale"),
    ],
)
def test_bad_issuer_config_is_a_config_error(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"issuer": ISS, "jwks_url": "https://issuer.test/jwks.json"}
    with pytest.raises(ConfigError, match=match):
        IssuerConfig(**(base | kwargs))


def test_algorithms_given_as_a_list_or_string_become_a_tuple() -> None:
    cfg = IssuerConfig(ISS, "https://i.test/j", algorithms=["ES256", "EdDSA"])  # type: ignore[arg-type]
    assert cfg.algorithms == ("ES256", "EdDSA")
    assert IssuerConfig(ISS, "https://i.test/j", algorithms="ES256").algorithms == ("ES256",)  # type: ignore[arg-type]


def test_verifier_config_errors() -> None:
    cfg = IssuerConfig(ISS, "https://i.test/j")
    with pytest.raises(ConfigError):
        Verifier([])
    with pytest.raises(ConfigError):
        Verifier([cfg, cfg])
    with pytest.raises(ConfigError):
        Verifier(cfg, max_token_size=10)
    with pytest.raises(ConfigError):
        Verifier(cfg, token_cache_size=-1)


# --- the attack catalogue (docs/security-corpus A01-A30, the rows that apply to this layer) ------------


@dataclass
class Env:
    server: JWKSServer
    verifier: Verifier
    rsa: SigningKey  # JWK alg RS256
    rsa_any: SigningKey  # JWK without alg (RS256 and PS256)
    ec: SigningKey
    ed: SigningKey
    p384: SigningKey  # published, skipped (unsupported curve)
    attacker: SigningKey  # never published


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    rsa = rsa_key("rsa-1")
    rsa_any = SigningKey(rsa_key(slot=1).private, "RS256", "rsa-any", {"alg": None})
    ec = ec_key("ec-1")
    ed = ed_key("ed-1")
    p384 = SigningKey(_p384(), "ES256", "p384")
    attacker = ec_key("ec-1")  # same kid as the real EC key, different key
    with running_jwks_server() as server:
        doc = jwks(rsa, rsa_any, ec, ed)
        doc["keys"].append(p384.public_jwk(alg=None))
        server.serve(doc)
        verifier = make_verifier(server.url, algorithms=ALL_ALGS, jwks_cooldown=3600)
        verifier.keyset(ISS).refresh_sync()
        yield Env(server, verifier, rsa, rsa_any, ec, ed, p384, attacker)
        verifier.close()


def _p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _hmac_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    si = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(payload).encode())}"
    return f"{si}.{b64u(hmac.new(secret, si.encode(), hashlib.sha256).digest())}"


def _public_forms(key: SigningKey) -> list[bytes]:
    """The public key in every encoding an HS256-confusion attacker tries as the HMAC secret."""
    assert isinstance(key.private, rsa.RSAPrivateKey)
    pub = key.private.public_key()
    spki = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pkcs1 = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ssh = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return [spki, spki.rstrip(b"\n"), pkcs1, der, ssh, json.dumps(key.public_jwk()).encode()]


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _non_canonical_tail(token: str) -> str:
    """Set an unused low bit in the last character: lenient decoders give the same bytes."""
    head, last = token[:-1], token[-1]
    return head + _ALPHABET[_ALPHABET.index(last) | 1]


P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

Case = Callable[[Env], str]
C = valid_claims


def _h(env: Env, key: SigningKey, **extra: Any) -> dict[str, Any]:
    return {"alg": key.alg, "typ": "JWT", "kid": key.kid} | extra


def _swap_sig(token: str, sig: bytes) -> str:
    return token.rsplit(".", 1)[0] + "." + b64u(sig)


# Builders for the parametrised rows: each binds its row's values and returns the row's Case.


def _alg_none(alg: str, sig: str) -> Case:
    return lambda e: (
        f"{b64u(json.dumps({'alg': alg, 'kid': 'rsa-1'}).encode())}."
        f"{b64u(json.dumps(C()).encode())}."
        + ("" if sig == "empty" else e.rsa.sign(C()).split(".")[2])
    )


def _hs_confusion(form: int, alg: str) -> Case:
    return lambda e: _hmac_token({"alg": alg, "kid": "rsa-1"}, C(), _public_forms(e.rsa)[form])


def _signed_with_kid(kid: str) -> Case:
    return lambda e: e.rsa.sign(C(), kid=kid)


def _forged_with_kid(kid: object) -> Case:
    return lambda e: forge(e.rsa, {"alg": "RS256", "kid": kid}, C())


def _psychic(r: int, s: int) -> Case:
    return lambda e: _swap_sig(e.ec.sign(C()), r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def _header_extra(extra: dict[str, Any]) -> Case:
    return lambda e: forge(e.rsa, _h(e, e.rsa, **extra), C())


def _duplicate_claim(name: str) -> Case:
    return lambda e: forge(e.rsa, _h(e, e.rsa), _dup_payload(name))


def _raw_exp(raw_value: bytes) -> Case:
    return lambda e: forge(e.rsa, _h(e, e.rsa), _raw_claims("exp", raw_value))


def _signed_claims(**overrides: Any) -> Case:
    return lambda e: e.rsa.sign(C(**overrides))


def _reshaped(change: Callable[[str], str]) -> Case:
    return lambda e: change(e.rsa.sign(C()))


def _not_an_object(part: str, raw: bytes) -> Case:
    if part == "header":
        return lambda e: forge(e.rsa, raw, C())
    return lambda e: forge(e.rsa, _h(e, e.rsa), raw)


def _alg_spelling(alg: str) -> Case:
    return lambda e: forge(e.rsa, {"alg": alg, "kid": "rsa-1"}, C(), alg="RS256")


# Rows whose values mix JSON types (a bare literal list of them would be typed list[object]).
_KIDS_OF_EVERY_JSON_TYPE: list[tuple[str, object]] = [
    ("null", None),
    ("int", 123),
    ("list", []),
    ("object", {}),
    ("empty", ""),
]
_CRIT_HEADERS: list[tuple[str, dict[str, Any]]] = [
    ("x-ext", {"crit": ["x-ext"], "x-ext": 1}),
    ("empty", {"crit": []}),
    ("string-b64", {"crit": "b64"}),
    ("exp", {"crit": ["exp"]}),
    ("absent-param", {"crit": ["nothere"]}),
]


ATTACKS: dict[str, tuple[Case, type[InvalidToken]]] = {
    # A01 alg none, any casing, with an empty or a kept signature
    **{
        f"A01-alg-{alg}-{sig}": (_alg_none(alg, sig), UnsupportedAlgorithm)
        for alg in ("none", "None", "NONE", "nOnE")
        for sig in ("empty", "kept")
    },
    # A02 HS256 with the public key (PEM, PKCS#1, DER, OpenSSH, JWK text) as the HMAC secret
    **{
        f"A02-hs-confusion-{i}-{alg}": (_hs_confusion(i, alg), UnsupportedAlgorithm)
        for i in range(6)
        for alg in ("HS256", "HS384", "HS512")
    },
    # A03 the algorithm does not fit the key's JWK alg / kty / crv
    "A03-ps256-token-on-rs256-jwk": (lambda e: e.rsa.sign(C(), alg="PS256"), UnsupportedAlgorithm),
    "A03-ps256-with-rs256-sig-on-rsa-any": (
        lambda e: forge(e.rsa_any, {"alg": "PS256", "kid": "rsa-any"}, C(), alg="RS256"),
        BadSignature,
    ),
    "A03-es256-on-p384-key": (
        lambda e: forge(e.ec, {"alg": "ES256", "kid": "p384"}, C()),
        UnknownKey,
    ),
    "A03-eddsa-on-ec-key": (
        lambda e: forge(e.ed, {"alg": "EdDSA", "kid": "ec-1"}, C()),
        UnsupportedAlgorithm,
    ),
    "A03-es512-alg": (
        lambda e: forge(e.ec, {"alg": "ES512", "kid": "ec-1"}, C()),
        UnsupportedAlgorithm,
    ),
    "A03-rs256-on-ed-key": (
        lambda e: forge(e.rsa, {"alg": "RS256", "kid": "ed-1"}, C()),
        UnsupportedAlgorithm,
    ),
    # A04 keys embedded in the header are never trusted (the token is refused outright)
    "A04-embedded-jwk": (
        lambda e: forge(e.attacker, _h(e, e.attacker, jwk=e.attacker.public_jwk()), C()),
        MalformedToken,
    ),
    "A04-x5c": (lambda e: forge(e.attacker, _h(e, e.attacker, x5c=["MIIB"]), C()), MalformedToken),
    "A04-jku": (
        lambda e: forge(e.attacker, _h(e, e.attacker, jku=e.server.url), C()),
        MalformedToken,
    ),
    "A04-x5u": (
        lambda e: forge(e.attacker, _h(e, e.attacker, x5u="http://169.254.169.254/"), C()),
        MalformedToken,
    ),
    "A04-attacker-key-under-real-kid": (lambda e: e.attacker.sign(C()), BadSignature),
    # A06 kid injection: only an exact lookup key
    **{
        f"A06-kid-{i}": (_signed_with_kid(kid), UnknownKey)
        for i, kid in enumerate(
            [
                "../../../../dev/null",
                "/etc/passwd",
                "' OR '1'='1",
                "x' UNION SELECT 'k'--",
                "|id",
                "k" * 4000,
                "rsa-1\x00",
                "rsа-1",  # Cyrillic a
                "RSA-1",
            ]
        )
    },
    **{
        f"A06-kid-type-{name}": (_forged_with_kid(kid), MalformedToken)
        for name, kid in _KIDS_OF_EVERY_JSON_TYPE
    },
    # A07 kid missing; kid of a key of another type
    "A07-kid-missing": (lambda e: forge(e.rsa, {"alg": "RS256"}, C()), MalformedToken),
    "A07-es256-token-with-rsa-kid": (
        lambda e: forge(e.ec, {"alg": "ES256", "kid": "rsa-1"}, C()),
        UnsupportedAlgorithm,
    ),
    # A09 psychic ECDSA
    **{
        f"A09-psychic-{name}": (_psychic(r, s), BadSignature)
        for name, r, s in [
            ("zeros", 0, 0),
            ("r-zero", 0, 1),
            ("s-zero", 1, 0),
            ("r-n", P256_N, 1),
            ("s-n", 1, P256_N),
            ("n-1", P256_N - 1, P256_N - 1),
        ]
    },
    # A10 signature stripping and reshaping
    "A10-two-segments": (lambda e: e.rsa.sign(C()).rsplit(".", 1)[0], MalformedToken),
    "A10-empty-signature": (lambda e: e.rsa.sign(C()).rsplit(".", 1)[0] + ".", BadSignature),
    "A10-signature-AA": (lambda e: e.rsa.sign(C()).rsplit(".", 1)[0] + ".AA", BadSignature),
    "A10-ecdsa-der": (
        lambda e: _sig_edit(
            e.ec.sign(C()), lambda s: encode_dss_signature(_int(s[:32]), _int(s[32:]))
        ),
        BadSignature,
    ),
    "A10-ecdsa-63-bytes": (lambda e: _sig_edit(e.ec.sign(C()), lambda s: s[:-1]), BadSignature),
    "A10-ecdsa-65-bytes": (
        lambda e: _sig_edit(e.ec.sign(C()), lambda s: s + b"\x00"),
        BadSignature,
    ),
    "A10-rsa-zero-padded": (
        lambda e: _sig_edit(e.rsa.sign(C()), lambda s: b"\x00" + s),
        BadSignature,
    ),
    "A10-rsa-truncated": (lambda e: _sig_edit(e.rsa.sign(C()), lambda s: s[1:]), BadSignature),
    "A10-rsa-sig-0": (lambda e: _sig_edit(e.rsa.sign(C()), lambda s: bytes(256)), BadSignature),
    "A10-rsa-sig-1": (
        lambda e: _sig_edit(e.rsa.sign(C()), lambda s: (1).to_bytes(256, "big")),
        BadSignature,
    ),
    "A10-rsa-sig-n": (
        lambda e: _sig_edit(
            e.rsa.sign(C()),
            lambda s: e.rsa.private.public_key().public_numbers().n.to_bytes(256, "big"),  # type: ignore[union-attr]
        ),
        BadSignature,
    ),
    "A10-eddsa-flipped": (
        lambda e: _sig_edit(e.ed.sign(C()), lambda s: bytes([s[0] ^ 1]) + s[1:]),
        BadSignature,
    ),
    # A11 crit in any form
    **{f"A11-crit-{name}": (_header_extra(extra), MalformedToken) for name, extra in _CRIT_HEADERS},
    # A12 b64:false (RFC 7797), with and without crit, raw and detached payload
    "A12-b64-false-crit": (
        lambda e: forge(e.rsa, _h(e, e.rsa, b64=False, crit=["b64"]), C()),
        MalformedToken,
    ),
    "A12-b64-false-no-crit": (lambda e: forge(e.rsa, _h(e, e.rsa, b64=False), C()), MalformedToken),
    "A12-b64-false-detached": (
        lambda e: _detach(forge(e.rsa, _h(e, e.rsa, b64=False, crit=["b64"]), C())),
        MalformedToken,
    ),
    # A13 duplicate member names (signed with the real key)
    "A13-duplicate-alg": (
        lambda e: forge(e.rsa, b'{"alg":"none","alg":"RS256","kid":"rsa-1"}', C()),
        MalformedToken,
    ),
    **{
        f"A13-duplicate-{name}": (_duplicate_claim(name), MalformedToken)
        for name in ("sub", "exp", "aud")
    },
    # A14 non-canonical base64url on a token the real key signed
    "A14-padding": (lambda e: e.rsa.sign(C()) + "==", MalformedToken),
    "A14-padding-in-header": (
        lambda e: _edit_segment(e.rsa.sign(C()), 0, lambda s: s + "="),
        MalformedToken,
    ),
    "A14-plus": (
        lambda e: _edit_segment(e.rsa.sign(C()), 2, lambda s: "+" + s[1:]),
        MalformedToken,
    ),
    "A14-slash": (
        lambda e: _edit_segment(e.rsa.sign(C()), 2, lambda s: "/" + s[1:]),
        MalformedToken,
    ),
    "A14-space": (
        lambda e: _edit_segment(e.rsa.sign(C()), 2, lambda s: s[:10] + " " + s[10:]),
        MalformedToken,
    ),
    "A14-newline": (
        lambda e: _edit_segment(e.rsa.sign(C()), 1, lambda s: s[:10] + "\n" + s[10:]),
        MalformedToken,
    ),
    "A14-question-mark": (
        lambda e: _edit_segment(e.rsa.sign(C()), 2, lambda s: s[:10] + "?" + s[10:]),
        MalformedToken,
    ),
    "A14-unused-bits": (lambda e: _non_canonical_tail(e.rsa.sign(C())), MalformedToken),
    "A14-length-1-mod-4": (
        lambda e: _edit_segment(e.rsa.sign(C()), 1, lambda s: s + "A" * ((1 - len(s)) % 4)),
        MalformedToken,
    ),
    # A15 NumericDate types (signed with the real key)
    **{
        f"A15-exp-{name}": (_raw_exp(v), cls)
        for name, v, cls in [
            ("string", b'"9999999999"', InvalidClaim),
            ("true", b"true", InvalidClaim),
            ("null", b"null", InvalidClaim),
            ("list", b"[]", InvalidClaim),
            ("object", b"{}", InvalidClaim),
            ("1e400", b"1e400", InvalidClaim),
            ("Infinity", b"Infinity", MalformedToken),
            ("NaN", b"NaN", MalformedToken),
            ("5000-digits", b"9" * 5000, MalformedToken),
            ("negative", b"-1", ExpiredToken),
        ]
    },
    "A15-nbf-NaN": (
        lambda e: forge(e.rsa, _h(e, e.rsa), _raw_claims("nbf", b"NaN")),
        MalformedToken,
    ),
    "A15-iat-far-future": (lambda e: e.rsa.sign(C(iat=10**11)), TokenNotYetValid),
    # A16 time window (leeway 30 s)
    "A16-no-exp": (lambda e: e.rsa.sign(C() | {"exp": None}), InvalidClaim),
    "A16-exp-now-minus-leeway": (lambda e: e.rsa.sign(C(exp=int(NOW) - 30)), ExpiredToken),
    "A16-exp-now-minus-leeway-minus-1": (lambda e: e.rsa.sign(C(exp=int(NOW) - 31)), ExpiredToken),
    "A16-nbf-beyond-leeway": (lambda e: e.rsa.sign(C(nbf=int(NOW) + 31)), TokenNotYetValid),
    # A17 issuer: exact string only
    **{
        f"A17-iss-{name}": (_signed_claims(iss=iss), InvalidIssuer)
        for name, iss in [
            ("other", "https://evil.test"),
            ("prefix", "https://issuer"),
            ("suffix", ISS + ".evil"),
            ("list", [ISS]),
            ("trailing-slash", ISS + "/"),
            ("case", ISS.upper()),
        ]
    },
    "A17-iss-missing": (lambda e: e.rsa.sign(C() | {"iss": None}), InvalidIssuer),
    # A18 audience
    **{
        f"A18-aud-{name}": (_signed_claims(aud=aud), InvalidAudience)
        for name, aud in [
            ("other", "https://other.test"),
            ("empty-string", ""),
            ("empty-list", []),
            ("int-element", [123]),
            ("mixed-list", [AUD, 123]),
            ("object", {"aud": AUD}),
            ("substring", AUD[:-1]),
        ]
    },
    "A18-aud-missing": (lambda e: e.rsa.sign(C() | {"aud": None}), InvalidAudience),
    # A20 wrong structure
    **{
        f"A20-{name}": (_reshaped(f), MalformedToken)
        for name, f in [
            ("four-parts", lambda t: t + ".x"),
            ("five-parts-jwe", lambda t: t + ".x.y"),
            ("six-parts", lambda t: t + ".x.y.z"),
            ("dots-only", lambda t: ".."),
            ("leading-space", lambda t: " " + t),
            ("trailing-space", lambda t: t + " "),
            ("bearer-prefix", lambda t: "Bearer " + t),
            ("empty", lambda t: ""),
        ]
    },
    # A21 JSON serialisation and polyglots
    "A21-flattened-json": (lambda e: _flattened(e.rsa.sign(C())), MalformedToken),
    "A21-polyglot": (
        lambda e: json.dumps(
            {e.rsa.sign(C()).rsplit(".", 1)[0] + ".": "", **json.loads(_flattened(e.rsa.sign(C())))}
        ),
        MalformedToken,
    ),
    # A22 header or payload that is not a UTF-8 JSON object (signed with the real key)
    **{
        f"A22-{part}-{name}": (_not_an_object(part, raw), MalformedToken)
        for part in ("header", "payload")
        for name, raw in [
            ("list", b"[]"),
            ("string", b'"s"'),
            ("null", b"null"),
            ("bad-utf8", b'{"a":"\xff"}'),
            ("bom", b"\xef\xbb\xbf{}"),
            ("utf16", '{"alg":"RS256","kid":"rsa-1"}'.encode("utf-16")),
        ]
    },
    # A23 size
    "A23-1mb-header": (
        lambda e: forge(e.rsa, _h(e, e.rsa, pad="x" * 1_000_000), C()),
        MalformedToken,
    ),
    "A23-million-dots": (lambda e: "." * 1_000_000, MalformedToken),
    "A23-deep-nesting": (
        lambda e: forge(e.rsa, _h(e, e.rsa), b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}"),
        MalformedToken,
    ),
    # A30 alg spelling
    **{
        f"A30-alg-{name}": (_alg_spelling(alg), UnsupportedAlgorithm)
        for name, alg in [
            ("lower", "rs256"),
            ("trailing-space", "RS256 "),
            ("nul", "RS256\x00"),
            ("es256k", "ES256K"),
            ("ed25519", "Ed25519"),
            ("eddsa-lower", "eddsa"),
        ]
    },
}


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _sig_edit(token: str, change: Callable[[bytes], bytes]) -> str:
    head, sig = token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    return head + "." + b64u(change(raw))


def _edit_segment(token: str, index: int, change: Callable[[str], str]) -> str:
    parts = token.split(".")
    parts[index] = change(parts[index])
    return ".".join(parts)


def _detach(token: str) -> str:
    h, _, s = token.split(".")
    return f"{h}..{s}"


def _dup_payload(name: str) -> bytes:
    body = json.dumps(C())[:-1]
    value = {"sub": '"admin"', "exp": str(int(NOW) + 10**6), "aud": '"other"'}[name]
    return f'{body}, "{name}": {value}}}'.encode()


def _raw_claims(name: str, raw_value: bytes) -> bytes:
    c = C()
    c.pop(name, None)
    return json.dumps(c)[:-1].encode() + b', "' + name.encode() + b'": ' + raw_value + b"}"


def _flattened(token: str) -> str:
    h, p, s = token.split(".")
    return json.dumps({"protected": h, "payload": p, "signature": s})


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_catalogue_is_rejected_without_io(env: Env, attack: str) -> None:
    build, expected = ATTACKS[attack]
    token = build(env)
    before = env.server.count()
    with pytest.raises(expected):
        env.verifier.verify_sync(token)
    assert env.server.count() == before  # no token ever causes a JWKS request here


def test_attack_catalogue_env_accepts_its_legit_tokens(env: Env) -> None:
    for key in (env.rsa, env.ec, env.ed):
        assert env.verifier.verify_sync(key.sign(C()))["iss"] == ISS
    assert env.verifier.verify_sync(env.rsa_any.sign(C(), alg="PS256", kid="rsa-any"))
    assert env.verifier.verify_sync(env.rsa_any.sign(C(), kid="rsa-any"))


def test_a10_ecdsa_malleated_signature_is_valid_so_never_use_sig_as_identity(env: Env) -> None:
    # (r, n - s) verifies too: this is why the token cache is keyed by the whole token and a token's
    # identity is jti, never its signature bytes.
    token = env.ec.sign(C(jti="j-mal"))
    sig = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    twin = _swap_sig(token, r.to_bytes(32, "big") + (P256_N - s).to_bytes(32, "big"))
    assert env.verifier.verify_sync(token) == env.verifier.verify_sync(twin)


# --- A25-A27: key-set content -----------------------------------------------------------------------


def _serve_with(server: JWKSServer, good: SigningKey, *extra: dict[str, Any]) -> None:
    doc = jwks(good)
    doc["keys"].extend(extra)
    server.serve(doc)


@pytest.mark.parametrize(
    "case",
    [
        "A25-duplicate-kid",
        "A26-use-enc",
        "A26-key-ops-encrypt",
        "A26-key-ops-sign-only",
        "A27-rsa-1024",
        "A27-ec-point-off-curve",
        "A27-private-d",
        "A27-oct-key",
        "A27-rsa-exponent-1",
    ],
)
def test_unusable_keys_in_the_jwks_never_verify(jwks_server: JWKSServer, case: str) -> None:
    good = rsa_key("good", slot=2)
    victim = rsa_key("victim")
    vjwk = victim.public_jwk()
    extra: list[dict[str, Any]]
    token = victim.sign(valid_claims())
    if case == "A25-duplicate-kid":
        extra = [vjwk, rsa_key("x", slot=1).public_jwk(kid="victim")]
    elif case == "A26-use-enc":
        extra = [vjwk | {"use": "enc"}]
    elif case == "A26-key-ops-encrypt":
        extra = [vjwk | {"key_ops": ["encrypt"]}]
    elif case == "A26-key-ops-sign-only":
        extra = [{k: v for k, v in vjwk.items() if k != "use"} | {"key_ops": ["sign"]}]
    elif case == "A27-rsa-1024":
        small = rsa_key("victim", bits=1024)
        extra, token = [small.public_jwk()], small.sign(valid_claims())
    elif case == "A27-ec-point-off-curve":
        eck = ec_key("victim")
        bad = eck.public_jwk()
        bad["y"] = bad["x"]
        extra, token = [bad], eck.sign(valid_claims())
    elif case == "A27-private-d":
        assert isinstance(victim.private, rsa.RSAPrivateKey)
        d = victim.private.private_numbers().d
        extra = [vjwk | {"d": b64u(d.to_bytes(256, "big"))}]
    elif case == "A27-oct-key":
        extra = [{"kty": "oct", "kid": "victim", "k": b64u(b"secret" * 8), "alg": "HS256"}]
        token = _hmac_token({"alg": "HS256", "kid": "victim"}, valid_claims(), b"secret" * 8)
    else:  # A27-rsa-exponent-1
        extra = [vjwk | {"e": "AQ"}]
    _serve_with(jwks_server, good, *extra)
    with make_verifier(jwks_server.url, algorithms=ALL_ALGS) as v:
        v.keyset(ISS).refresh_sync()
        with pytest.raises((UnknownKey, UnsupportedAlgorithm)):
            v.verify_sync(token)
        assert v.verify_sync(good.sign(valid_claims()))  # the set itself stays usable


def test_an_app_mutating_nested_claims_never_changes_what_later_requests_see(
    jwks_server: JWKSServer,
) -> None:
    key = rsa_key("nested")
    jwks_server.serve(jwks(key))
    token = key.sign(claims(iss=ISS, aud=AUD, metadata={"plan": "free", "tags": ["a"]}))
    with Verifier(IssuerConfig(issuer=ISS, jwks_url=jwks_server.url, audience=AUD)) as verifier:
        first = verifier.verify_sync(token)  # a cache miss: verified, then cached
        first["metadata"]["plan"] = "enterprise"
        first["metadata"]["tags"].append("admin")
        second = verifier.verify_sync(token)  # a cache hit
        assert second["metadata"] == {"plan": "free", "tags": ["a"]}
        second["metadata"]["tags"].append("admin")
        assert verifier.verify_sync(token)["metadata"] == {"plan": "free", "tags": ["a"]}
        assert verifier.metrics.get("token_cache_hits") == 2
