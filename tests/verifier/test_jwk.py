from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa

from keyswap.errors import JWKSFetchError
from keyswap.verifier.jwk import KeySkippedError, parse_jwk, parse_jwks
from tests.support.keys import TestKey as SigningKey
from tests.support.keys import b64u, ec_key, ed_key, jwks, rsa_key


def skip_reason(jwk: dict[str, Any]) -> str:
    with pytest.raises(KeySkippedError) as info:
        parse_jwk(jwk)
    return info.value.reason


@pytest.mark.parametrize(
    ("key", "algorithms", "size"),
    [
        (rsa_key(), {"RS256"}, 256),
        (rsa_key(alg="PS256"), {"PS256"}, 256),
        (ec_key(), {"ES256"}, 64),
        (ed_key(), {"EdDSA"}, 64),
    ],
    ids=["RS256", "PS256", "ES256", "EdDSA"],
)
def test_supported_keys_parse_into_prepared_keys(
    key: SigningKey, algorithms: set[str], size: int
) -> None:
    vkey = parse_jwk(key.public_jwk())
    assert vkey.kid == key.kid
    assert vkey.algorithms == algorithms
    assert vkey.signature_size == size


def test_rsa_key_without_alg_allows_rs256_and_ps256() -> None:
    assert parse_jwk(rsa_key().public_jwk(alg=None)).algorithms == {"RS256", "PS256"}


def test_rsa_4096_key_has_a_512_byte_signature() -> None:
    assert parse_jwk(rsa_key(bits=4096).public_jwk()).signature_size == 512


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"kid": None}, "kid"),
        ({"kid": 7}, "kid"),
        ({"kid": ""}, "kid"),
        ({"use": "enc"}, "use"),
        ({"key_ops": ["encrypt"]}, "key_ops"),
        ({"key_ops": ["sign"]}, "key_ops"),
        ({"key_ops": "verify"}, "key_ops"),
        ({"d": "AQAB"}, "private"),
        ({"p": "AQAB"}, "private"),
        ({"q": "AQAB"}, "private"),
        ({"k": "AQAB"}, "private"),
        ({"alg": "RS384"}, "alg"),
        ({"alg": "HS256"}, "alg"),
        ({"alg": "ES256"}, "alg"),
        ({"alg": 1}, "alg"),
        ({"e": "AQ"}, "exponent"),  # e = 1
        ({"e": "Ag"}, "exponent"),  # e = 2
        ({"e": "AQA"}, "exponent"),  # e = 256, even
        ({"n": "AQAB=="}, "base64url"),
        ({"n": 5}, "'n'"),
        ({"e": None}, "'e'"),
        ({"kty": "RSA2"}, "kty"),
        ({"kty": None}, "kty"),
    ],
)
def test_unusable_rsa_jwks_are_skipped_with_a_reason(
    overrides: dict[str, Any], reason: str
) -> None:
    assert reason in skip_reason(rsa_key().public_jwk(**overrides))


def test_key_ops_with_verify_is_accepted() -> None:
    assert parse_jwk(rsa_key().public_jwk(key_ops=["verify"])).kid == "rsa-1"


def test_rsa_1024_key_is_skipped() -> None:
    assert "2048" in skip_reason(rsa_key(bits=1024).public_jwk())


def test_oct_keys_are_skipped() -> None:
    assert "oct" in skip_reason({"kty": "oct", "kid": "h", "k": "c2VjcmV0"})


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()], ids=lambda c: c.name)
def test_ec_curves_other_than_p256_are_skipped(curve: ec.EllipticCurve) -> None:
    jwk = SigningKey(ec.generate_private_key(curve), "ES256", "ec").public_jwk(alg=None)
    assert "curve" in skip_reason(jwk)


@pytest.mark.parametrize("crv", ["secp256k1", "p-256", "P-256 ", None])
def test_curve_names_are_exact(crv: object) -> None:
    assert "curve" in skip_reason(ec_key().public_jwk(crv=crv) | {"crv": crv})


def test_ec_point_off_the_curve_is_skipped() -> None:
    jwk = ec_key().public_jwk()
    y = bytearray(jwk["y"].encode())
    y[5] = ord("A") if y[5] != ord("A") else ord("B")
    jwk["y"] = y.decode()
    assert "curve" in skip_reason(jwk)


def test_ec_coordinates_of_the_wrong_length_are_skipped() -> None:
    jwk = ec_key().public_jwk()
    jwk["x"] = b64u(b"\x00" * 31)
    assert "32 bytes" in skip_reason(jwk)


def test_ed448_and_x25519_keys_are_skipped() -> None:
    from cryptography.hazmat.primitives import serialization

    raw = (
        ed448.Ed448PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert "curve" in skip_reason({"kty": "OKP", "crv": "Ed448", "kid": "e", "x": b64u(raw)})
    assert "curve" in skip_reason({"kty": "OKP", "crv": "X25519", "kid": "e", "x": b64u(raw[:32])})


def test_ed25519_key_of_the_wrong_length_is_skipped() -> None:
    assert "32 bytes" in skip_reason(
        {"kty": "OKP", "crv": "Ed25519", "kid": "e", "x": b64u(b"1" * 31)}
    )


def test_ed25519_key_with_es256_alg_is_skipped() -> None:
    assert "alg" in skip_reason(ed_key().public_jwk(alg="ES256"))


def test_private_jwk_is_skipped_even_when_it_would_verify() -> None:
    key = rsa_key()
    assert isinstance(key.private, rsa.RSAPrivateKey)
    d = key.private.private_numbers().d
    assert "private" in skip_reason(key.public_jwk(d=b64u(d.to_bytes(256, "big"))))


def test_non_object_entry_is_skipped() -> None:
    assert "object" in skip_reason(["kty", "RSA"])  # type: ignore[arg-type]


# --- JWKS documents -------------------------------------------------------------------------------


def test_parse_jwks_maps_kids_to_keys_and_reports_skipped_ones() -> None:
    doc = jwks(rsa_key("a"), ec_key("b"), ed_key("c"))
    doc["keys"].append(rsa_key("d").public_jwk(use="enc"))
    doc["keys"].append({"kty": "oct", "kid": "e", "k": "c2VjcmV0"})
    doc["keys"].append("junk")
    keys, skipped = parse_jwks(doc)
    assert sorted(keys) == ["a", "b", "c"]
    assert [(s.kid, s.reason) for s in skipped] == [
        ("d", "use is not 'sig'"),
        ("e", "symmetric (oct) keys are not used"),
        (None, "entry is not a JSON object"),
    ]


def test_duplicate_kid_matches_nothing_and_is_reported() -> None:
    doc = jwks(rsa_key("same"), ec_key("same"), ed_key("other"))
    keys, skipped = parse_jwks(doc)
    assert sorted(keys) == ["other"]
    assert [(s.kid, s.reason) for s in skipped] == [("same", "duplicate kid")] * 2


def test_duplicate_kid_counts_even_when_the_twin_is_unusable() -> None:
    doc = jwks(rsa_key("same"))
    doc["keys"].append(rsa_key("same", slot=1).public_jwk(use="enc"))
    keys, _ = parse_jwks(doc)
    assert keys == {}


def test_empty_key_list_is_a_valid_empty_set() -> None:
    assert parse_jwks({"keys": []}) == ({}, [])


@pytest.mark.parametrize(
    "document", [{}, {"keys": "x"}, {"keys": {}}, [], "keys", None, {"keys": None}]
)
def test_document_that_is_not_a_jwks_raises_fetch_error(document: Any) -> None:
    with pytest.raises(JWKSFetchError):
        parse_jwks(document)
