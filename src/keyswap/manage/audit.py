"""The audit log: one event per change, written in the change's transaction, listed newest first.

An event names the time, the actor (:class:`~keyswap.manage.actor.Actor`), the action
(``consumer.create``, ``key.revoke``, ``signing_key.rotate``, ``admin_token.create``, ...), the target
(``consumer:acme``, ``key:key_...``, ``admin_token:adm_...``, ``signing_keys``), the request id and
client address where there is one, and the changed fields. Never a secret: :func:`recording` refuses
field names that would hold one (``key``, ``token``, ``secret``, ``private_*``, ...).

Retention: every change also deletes the events older than the context's ``audit_retention`` (default
365 days, ``$KEYSWAP_AUDIT_RETENTION``; ``0`` keeps everything), in the same transaction (pruning on
write: no background job, a database nobody changes keeps its old events until the next change).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from keyswap.errors import InvalidInput
from keyswap.manage.actor import ACTOR_KINDS
from keyswap.manage.context import Context
from keyswap.store.models import AuditRecord

__all__ = [
    "MAX_PAGE",
    "SECRET_FIELDS",
    "AuditPage",
    "AuditQuery",
    "audit_record",
    "audit_retention",
    "list_events",
    "record_event",
    "recording",
]

#: Field names an event may never carry (their values would be secrets).
SECRET_FIELDS = frozenset(
    {"key", "api_key", "token", "admin_token", "secret", "private_key", "private_blob", "digest"}
)
#: Most events one page lists.
MAX_PAGE = 1000


def _record(
    ctx: Context, action: str, target: str, changes: Mapping[str, Any] | None
) -> AuditRecord:
    fields = dict(changes or {})
    leaked = sorted(name for name in fields if name.lower() in SECRET_FIELDS)
    if leaked:
        raise ValueError(f"an audit event may not carry {', '.join(leaked)}")
    return AuditRecord(
        at=ctx.now(),
        actor_kind=ctx.actor.kind,
        actor_name=ctx.actor.name,
        action=action,
        target=target,
        changes=fields,
        request_id=ctx.actor.request_id,
        client=ctx.actor.client,
    )


def _retention(ctx: Context) -> float | None:
    return ctx.audit_retention if ctx.audit_retention > 0 else None


def audit_record(
    ctx: Context, action: str, target: str, changes: Mapping[str, Any] | None = None
) -> AuditRecord:
    """The event of ``action`` by ``ctx.actor`` now, for a store method that writes several events in
    one transaction (a batch of leak reports); :func:`recording` otherwise.

    Raises:
        ValueError: a changed field's name is one of :data:`SECRET_FIELDS` (a programming error).
    """
    return _record(ctx, action, target, changes)


def audit_retention(ctx: Context) -> float | None:
    """Seconds of audit events kept (``None``: every event), for pruning in that transaction."""
    return _retention(ctx)


def record_event(
    ctx: Context, action: str, target: str, changes: Mapping[str, Any] | None = None
) -> None:
    """Record an action that changes nothing in the store (``token.mint``), in its own transaction.

    Raises:
        ValueError: a changed field's name is one of :data:`SECRET_FIELDS` (a programming error).
    """
    ctx.store.append_audit_event(_record(ctx, action, target, changes), retention=_retention(ctx))


@contextmanager
def recording(
    ctx: Context, action: str, target: str, changes: Mapping[str, Any] | None = None
) -> Iterator[None]:
    """Record ``action`` on ``target`` by ``ctx.actor`` with the first change made in the block.

    ``target`` may name facts only the store learns (``key:{key_id}``); they join the changed fields.

    Raises:
        ValueError: a changed field's name is one of :data:`SECRET_FIELDS` (a programming error).
    """
    record = _record(ctx, action, target, changes)
    with ctx.store.recording(record, retention=_retention(ctx)):
        yield


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of :func:`list_events`; every one given must match.

    ``actor``: a kind (``cli``, ``token``, ``oidc``, ``system``) or ``kind:name`` (``cli:alice``).
    ``action``: an action (``key.revoke``) or a family without a dot (``key``: every ``key.*``).
    ``since``/``until``: the time range (epoch seconds; ``until`` excluded).
    ``before``: the cursor, an event id (the ``next_before`` of the previous page).
    """

    since: float | None = None
    until: float | None = None
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    before: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of events, newest first; ``next_before`` is the cursor of the next page (``None``:
    this was the last)."""

    events: list[AuditRecord]
    next_before: int | None


def list_events(ctx: Context, query: AuditQuery) -> AuditPage:
    """Audit events matching ``query``, newest first.

    Raises:
        InvalidInput: a limit outside 1-1000, an unknown actor kind, a negative cursor.
    """
    if not 1 <= query.limit <= MAX_PAGE:
        raise InvalidInput(f"the limit must be 1-{MAX_PAGE}")
    if query.before is not None and query.before < 1:
        raise InvalidInput("the cursor (--before) must be a positive event id")
    kind = name = None
    if query.actor:
        kind, _, rest = query.actor.partition(":")
        name = rest if rest else None
        if kind not in ACTOR_KINDS:
            raise InvalidInput(
                f"unknown actor kind {kind!r}: use one of {', '.join(ACTOR_KINDS)}, "
                "optionally with :name (cli:alice)"
            )
    action = prefix = None
    if query.action:
        if "." in query.action:
            action = query.action
        else:
            prefix = query.action + "."
    events = ctx.store.list_audit_events(
        limit=query.limit + 1,
        before=query.before,
        since=query.since,
        until=query.until,
        actor_kind=kind,
        actor_name=name,
        action=action,
        action_prefix=prefix,
        target=query.target or None,
    )
    more = len(events) > query.limit
    events = events[: query.limit]
    return AuditPage(events, events[-1].id if more and events else None)
