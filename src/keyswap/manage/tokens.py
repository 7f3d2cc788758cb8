"""Admin tokens: the credentials of the management plane (``keyswap admin-tokens``, the admin API).

Same format rules as API keys (:mod:`keyswap.gateway.apikeys`): ``ksadm_`` + 30 random base62
characters + a 6-character CRC32 checksum, shown once at creation; the store keeps only
HMAC-SHA-256 under the server secret's admin-token subkey, an id (``adm_`` + 12 base62), a hint, the
name and the scopes (:mod:`keyswap.manage.scopes`). Creating and revoking one is audited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from keyswap.errors import AlreadyExists, ConfigError, InvalidApiKey, InvalidInput, NotFound
from keyswap.gateway.apikeys import (
    KEY_ID_PREFIX,
    generate_key,
    generate_key_id,
    is_well_formed,
    key_regex,
    mac_digest,
)
from keyswap.gateway.secret import ServerSecret, check_secret
from keyswap.manage.audit import recording
from keyswap.manage.context import Context
from keyswap.manage.scopes import parse_management_scopes
from keyswap.store.models import AdminTokenRecord, validate_consumer_name

__all__ = [
    "ADMIN_TOKEN_PREFIX",
    "ADMIN_TOKEN_REGEX",
    "AdminPrincipal",
    "CreatedAdminToken",
    "NewAdminToken",
    "authenticate_admin_token",
    "create_admin_token",
    "get_admin_token",
    "list_admin_tokens",
    "revoke_admin_token",
]

#: The prefix of every admin token (``ksadm_...``).
ADMIN_TOKEN_PREFIX = "ksadm"  # noqa: S105 - a prefix, not a secret
#: Matches admin tokens (for secret scanners).
ADMIN_TOKEN_REGEX = key_regex(ADMIN_TOKEN_PREFIX)
_ID_PREFIX = "adm_"
_REFUSAL = "Invalid admin token"


@dataclass(frozen=True, slots=True)
class NewAdminToken:
    """A token to create: a name (1-64 of ``[A-Za-z0-9._-]``; what audit events name as the actor),
    its scopes, and an optional lifetime in seconds."""

    name: str
    scopes: tuple[str, ...]
    expires_in: float | None = None


@dataclass(frozen=True, slots=True)
class CreatedAdminToken:
    """A new token's record and the token itself (shown once; ``repr`` hides it)."""

    record: AdminTokenRecord
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """Who a valid admin token belongs to: its id, name and scopes."""

    token_id: str
    name: str
    scopes: tuple[str, ...]


def _hint(token: str) -> str:
    return f"{ADMIN_TOKEN_PREFIX}_...{token[-4:]}"


def create_admin_token(ctx: Context, secret: ServerSecret, new: NewAdminToken) -> CreatedAdminToken:
    """Create an admin token (audited as ``admin_token.create``; never the token).

    Raises:
        InvalidInput: a bad name, an unknown scope or none, a lifetime that is not positive.
        ConfigError: the database belongs to another server secret.
    """
    name = _validate_name(new.name)
    scopes = parse_management_scopes(new.scopes)
    if new.expires_in is not None and not (math.isfinite(new.expires_in) and new.expires_in > 0):
        raise InvalidInput("the expiry must be a positive duration")
    check_secret(ctx.store, secret)
    now = ctx.now()
    expires_at = None if new.expires_in is None else now + new.expires_in
    for _ in range(5):
        token = generate_key(ADMIN_TOKEN_PREFIX)
        token_id = _ID_PREFIX + generate_key_id()[len(KEY_ID_PREFIX) :]
        changes = {"name": name, "scopes": list(scopes), "expires_at": expires_at}
        try:
            with recording(ctx, "admin_token.create", f"admin_token:{token_id}", changes):
                record = ctx.store.insert_admin_token(
                    token_id=token_id,
                    name=name,
                    digest=mac_digest(secret.admin_token_mac_key, token),
                    hint=_hint(token),
                    scopes=scopes,
                    created_at=now,
                    expires_at=expires_at,
                )
        except AlreadyExists:  # pragma: no cover - a 71-bit id collision
            continue
        return CreatedAdminToken(record, token)
    raise ConfigError("could not draw a unique admin token id")  # pragma: no cover


def _validate_name(name: str) -> str:
    """An admin token's name: the same rule as a consumer's name.

    Raises:
        InvalidInput: not 1-64 characters of letters, digits, '.', '_' or '-'.
    """
    try:
        return validate_consumer_name(name)
    except InvalidInput:
        raise InvalidInput(
            "admin token name must be 1-64 characters of letters, digits, '.', '_' or '-'"
        ) from None


def list_admin_tokens(ctx: Context) -> list[AdminTokenRecord]:
    """Every admin token, oldest first (ids, names, hints and scopes; never a token)."""
    return ctx.store.list_admin_tokens()


def revoke_admin_token(ctx: Context, token_id: str) -> AdminTokenRecord:
    """Revoke an admin token at once (idempotent; audited as ``admin_token.revoke``).

    Raises:
        NotFound: no such token id.
    """
    now = ctx.now()
    with recording(ctx, "admin_token.revoke", f"admin_token:{token_id}", {"revoked_at": now}):
        return ctx.store.revoke_admin_token(token_id, now=now)


def authenticate_admin_token(ctx: Context, secret: ServerSecret, token: str) -> AdminPrincipal:
    """The principal of a valid admin token. The HMAC is computed for every token, well-formed or not.

    Raises:
        InvalidApiKey: ``"Invalid admin token"`` for every cause (malformed, unknown, revoked,
            expired): 401.
    """
    text = token if isinstance(token, str) else ""
    digest = mac_digest(secret.admin_token_mac_key, text)
    if not is_well_formed(text, ADMIN_TOKEN_PREFIX):
        raise InvalidApiKey(_REFUSAL)
    record = ctx.store.find_admin_token(digest)
    if record is None or not record.usable_at(ctx.now()):
        raise InvalidApiKey(_REFUSAL)
    return AdminPrincipal(record.id, record.name, record.scopes)


def get_admin_token(ctx: Context, token_id: str) -> AdminTokenRecord:
    """The admin token with this id.

    Raises:
        NotFound: no such token id.
    """
    record = ctx.store.get_admin_token(token_id)
    if record is None:
        raise NotFound(f"unknown admin token id '{token_id}'")
    return record
