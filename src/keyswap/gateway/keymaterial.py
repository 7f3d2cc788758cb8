"""Signing-key material: generation per algorithm, public JWKs, RFC 7638 thumbprints, encryption at rest.

Private keys are stored as ``0x01 || nonce(12) || AES-256-GCM(PKCS8 DER)``; the associated data binds the
blob to its format version and ``kid``, so a blob moved to another row does not decrypt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyswap.errors import ConfigError
from keyswap.verifier.jws import b64url_encode

__all__ = [
    "SIGNING_ALGORITHMS",
    "PrivateKey",
    "check_algorithm",
    "decrypt_private_key",
    "encrypt_private_key",
    "generate_private_key",
    "public_jwk",
    "public_members",
    "thumbprint",
]

#: Algorithms the keyring can create keys for: RSA-2048, P-256, Ed25519.
SIGNING_ALGORITHMS = ("RS256", "ES256", "EdDSA")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# RFC 7638 §3.2: the required members of each key type, the only ones hashed.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
_BLOB_VERSION = b"\x01"
_NONCE_SIZE = 12


def check_algorithm(alg: str) -> str:
    """Return ``alg`` if the keyring can create keys for it.

    Raises:
        ConfigError: any other algorithm.
    """
    if alg not in SIGNING_ALGORITHMS:
        raise ConfigError(
            f"unsupported signing algorithm {alg!r}; choose one of {', '.join(SIGNING_ALGORITHMS)}"
        )
    return alg


def generate_private_key(alg: str) -> PrivateKey:
    """A new private key for ``alg``: RSA-2048 (RS256), P-256 (ES256) or Ed25519 (EdDSA).

    Raises:
        ConfigError: unsupported algorithm.
    """
    check_algorithm(alg)
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def _uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(size, "big"))


def public_members(private_key: PrivateKey) -> dict[str, str]:
    """``kty`` and the public key material of ``private_key`` as JWK members."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.public_key().public_numbers()
        return {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        point = private_key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _uint(point.x, 32), "y": _uint(point.y, 32)}
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of a public or private JWK.

    Raises:
        ValueError: unknown ``kty`` or a required member is missing.
    """
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or any(not isinstance(jwk.get(name), str) for name in members):
        raise ValueError("the JWK lacks the members its thumbprint needs")
    canonical = json.dumps(
        {name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True
    )
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def public_jwk(private_key: PrivateKey, alg: str) -> dict[str, str]:
    """The public JWK published for ``private_key``: material, ``kid`` (thumbprint), ``alg``, ``use``."""
    jwk = public_members(private_key)
    jwk.update(kid=thumbprint(jwk), alg=alg, use="sig")
    return jwk


def _associated_data(kid: str) -> bytes:
    return _BLOB_VERSION + b"keyswap-signing-key:" + kid.encode("utf-8")


def encrypt_private_key(key: bytes, kid: str, private_key: PrivateKey) -> bytes:
    """AES-256-GCM encrypt the PKCS8 DER of ``private_key`` under ``key``, bound to ``kid``."""
    der = private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    nonce = os.urandom(_NONCE_SIZE)
    return _BLOB_VERSION + nonce + AESGCM(key).encrypt(nonce, der, _associated_data(kid))


def decrypt_private_key(key: bytes, kid: str, blob: bytes) -> PrivateKey:
    """Decrypt a blob from :func:`encrypt_private_key`.

    Raises:
        ConfigError: wrong secret, a blob of another kid, or a damaged blob.
    """
    if blob[:1] != _BLOB_VERSION or len(blob) < 1 + _NONCE_SIZE + 16:
        raise ConfigError(f"the private part of signing key {kid} has an unknown format")
    nonce, ciphertext = blob[1 : 1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE :]
    try:
        der = AESGCM(key).decrypt(nonce, ciphertext, _associated_data(kid))
    except InvalidTag:
        raise ConfigError(
            f"the private part of signing key {kid} does not decrypt: wrong server secret or damaged row"
        ) from None
    loaded = serialization.load_der_private_key(der, password=None)
    if not isinstance(
        loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ConfigError(f"signing key {kid} is of an unsupported type")
    return loaded
