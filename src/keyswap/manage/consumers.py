"""Consumers: create, list, get, update (metadata, scopes, rate limit, connection cap, quota,
credits), delete."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keyswap.errors import InvalidInput, NotFound
from keyswap.manage.audit import recording
from keyswap.manage.context import Context
from keyswap.manage.quotas import canonical
from keyswap.store.models import (
    Consumer,
    validate_consumer_name,
    validate_credits,
    validate_leak_policy,
    validate_max_connections,
    validate_metadata,
    validate_rate_limit,
    validate_scopes,
)
from keyswap.store.sql import KEEP, Keep

__all__ = [
    "KEEP",
    "MAX_PAGE",
    "ConsumerPage",
    "ConsumerUpdate",
    "DeletedConsumer",
    "NewConsumer",
    "count_keys",
    "create_consumer",
    "delete_consumer",
    "get_consumer",
    "list_consumers",
    "page_consumers",
    "update_consumer",
]


@dataclass(frozen=True, slots=True)
class NewConsumer:
    """A consumer to create: name (1-64 of ``[A-Za-z0-9._-]``), metadata (JSON object, <= 1 KiB) and
    the scopes its keys may be granted (default none)."""

    name: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsumerUpdate:
    """Fields to change; :data:`KEEP` leaves one as it is. ``rate_limit``: ``None`` (the gateway's
    default), ``"unlimited"`` or ``"<n>/<seconds>s"``; ``max_connections``: ``None`` (the gateway's
    default) or 1-10000; ``leak_policy``: ``None`` (the deployment's), ``revoke``, ``roll`` or
    ``notify`` (:mod:`keyswap.manage.leaks`)."""

    metadata: Mapping[str, Any] | Keep = KEEP
    scopes: tuple[str, ...] | Keep = KEEP
    rate_limit: str | Keep | None = KEEP
    max_connections: int | Keep | None = KEEP
    leak_policy: str | Keep | None = KEEP
    #: ``None`` (none), ``"<n>/day"`` or ``"<n>/month"`` (see :mod:`keyswap.manage.quotas`).
    quota: str | Keep | None = KEEP
    #: A new credit grant (``None``: no credits); its refill, ``"<n>/day"``/``"<n>/month"`` or
    #: ``None`` (never), is set with it (given alone, it changes the refill of the current grant).
    credits: int | Keep | None = KEEP
    credits_refill: str | Keep | None = KEEP

    def changed(self) -> dict[str, Any]:
        """The fields given, by name (validated)."""
        fields: dict[str, Any] = {}
        if not isinstance(self.metadata, Keep):
            fields["metadata"] = validate_metadata(dict(self.metadata))
        if not isinstance(self.scopes, Keep):
            fields["scopes"] = list(validate_scopes(self.scopes))
        if not isinstance(self.rate_limit, Keep):
            fields["rate_limit"] = validate_rate_limit(self.rate_limit)
        if not isinstance(self.max_connections, Keep):
            fields["max_connections"] = validate_max_connections(self.max_connections)
        if not isinstance(self.leak_policy, Keep):
            fields["leak_policy"] = validate_leak_policy(self.leak_policy)
        if not isinstance(self.quota, Keep):
            fields["quota"] = canonical(self.quota)
        if not isinstance(self.credits, Keep):
            fields["credits"] = validate_credits(self.credits)
        if not isinstance(self.credits_refill, Keep):
            fields["credits_refill"] = canonical(self.credits_refill)
        if fields.get("credits", 0) is None:
            fields["credits_refill"] = None  # no credits, nothing to refill
        return fields


@dataclass(frozen=True, slots=True)
class DeletedConsumer:
    """What :func:`delete_consumer` removed."""

    name: str
    api_keys_deleted: int


def _target(name: str) -> str:
    return f"consumer:{name}"


def create_consumer(ctx: Context, new: NewConsumer) -> Consumer:
    """Create a consumer (audited as ``consumer.create``).

    Raises:
        InvalidInput: bad name, metadata or scopes.
        AlreadyExists: a consumer with that name exists.
    """
    name = validate_consumer_name(new.name)
    metadata = validate_metadata(dict(new.metadata))
    scopes = validate_scopes(new.scopes)
    changes = {"metadata": metadata, "scopes": list(scopes)}
    with recording(ctx, "consumer.create", _target(name), changes):
        return ctx.store.create_consumer(name, metadata, scopes=scopes, now=ctx.now())


def list_consumers(ctx: Context) -> list[Consumer]:
    """Every consumer, by name."""
    return ctx.store.list_consumers()


#: Most consumers (or keys) one page lists.
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ConsumerPage:
    """One page of consumers by name; ``next_after`` is the cursor of the next page (``None``: this
    was the last)."""

    consumers: list[Consumer]
    next_after: str | None


def page_consumers(
    ctx: Context, *, after: str | None = None, prefix: str | None = None, limit: int = 100
) -> ConsumerPage:
    """Consumers by name after the cursor ``after``, whose name starts with ``prefix``.

    Raises:
        InvalidInput: a limit outside 1-1000.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"the limit must be 1-{MAX_PAGE}")
    found = ctx.store.page_consumers(after=after, prefix=prefix, limit=limit + 1)
    more = len(found) > limit
    found = found[:limit]
    return ConsumerPage(found, found[-1].name if more and found else None)


def get_consumer(ctx: Context, name: str) -> Consumer:
    """The consumer called ``name``.

    Raises:
        NotFound: no such consumer.
    """
    consumer = ctx.store.get_consumer(name)
    if consumer is None:
        raise NotFound(f"unknown consumer '{name}'")
    return consumer


def update_consumer(ctx: Context, name: str, update: ConsumerUpdate) -> Consumer:
    """Change the given fields of a consumer in one transaction (audited as ``consumer.update``
    with the fields given). Running gateways pick the change up within a second.

    Raises:
        InvalidInput: a bad value.
        NotFound: no such consumer.
    """
    changes = update.changed()
    if not changes:
        return get_consumer(ctx, name)
    with recording(ctx, "consumer.update", _target(name), changes):
        return ctx.store.update_consumer(
            name,
            metadata=update.metadata,
            scopes=update.scopes,
            rate_limit=update.rate_limit,
            max_connections=update.max_connections,
            leak_policy=update.leak_policy,
            quota=changes.get("quota", KEEP),
            credits=changes.get("credits", KEEP),
            credits_refill=changes.get("credits_refill", KEEP),
            credits_set_at=_grant_time(ctx, changes),
        )


def _grant_time(ctx: Context, changes: dict[str, Any]) -> float | Keep | None:
    """When a credit grant starts: now for new credits, none without credits, else unchanged."""
    if "credits" not in changes:
        return KEEP
    return None if changes["credits"] is None else ctx.now()


def count_keys(ctx: Context, name: str) -> int:
    """How many API keys the consumer has (what deleting it would remove).

    Raises:
        NotFound: no such consumer.
    """
    return len(ctx.store.list_api_keys(name))


def delete_consumer(ctx: Context, name: str) -> DeletedConsumer:
    """Delete a consumer and all its API keys; they stop working at once (audited as
    ``consumer.delete``).

    Raises:
        NotFound: no such consumer.
    """
    with recording(ctx, "consumer.delete", _target(name)):
        deleted = ctx.store.delete_consumer(name)
    return DeletedConsumer(name, deleted)
