"""Published test vectors: Wycheproof (JSON web crypto + raw primitives), RFC 7515/7520/8037 examples.

The JOSE vectors sign text payloads (``foo``...), not JWT claim sets, so "valid" is asserted at the
signature layer (strict parse + key lookup + :func:`verify_signature`), exactly what the Verifier runs
before its claim checks. Every vector that must be refused is also pushed through a real Verifier.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from keyswap.errors import InvalidToken, MalformedToken, UnknownKey, UnsupportedAlgorithm
from keyswap.verifier.jwk import VerificationKey, parse_jwk, parse_jwks
from keyswap.verifier.jws import (
    SUPPORTED_ALGORITHMS,
    b64url_decode,
    decode_header,
    parse_json_object,
    split_compact,
    verify_signature,
)
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.jwks_server import JWKSServer, running_jwks_server
from tests.support.keys import b64u, jwks, rsa_key

VECTORS = Path(__file__).resolve().parent.parent / "fixtures" / "vectors"
WYCHEPROOF = VECTORS / "wycheproof"
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


@cache
def load(path: Path) -> Any:
    return json.loads(path.read_text())


def signature_layer(
    token: Any,
    keys: Mapping[str, VerificationKey],
    algorithms: frozenset[str] = SUPPORTED_ALGORITHMS,
) -> bytes:
    """What the Verifier does up to and including the signature check; returns the payload bytes."""
    h, p, s = split_compact(token)
    _, alg, kid = decode_header(h, algorithms=algorithms)
    payload = b64url_decode(p)
    key = keys.get(kid)
    if key is None:
        raise UnknownKey("no key with this kid")
    verify_signature(key, alg, f"{h}.{p}".encode(), b64url_decode(s))
    return payload


def lenient_alg(token: Any) -> str | None:
    """The header alg as a lenient reader sees it (to compute the expected outcome independently)."""
    try:
        header = token.split(".")[0]
        return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["alg"]  # type: ignore[no-any-return]
    except Exception:
        return None


def group_keys(group: dict[str, Any]) -> dict[str, VerificationKey]:
    """The group's public key(s) as a JWKS; HS-only groups (private oct keys) give no usable key."""
    public = group.get("public")
    if public is None:
        document = group.get("private", {"keys": []})
        if "keys" not in document:
            document = {"keys": [document]}
    else:
        document = public if "keys" in public else {"keys": [public]}
    return parse_jwks(document)[0]


# --- Wycheproof json_web_signature_test.json ------------------------------------------------------------

# InvalidCharacterInserted*: marked valid upstream, a strict base64url decoder refuses them.
AMBIGUOUS = {372, 373}


def jws_cases() -> Iterator[Any]:
    data = load(WYCHEPROOF / "json_web_signature_test.json")
    for group in data["testGroups"]:
        for test in group["tests"]:
            yield pytest.param(group, test, id=f"tc{test['tcId']}-{test['comment']}")


@pytest.mark.parametrize(("group", "test"), list(jws_cases()))
def test_wycheproof_json_web_signature(group: dict[str, Any], test: dict[str, Any]) -> None:
    token = test["jws"]
    keys = group_keys(group)
    expected = (
        test["result"] == "valid" and lenient_alg(token) in SUPPORTED_ALGORITHMS and bool(keys)
    )
    if test["tcId"] in AMBIGUOUS:
        expected = False
    if expected:
        assert signature_layer(token, keys) is not None
    else:
        with pytest.raises(InvalidToken):
            signature_layer(token, keys)


def test_wycheproof_signature_vectors_accept_something_of_every_supported_algorithm() -> None:
    accepted: set[str] = set()
    for param in jws_cases():
        group, test = param.values
        try:
            signature_layer(test["jws"], group_keys(group))
        except InvalidToken:
            continue
        accepted.add(str(lenient_alg(test["jws"])))
    assert accepted == {"RS256", "PS256", "ES256"}  # the file has no EdDSA group


def test_wycheproof_signature_vectors_respect_the_allow_list() -> None:
    only_rs256 = frozenset({"RS256"})
    for param in jws_cases():
        group, test = param.values
        if lenient_alg(test["jws"]) != "RS256":
            with pytest.raises(InvalidToken):
                signature_layer(test["jws"], group_keys(group), only_rs256)


# --- Wycheproof json_web_key_test.json --------------------------------------------------------------------


def jwk_cases() -> Iterator[Any]:
    data = load(WYCHEPROOF / "json_web_key_test.json")
    for group in data["testGroups"]:
        for test in group["tests"]:
            yield pytest.param(group, test, id=f"tc{test['tcId']}-{test['comment']}")


@pytest.mark.parametrize(("group", "test"), list(jwk_cases()))
def test_wycheproof_json_web_key(group: dict[str, Any], test: dict[str, Any]) -> None:
    keys = group_keys(group)
    # The only key sets here that keyswap may use are the plain RS256 one (tc5) and the EC key of
    # the mixed set (tc1: its oct key is skipped, and tc1's token is HS256, so it is refused anyway).
    if test["result"] == "valid" and lenient_alg(test["jws"]) in SUPPORTED_ALGORITHMS:
        assert signature_layer(test["jws"], keys) == b"foo"
    else:
        with pytest.raises(InvalidToken):
            signature_layer(test["jws"], keys)


@pytest.mark.parametrize(
    ("comment", "reason"),
    [
        ("jws_rsa_roca_key", "ROCA"),
        ("keysize_too_small", "2048"),
        ("exponentOne", "exponent"),
        ("wrong_algorithm", "alg"),
        ("invalid_algorithm", "alg"),
        ("invalid_use", "use"),
        ("invalid_point", "curve"),
        ("wrong_curve", "curve"),
        ("wrong_kty", "'n'"),
        ("invalid_aes_gcm_key", "oct"),
        ("jws_keyset", "oct"),
    ],
)
def test_wycheproof_bad_keys_are_skipped_with_the_right_reason(comment: str, reason: str) -> None:
    data = load(WYCHEPROOF / "json_web_key_test.json")
    group = next(g for g in data["testGroups"] if g["comment"] == comment)
    document = group.get("public") or group["private"]
    keys, skipped = parse_jwks(document)
    assert keys == {}
    assert skipped
    assert all(reason in s.reason for s in skipped)


def test_wycheproof_private_keysets_never_yield_a_key() -> None:
    data = load(WYCHEPROOF / "json_web_key_test.json")
    for group in data["testGroups"]:
        private = group["private"]
        keys, _ = parse_jwks(private if "keys" in private else {"keys": [private]})
        usable = [
            k for k in private.get("keys", [private]) if not any(m in k for m in PRIVATE_MEMBERS)
        ]
        assert len(keys) <= len(usable)


# --- Wycheproof raw primitives through verify_signature ---------------------------------------------------


def _ec_jwk(group: dict[str, Any]) -> dict[str, Any]:
    if "publicKeyJwk" in group:
        return dict(group["publicKeyJwk"])
    pk = group["publicKey"]
    x, y = (b64u(int(pk[c], 16).to_bytes(32, "big")) for c in ("wx", "wy"))
    return {"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "none"}


PRIMITIVES = [
    ("ecdsa_secp256r1_sha256_p1363_test.json", "ES256", _ec_jwk),
    ("ed25519_test.json", "EdDSA", lambda g: dict(g["publicKeyJwk"])),
    ("rsa_pss_2048_sha256_mgf1_32_test.json", "PS256", lambda g: dict(g["publicKeyJwk"])),
    ("rsa_signature_2048_sha256_test.json", "RS256", lambda g: dict(g["keyJwk"])),
]


def primitive_cases() -> Iterator[Any]:
    for filename, alg, jwk_of in PRIMITIVES:
        for group in load(WYCHEPROOF / filename)["testGroups"]:
            jwk = jwk_of(group)
            for test in group["tests"]:
                yield pytest.param(
                    alg, jwk, test, id=f"{alg}-tc{test['tcId']}-{test['comment'][:40]}"
                )


@pytest.mark.parametrize(("alg", "jwk", "test"), list(primitive_cases()))
def test_wycheproof_primitive(alg: str, jwk: dict[str, Any], test: dict[str, Any]) -> None:
    key = parse_jwk(jwk)
    msg, sig = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
    if test["result"] == "valid":
        verify_signature(key, alg, msg, sig)
    elif test["result"] == "invalid":
        with pytest.raises(InvalidToken):
            verify_signature(key, alg, msg, sig)
    else:  # "acceptable": either outcome, but only ever an InvalidToken
        with contextlib.suppress(InvalidToken):
            verify_signature(key, alg, msg, sig)


# --- RFC 7515 / 7797 / 8037 and the JOSE cookbook (RFC 7520) ---------------------------------------------


def public_only(jwk: dict[str, Any], kid: str = "rfc") -> dict[str, Any]:
    public = {k: v for k, v in jwk.items() if k not in PRIVATE_MEMBERS}
    return {"kid": kid} | public


def rfc_signature_layer(token: str, jwk: dict[str, Any]) -> None:
    """The RFC examples carry no kid (keyswap requires one), so the key is passed directly."""
    h, p, s = split_compact(token)
    header = parse_json_object(b64url_decode(h), "header")
    alg = header["alg"]
    if alg not in SUPPORTED_ALGORITHMS:
        raise UnsupportedAlgorithm("algorithm not allowed")
    verify_signature(parse_jwk(public_only(jwk)), alg, f"{h}.{p}".encode(), b64url_decode(s))


def rfc_examples() -> list[Any]:
    data = load(VECTORS / "rfc" / "rfc-jws-examples.json")
    return [pytest.param(e, id=e["id"]) for e in data["examples"]]


@pytest.mark.parametrize("example", rfc_examples())
def test_rfc_examples_at_the_signature_layer(example: dict[str, Any]) -> None:
    token = example.get("jws") or example["jws_detached"]
    if example["alg"] in ("RS256", "ES256", "EdDSA"):
        rfc_signature_layer(token, example["key"])
        tampered = token[: token.rindex(".") - 2] + "xx" + token[token.rindex(".") :]
        with pytest.raises(InvalidToken):
            rfc_signature_layer(tampered, example["key"])
    else:  # HS256, none, b64:false: refused
        with pytest.raises(InvalidToken):
            rfc_signature_layer(token, example["key"] or {"kty": "oct", "k": "AA"})


COOKBOOK = VECTORS / "jose-cookbook"


@pytest.mark.parametrize(
    ("path", "valid"),
    [
        ("jws/4_1.rsa_v15_signature.json", True),  # RS256
        ("curve25519/jws.json", True),  # EdDSA (RFC 8037 A.4)
        ("jws/4_2.rsa-pss_signature.json", False),  # PS384
        ("jws/4_3.ecdsa_signature.json", False),  # ES512
        ("jws/4_4.hmac-sha2_integrity_protection.json", False),  # HS256
    ],
)
def test_jose_cookbook_signatures(path: str, valid: bool) -> None:
    vector = load(COOKBOOK / path)
    token, jwk = vector["output"]["compact"], vector["input"]["key"]
    if valid:
        rfc_signature_layer(token, jwk)
    else:
        with pytest.raises(InvalidToken):
            rfc_signature_layer(token, jwk)
        keys, _ = parse_jwks({"keys": [public_only(jwk, jwk.get("kid", "rfc"))]})
        with pytest.raises(InvalidToken):
            signature_layer(token, keys)


def test_cookbook_rs256_verifies_with_its_kid_through_the_strict_header_path() -> None:
    vector = load(COOKBOOK / "jws/4_1.rsa_v15_signature.json")
    jwk = vector["input"]["key"]
    keys, _ = parse_jwks({"keys": [public_only(jwk, jwk["kid"])]})
    assert signature_layer(vector["output"]["compact"], keys).startswith(
        b"It\xe2\x80\x99s a dangerous"
    )


# --- through a real Verifier: everything here is refused, and never causes a JWKS request ---------------


@pytest.fixture(scope="module")
def strict_verifier() -> Iterator[tuple[Verifier, JWKSServer]]:
    with running_jwks_server() as server:
        server.serve(jwks(rsa_key("kid-rsa-sign")))
        config = IssuerConfig(
            "joe", server.url, algorithms=tuple(SUPPORTED_ALGORITHMS), jwks_cooldown=3600
        )
        verifier = Verifier(config, clock=lambda: 1_300_819_380 - 100)
        verifier.keyset("joe").refresh_sync()
        yield verifier, server
        verifier.close()


def jwe_tokens() -> list[Any]:
    data = load(WYCHEPROOF / "json_web_encryption_test.json")
    params = [
        pytest.param(t["jwe"], id=f"wycheproof-tc{t['tcId']}")
        for g in data["testGroups"]
        for t in g["tests"]
    ]
    for path in sorted((COOKBOOK / "jwe").glob("*.json")):
        params.append(pytest.param(load(path)["output"]["compact"], id=f"cookbook-{path.stem}"))
    return params


@pytest.mark.parametrize("token", jwe_tokens())
def test_every_jwe_is_refused_without_decryption_or_io(
    strict_verifier: tuple[Verifier, JWKSServer], token: Any
) -> None:
    verifier, server = strict_verifier
    before = server.count()
    with pytest.raises(InvalidToken):
        verifier.verify_sync(token)
    assert server.count() == before


def test_five_segment_jwe_is_named_as_such(strict_verifier: tuple[Verifier, JWKSServer]) -> None:
    vector = load(COOKBOOK / "jwe/5_2.key_encryption_using_rsa-oaep_with_aes-gcm.json")
    token = vector["output"]["compact"]
    with pytest.raises(MalformedToken, match="JWE"):
        strict_verifier[0].verify_sync(token)


@pytest.mark.parametrize("example", rfc_examples())
def test_rfc_examples_are_refused_by_the_verifier(
    strict_verifier: tuple[Verifier, JWKSServer], example: dict[str, Any]
) -> None:
    # No kid (keyswap requires one), HS256/none/b64:false refused, and no sub: never accepted.
    token = example.get("jws") or example["jws_detached"]
    with pytest.raises(InvalidToken):
        strict_verifier[0].verify_sync(token)
