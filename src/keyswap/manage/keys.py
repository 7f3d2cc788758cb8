"""Consumers' API keys: create, list, get, revoke, roll. A key's secret appears only in
:class:`CreatedKey`, once; it is never stored, logged or audited."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from keyswap.errors import InvalidInput, NotFound
from keyswap.gateway.apikeys import DEFAULT_GRACE, DEFAULT_PREFIX, ApiKeys
from keyswap.gateway.secret import ServerSecret
from keyswap.manage.audit import recording
from keyswap.manage.context import Context
from keyswap.store.models import ApiKeyRecord, validate_label, validate_scopes

_MAX_PAGE = 1000

__all__ = [
    "CreatedKey",
    "KeyPage",
    "NewKey",
    "RolledKey",
    "create_key",
    "get_key",
    "list_keys",
    "page_keys",
    "revoke_key",
    "roll_key",
    "set_key_expiry",
]


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key to create for ``consumer``: optional lifetime (seconds) and scopes of its own (``None``:
    the consumer's, whatever they are at the time)."""

    consumer: str
    expires_in: float | None = None
    scopes: tuple[str, ...] | None = None
    #: A name for the key ("production"; at most 64 printable characters).
    label: str | None = None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key's record and the key itself (shown once; ``repr`` hides it)."""

    record: ApiKeyRecord
    key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class RolledKey:
    """A roll: the replacement (with its key, shown once) and the old key as it is now."""

    new: CreatedKey
    old: ApiKeyRecord


def _api_keys(ctx: Context, secret: ServerSecret, prefix: str) -> ApiKeys:
    return ApiKeys(ctx.store, secret, prefix=prefix, clock=ctx.clock)


def create_key(
    ctx: Context, secret: ServerSecret, new: NewKey, *, prefix: str = DEFAULT_PREFIX
) -> CreatedKey:
    """Create an API key (audited as ``key.create``, target ``key:<id>``, never the key).

    Raises:
        NotFound: no such consumer.
        InvalidInput: a lifetime that is not a positive number of seconds; a bad scope, or one the
            consumer does not have.
        ConfigError: a bad prefix, or the database belongs to another server secret.
    """
    if new.expires_in is not None and not (math.isfinite(new.expires_in) and new.expires_in > 0):
        raise InvalidInput("the expiry must be a positive duration")
    scopes = None if new.scopes is None else validate_scopes(new.scopes)
    label = validate_label(new.label)
    now = ctx.now()
    changes = {
        "consumer": new.consumer,
        "expires_at": None if new.expires_in is None else now + new.expires_in,
        "scopes": None if scopes is None else list(scopes),
    }
    if label is not None:
        changes["label"] = label
    keys = _api_keys(ctx, secret, prefix)
    with recording(ctx, "key.create", "key:{key_id}", changes):
        record, key = keys.create(
            new.consumer, expires_in=new.expires_in, scopes=scopes, now=now, label=label
        )
    return CreatedKey(record, key)


def list_keys(ctx: Context, consumer: str | None = None) -> list[ApiKeyRecord]:
    """Every key (of ``consumer``, if given), oldest first; ids and hints, never keys.

    Raises:
        NotFound: the named consumer does not exist.
    """
    return ctx.store.list_api_keys(consumer)


@dataclass(frozen=True, slots=True)
class KeyPage:
    """One page of keys by id; ``next_after`` is the cursor of the next page (``None``: the last)."""

    keys: list[ApiKeyRecord]
    next_after: str | None


def page_keys(
    ctx: Context, consumer: str | None = None, *, after: str | None = None, limit: int = 100
) -> KeyPage:
    """Keys (of ``consumer``, if given) by id after the cursor ``after``; never a secret.

    Raises:
        InvalidInput: a limit outside 1-1000.
        NotFound: the named consumer does not exist.
    """
    if not 1 <= limit <= _MAX_PAGE:
        raise InvalidInput(f"the limit must be 1-{_MAX_PAGE}")
    found = ctx.store.page_api_keys(consumer, after=after, limit=limit + 1)
    more = len(found) > limit
    found = found[:limit]
    return KeyPage(found, found[-1].id if more and found else None)


def get_key(ctx: Context, key_id: str) -> ApiKeyRecord:
    """The key with this id.

    Raises:
        NotFound: no such key.
    """
    record = ctx.store.get_api_key(key_id)
    if record is None:
        raise NotFound(f"unknown key id '{key_id}'")
    return record


def revoke_key(ctx: Context, key_id: str) -> ApiKeyRecord:
    """Revoke a key at once (idempotent; audited as ``key.revoke``). Gateways notice within seconds.

    Raises:
        NotFound: no such key.
    """
    now = ctx.now()
    with recording(ctx, "key.revoke", f"key:{key_id}", {"revoked_at": now}):
        return ctx.store.revoke_api_key(key_id, now=now)


def roll_key(
    ctx: Context,
    secret: ServerSecret,
    key_id: str,
    *,
    grace: float | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> RolledKey:
    """Replace a key with a new one for the same consumer; the old one works ``grace`` seconds more
    (default 24 h). Audited as ``key.roll`` on the old key, with the new key's id.

    Raises:
        NotFound: no such key.
        InvalidInput: a bad grace, or the key is revoked, expired or already rolled.
        ConfigError: a bad prefix, or the database belongs to another server secret.
    """
    period = DEFAULT_GRACE if grace is None else grace
    keys = _api_keys(ctx, secret, prefix)
    with recording(ctx, "key.roll", f"key:{key_id}", {"grace": period}):
        record, key = keys.roll(key_id, period, now=ctx.now())
    return RolledKey(CreatedKey(record, key), get_key(ctx, key_id))


def set_key_expiry(ctx: Context, key_id: str, expires_at: float | None) -> ApiKeyRecord:
    """Set a key's expiry to ``expires_at`` (epoch seconds, in the future) or clear it (``None``);
    audited as ``key.expiry``. Gateways notice within a second.

    Raises:
        NotFound: no such key.
        InvalidInput: a time not in the future; the key is revoked, expired or rolled.
    """
    now = ctx.now()
    if expires_at is not None and not (math.isfinite(expires_at) and expires_at > now):
        raise InvalidInput("the expiry must be in the future")
    with recording(ctx, "key.expiry", f"key:{key_id}", {"expires_at": expires_at}):
        return ctx.store.set_api_key_expiry(key_id, expires_at, now=now)
