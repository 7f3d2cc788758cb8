"""Secrets inside webhook events, encrypted while the event waits in the outbox.

An event's payload is stored (``webhook_events.payload``) until it is delivered, and kept after. A
value that must reach the consumer but never sit in the database in clear -- the new key of a leaked
key's roll (``key.rolled``'s ``data.new_key``) -- is stored as ``{"$sealed": "<base64>"}``: AES-256-GCM
under a key derived (HKDF-SHA-256) from the server secret's webhook subkey, bound to the consumer's id
as associated data. The dispatcher (:mod:`keyswap.webhooks.dispatch`) calls :func:`unseal` on the
payload just before signing and sending it; nothing else ever opens it (listings show the sealed form).
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyswap.errors import ConfigError
from keyswap.gateway.secret import ServerSecret

__all__ = ["SEALED", "is_sealed", "seal", "unseal"]

#: The member name of a sealed value.
SEALED = "$sealed"
_VERSION = b"\x01"
_NONCE_SIZE = 12
_MAX_DEPTH = 32


def _key(webhook_key: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"keyswap webhook payload sealing"
    ).derive(webhook_key)


def _associated_data(consumer_id: int | str) -> bytes:
    return _VERSION + b"keyswap-webhook-payload:" + str(int(consumer_id)).encode("ascii")


def seal(secret: ServerSecret, consumer_id: int | str, value: str) -> dict[str, str]:
    """``{"$sealed": ...}``: ``value`` encrypted for the events of ``consumer_id``."""
    nonce = os.urandom(_NONCE_SIZE)
    box = AESGCM(_key(secret.webhook_secret_encryption_key)).encrypt(
        nonce, value.encode("utf-8"), _associated_data(consumer_id)
    )
    return {SEALED: base64.b64encode(_VERSION + nonce + box).decode("ascii")}


def is_sealed(value: Any) -> bool:
    """True for a ``{"$sealed": "..."}`` object."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(SEALED), str)


def unseal(secret: ServerSecret | bytes, consumer_id: int | str, payload: Any) -> Any:
    """A copy of ``payload`` with every sealed value opened (what the dispatcher sends).
    ``secret``: the server secret, or its webhook subkey
    (:attr:`~keyswap.gateway.secret.ServerSecret.webhook_secret_encryption_key`).

    Raises:
        ConfigError: a sealed value that does not open (wrong server secret, another consumer's
            event, a damaged row).
    """
    webhook_key = secret if isinstance(secret, bytes) else secret.webhook_secret_encryption_key
    return _open(_key(webhook_key), _associated_data(consumer_id), payload, 0)


def _open(key: bytes, associated: bytes, value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return value
    if is_sealed(value):
        try:
            blob = base64.b64decode(value[SEALED], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("a sealed webhook value is damaged") from None
        if blob[:1] != _VERSION or len(blob) < 1 + _NONCE_SIZE + 16:
            raise ConfigError("a sealed webhook value has an unknown format")
        nonce, box = blob[1 : 1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE :]
        try:
            return AESGCM(key).decrypt(nonce, box, associated).decode("utf-8")
        except InvalidTag:
            raise ConfigError(
                "a sealed webhook value does not open: wrong server secret or another consumer's"
            ) from None
    if isinstance(value, dict):
        return {name: _open(key, associated, item, depth + 1) for name, item in value.items()}
    if isinstance(value, list):
        return [_open(key, associated, item, depth + 1) for item in value]
    return value
