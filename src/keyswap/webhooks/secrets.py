"""Webhook secrets: ``whsec_`` + base64 of 32 random bytes (the Standard Webhooks form), kept only
encrypted with AES-256-GCM under a key derived from the server secret
(:attr:`keyswap.gateway.secret.ServerSecret.webhook_secret_encryption_key`), bound to the consumer's id
as associated data (a blob copied to another consumer's row does not decrypt)."""

from __future__ import annotations

import base64
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyswap.errors import ConfigError

__all__ = ["SECRET_PREFIX", "decrypt_secret", "encrypt_secret", "generate_secret"]

#: What every webhook secret starts with.
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
_VERSION = b"\x01"
_NONCE_SIZE = 12


def generate_secret() -> str:
    """A new random secret: ``whsec_`` + base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _associated_data(consumer_id: int) -> bytes:
    return _VERSION + b"keyswap-webhook-secret:" + str(consumer_id).encode("ascii")


def encrypt_secret(key: bytes, consumer_id: int, secret: str) -> bytes:
    """AES-256-GCM encrypt ``secret`` under ``key``, bound to ``consumer_id``."""
    nonce = os.urandom(_NONCE_SIZE)
    sealed = AESGCM(key).encrypt(nonce, secret.encode("utf-8"), _associated_data(consumer_id))
    return _VERSION + nonce + sealed


def decrypt_secret(key: bytes, consumer_id: int, blob: bytes) -> str:
    """Decrypt a blob from :func:`encrypt_secret`.

    Raises:
        ConfigError: wrong server secret, a blob of another consumer, or a damaged blob.
    """
    if blob[:1] != _VERSION or len(blob) < 1 + _NONCE_SIZE + 16:
        raise ConfigError("a webhook secret in the database has an unknown format")
    nonce, sealed = blob[1 : 1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE :]
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, _associated_data(consumer_id))
    except InvalidTag:
        raise ConfigError(
            "a webhook secret does not decrypt: wrong server secret or damaged row"
        ) from None
    return plain.decode("utf-8")
