from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from keyswap.errors import ConfigError
from keyswap.gateway.keymaterial import (
    SIGNING_ALGORITHMS,
    decrypt_private_key,
    encrypt_private_key,
    generate_private_key,
    public_jwk,
    thumbprint,
)
from keyswap.verifier.jwk import parse_jwk

KEY = b"k" * 32

# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
        "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n9"
        "1CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_the_thumbprint_matches_the_rfc_7638_example() -> None:
    assert thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT


def test_the_thumbprint_ignores_optional_members() -> None:
    bare = {"kty": "RSA", "n": RFC7638_JWK["n"], "e": "AQAB"}
    assert thumbprint(bare) == thumbprint({**bare, "use": "sig", "d": "private"})


@pytest.mark.parametrize(
    "jwk",
    [{"kty": "oct", "k": "x"}, {"kty": "RSA", "n": "x"}, {"kty": "EC", "crv": "P-256", "x": 1}],
)
def test_a_thumbprint_needs_the_required_members(jwk: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="members"):
        thumbprint(jwk)


@pytest.mark.parametrize(
    ("alg", "members"),
    [
        ("ES256", {"kty", "crv", "x", "y"}),
        ("EdDSA", {"kty", "crv", "x"}),
        ("RS256", {"kty", "n", "e"}),
    ],
)
def test_public_jwks_carry_public_material_kid_alg_and_use_only(
    alg: str, members: set[str]
) -> None:
    jwk = public_jwk(generate_private_key(alg), alg)
    assert set(jwk) == members | {"kid", "alg", "use"}
    assert jwk["kid"] == thumbprint(jwk)
    assert (jwk["alg"], jwk["use"]) == (alg, "sig")
    key = parse_jwk(jwk)  # the verifier accepts what the gateway publishes
    assert key.kid == jwk["kid"]
    assert alg in key.algorithms


def test_rs256_keys_are_rsa_2048() -> None:
    private = generate_private_key("RS256")
    assert private.key_size == 2048  # type: ignore[union-attr]


def test_an_unsupported_algorithm_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="RS256, ES256, EdDSA"):
        generate_private_key("HS256")
    assert SIGNING_ALGORITHMS == ("RS256", "ES256", "EdDSA")


def test_private_keys_round_trip_through_encryption_and_are_not_in_clear() -> None:
    private = generate_private_key("ES256")
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    blob = encrypt_private_key(KEY, "kid-1", private)
    assert der not in blob
    assert der[-32:] not in blob
    restored = decrypt_private_key(KEY, "kid-1", blob)
    assert (
        restored.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        == der
    )
    assert encrypt_private_key(KEY, "kid-1", private) != blob  # a fresh nonce every time


@pytest.mark.parametrize(
    ("key", "kid", "mangle"),
    [
        (b"w" * 32, "kid-1", False),  # another secret
        (KEY, "kid-2", False),  # a blob moved to another kid
        (KEY, "kid-1", True),  # a damaged blob
    ],
)
def test_a_blob_that_does_not_authenticate_is_a_config_error(
    key: bytes, kid: str, mangle: bool
) -> None:
    blob = encrypt_private_key(KEY, "kid-1", generate_private_key("EdDSA"))
    if mangle:
        blob = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ConfigError, match="does not decrypt"):
        decrypt_private_key(key, kid, blob)


def test_a_blob_of_an_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown format"):
        decrypt_private_key(KEY, "kid-1", b"\x02" + b"0" * 40)
