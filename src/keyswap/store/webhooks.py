"""Consumer webhooks in the store: endpoints, the event outbox, and delivery attempts.

Tables: :data:`~keyswap.store.schema.webhook_endpoints` (one per consumer; the secret only as an
encrypted blob, see :mod:`keyswap.webhooks.secrets`), :data:`~keyswap.store.schema.webhook_events` (the
outbox) and :data:`~keyswap.store.schema.webhook_attempts`. The rules (URL validation, secrets, audit)
live in :mod:`keyswap.manage.webhooks`; delivery in :mod:`keyswap.webhooks.dispatch`.

Changing an endpoint or asking for a redelivery is a management change: it bumps the store revision
(so it can carry its audit event, :meth:`Store.recording`) with a ``webhook`` change-log row, which
gateways ignore. Recording events and attempts does not bump the revision: they are data, not
configuration, and must not make gateways look at their caches.

Claims: a dispatcher takes a due event by setting ``lease_owner`` and ``lease_until`` with a
conditional update (only if the row is still pending and not leased), so two processes never hold the
same event at once; a process that dies holding one loses it when the lease ends. On PostgreSQL the
candidate rows are read ``FOR UPDATE SKIP LOCKED``; on SQLite writers are serialised anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from keyswap.errors import NotFound
from keyswap.store.schema import consumers, webhook_attempts, webhook_endpoints, webhook_events
from keyswap.store.sql import Store

__all__ = [
    "EVENT_STATES",
    "Attempt",
    "ClaimedEvent",
    "WebhookEndpoint",
    "WebhookEvent",
    "claim_due_events",
    "delete_endpoint",
    "finish_attempt",
    "get_endpoint",
    "get_event",
    "insert_event",
    "list_attempts",
    "list_events",
    "put_endpoint",
    "requeue_event",
]

#: ``pending``: to deliver at ``next_attempt_at``; ``delivered``: a 2xx answer; ``failed``: retries
#: exhausted, or the consumer has no endpoint any more.
EVENT_STATES = ("pending", "delivered", "failed")


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A consumer's webhook endpoint; ``secret_blob`` is the encrypted secret (never the secret)."""

    consumer_id: int
    consumer_name: str
    url: str
    secret_blob: bytes
    allow_http_loopback: bool
    created_at: float
    updated_at: float

    def __repr__(self) -> str:
        return (
            f"WebhookEndpoint(consumer={self.consumer_name!r}, url={self.url!r}, secret=<hidden>)"
        )


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event in the outbox: its id is the ``webhook-id`` header; ``payload`` is the JSON body."""

    id: str
    consumer_id: int
    consumer_name: str
    type: str
    payload: dict[str, Any]
    created_at: float
    idempotency_key: str | None
    state: str
    attempts: int
    next_attempt_at: float | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt: the HTTP ``status_code`` answered, or an ``error`` kind when there was
    no answer (see :data:`keyswap.webhooks.dispatch.ERROR_KINDS`), how long it took (seconds), when
    the next one is due (``None``: none) and a short excerpt of the response body."""

    id: int
    event_id: str
    consumer_name: str
    event_type: str
    attempt: int
    at: float
    url: str
    status_code: int | None
    error: str | None
    duration: float
    next_retry_at: float | None
    response_excerpt: str | None


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    """A due event a dispatcher holds the lease of, with its consumer's endpoint (``None``: gone)."""

    event: WebhookEvent
    endpoint: WebhookEndpoint | None


def _endpoint_select() -> sa.Select[Any]:
    return sa.select(webhook_endpoints, consumers.c.name.label("consumer_name")).join(
        consumers, consumers.c.id == webhook_endpoints.c.consumer_id
    )


def _event_select() -> sa.Select[Any]:
    return sa.select(webhook_events, consumers.c.name.label("consumer_name")).join(
        consumers, consumers.c.id == webhook_events.c.consumer_id
    )


def _endpoint(row: sa.Row[Any]) -> WebhookEndpoint:
    return WebhookEndpoint(
        consumer_id=int(row.consumer_id),
        consumer_name=row.consumer_name,
        url=row.url,
        secret_blob=bytes(row.secret_blob),
        allow_http_loopback=bool(row.allow_http_loopback),
        created_at=float(row.created_at),
        updated_at=float(row.updated_at),
    )


def _event(row: sa.Row[Any]) -> WebhookEvent:
    return WebhookEvent(
        id=row.id,
        consumer_id=int(row.consumer_id),
        consumer_name=row.consumer_name,
        type=row.type,
        payload=dict(row.payload),
        created_at=float(row.created_at),
        idempotency_key=row.idempotency_key,
        state=row.state,
        attempts=int(row.attempts),
        next_attempt_at=None if row.next_attempt_at is None else float(row.next_attempt_at),
        finished_at=None if row.finished_at is None else float(row.finished_at),
    )


def _attempt(row: sa.Row[Any]) -> Attempt:
    return Attempt(
        id=int(row.id),
        event_id=row.event_id,
        consumer_name=row.consumer_name,
        event_type=row.event_type,
        attempt=int(row.attempt),
        at=float(row.at),
        url=row.url,
        status_code=row.status_code,
        error=row.error,
        duration=float(row.duration),
        next_retry_at=None if row.next_retry_at is None else float(row.next_retry_at),
        response_excerpt=row.response_excerpt,
    )


def _load_endpoint(conn: Connection, consumer_id: int) -> WebhookEndpoint | None:
    row = conn.execute(
        _endpoint_select().where(webhook_endpoints.c.consumer_id == consumer_id)
    ).first()
    return None if row is None else _endpoint(row)


# -- endpoints ---------------------------------------------------------------------------------------


def put_endpoint(
    store: Store,
    consumer_id: int,
    *,
    url: str | None = None,
    secret_blob: bytes | None = None,
    allow_http_loopback: bool | None = None,
    now: float,
) -> WebhookEndpoint:
    """Create or change the consumer's endpoint: the fields given (``None``: keep). Creating one needs
    all of them.

    Raises:
        NotFound: no such consumer, or (changing only some fields) it has no endpoint.
    """
    with store._writing() as conn:
        exists = _load_endpoint(conn, consumer_id)
        if exists is None:
            if url is None or secret_blob is None or allow_http_loopback is None:
                raise NotFound("the consumer has no webhook")
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(webhook_endpoints).values(
                            consumer_id=consumer_id,
                            url=url,
                            secret_blob=secret_blob,
                            allow_http_loopback=allow_http_loopback,
                            created_at=now,
                            updated_at=now,
                        )
                    )
            except IntegrityError:
                raise NotFound("unknown consumer") from None
        else:
            values: dict[str, Any] = {"updated_at": now}
            if url is not None:
                values["url"] = url
            if secret_blob is not None:
                values["secret_blob"] = secret_blob
            if allow_http_loopback is not None:
                values["allow_http_loopback"] = allow_http_loopback
            conn.execute(
                sa.update(webhook_endpoints)
                .where(webhook_endpoints.c.consumer_id == consumer_id)
                .values(**values)
            )
        store._log_change(conn, "webhook", consumer_id)
        found = _load_endpoint(conn, consumer_id)
    if found is None:  # pragma: no cover - the row was written in this transaction
        raise NotFound("unknown consumer")
    return found


def get_endpoint(store: Store, consumer_id: int) -> WebhookEndpoint | None:
    """The consumer's endpoint, or ``None``."""
    with store._reading() as conn:
        return _load_endpoint(conn, consumer_id)


def delete_endpoint(store: Store, consumer_id: int) -> bool:
    """Remove the consumer's endpoint (its pending events fail at their next attempt); False if it had
    none (nothing is written then)."""
    with store._reading() as conn:
        if _load_endpoint(conn, consumer_id) is None:
            return False
    with store._writing() as conn:
        deleted = conn.execute(
            sa.delete(webhook_endpoints).where(webhook_endpoints.c.consumer_id == consumer_id)
        ).rowcount
        store._log_change(conn, "webhook", consumer_id)
    return bool(deleted)


# -- events ------------------------------------------------------------------------------------------


def insert_event(
    store: Store,
    *,
    event_id: str,
    consumer_id: int,
    event_type: str,
    payload: Mapping[str, Any],
    idempotency_key: str | None,
    now: float,
) -> str | None:
    """Record an event for delivery now, if the consumer has an endpoint; returns its id (for a known
    ``idempotency_key``, the id of the event recorded first), else ``None``."""

    def existing(conn: Connection) -> str | None:
        if idempotency_key is None:
            return None
        found: str | None = conn.execute(
            sa.select(webhook_events.c.id).where(
                webhook_events.c.consumer_id == consumer_id,
                webhook_events.c.idempotency_key == idempotency_key,
            )
        ).scalar_one_or_none()
        return found

    try:
        with store._writing(bump=False) as conn:
            if (
                conn.execute(
                    sa.select(webhook_endpoints.c.consumer_id).where(
                        webhook_endpoints.c.consumer_id == consumer_id
                    )
                ).first()
                is None
            ):
                return None
            known = existing(conn)
            if known is not None:
                return known
            conn.execute(
                sa.insert(webhook_events).values(
                    id=event_id,
                    consumer_id=consumer_id,
                    type=event_type,
                    payload=dict(payload),
                    created_at=now,
                    idempotency_key=idempotency_key,
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                )
            )
            return event_id
    except IntegrityError:
        # Another process recorded the same idempotency key between our read and our insert.
        with store._reading() as conn:
            known = existing(conn)
        if known is None:
            raise
        return known


def get_event(store: Store, event_id: str) -> WebhookEvent | None:
    """The event with this id, or ``None``."""
    with store._reading() as conn:
        row = conn.execute(_event_select().where(webhook_events.c.id == event_id)).first()
    return None if row is None else _event(row)


def list_events(
    store: Store,
    *,
    consumer_id: int | None = None,
    state: str | None = None,
    limit: int = 100,
) -> list[WebhookEvent]:
    """Events, newest first, at most ``limit``."""
    query = (
        _event_select()
        .order_by(webhook_events.c.created_at.desc(), webhook_events.c.id.desc())
        .limit(max(0, limit))
    )
    if consumer_id is not None:
        query = query.where(webhook_events.c.consumer_id == consumer_id)
    if state is not None:
        query = query.where(webhook_events.c.state == state)
    with store._reading() as conn:
        rows = conn.execute(query).all()
    return [_event(row) for row in rows]


def requeue_event(store: Store, event_id: str, *, now: float) -> WebhookEvent:
    """Make an event due again now, whatever its state (a manual redelivery).

    Raises:
        NotFound: no such event.
    """
    with store._writing() as conn:
        row = conn.execute(_event_select().where(webhook_events.c.id == event_id)).first()
        if row is None:
            raise NotFound(f"unknown webhook event '{event_id}'")
        conn.execute(
            sa.update(webhook_events)
            .where(webhook_events.c.id == event_id)
            .values(state="pending", next_attempt_at=now, finished_at=None)
        )
        store._log_change(conn, "webhook", row.consumer_id)
        row = conn.execute(_event_select().where(webhook_events.c.id == event_id)).one()
    return _event(row)


def claim_due_events(
    store: Store, *, owner: str, now: float, lease: float, limit: int
) -> list[ClaimedEvent]:
    """Take the lease of up to ``limit`` due events (pending, ``next_attempt_at <= now``, no live
    lease), oldest due first, for ``lease`` seconds; each comes with its consumer's endpoint."""
    free = sa.or_(webhook_events.c.lease_until.is_(None), webhook_events.c.lease_until <= now)
    due = (
        sa.select(webhook_events.c.id)
        .where(
            webhook_events.c.state == "pending",
            webhook_events.c.next_attempt_at <= now,
            free,
        )
        .order_by(webhook_events.c.next_attempt_at, webhook_events.c.id)
        .limit(max(0, limit))
    )
    if store.is_postgres:
        due = due.with_for_update(skip_locked=True)
    claimed: list[ClaimedEvent] = []
    with store._writing(bump=False) as conn:
        for event_id in conn.execute(due).scalars().all():
            taken = conn.execute(
                sa.update(webhook_events)
                .where(
                    webhook_events.c.id == event_id,
                    webhook_events.c.state == "pending",
                    free,
                )
                .values(lease_owner=owner, lease_until=now + lease)
            ).rowcount
            if not taken:
                continue
            row = conn.execute(_event_select().where(webhook_events.c.id == event_id)).one()
            event = _event(row)
            claimed.append(ClaimedEvent(event, _load_endpoint(conn, event.consumer_id)))
    return claimed


def finish_attempt(
    store: Store,
    event_id: str,
    *,
    owner: str,
    at: float,
    url: str,
    status_code: int | None,
    error: str | None,
    duration: float,
    state: str,
    next_retry_at: float | None,
    response_excerpt: str | None,
) -> bool:
    """Record one attempt and, if ``owner`` still holds the lease, the event's new state (``pending``
    with ``next_retry_at``, ``delivered`` or ``failed``), releasing the lease. Returns whether the
    lease was still held (the attempt is recorded either way)."""
    with store._writing(bump=False) as conn:
        row = conn.execute(
            sa.select(webhook_events.c.attempts, webhook_events.c.lease_owner).where(
                webhook_events.c.id == event_id
            )
        ).first()
        if row is None:  # deleted with its consumer meanwhile
            return False
        number = int(row.attempts) + 1
        conn.execute(
            sa.insert(webhook_attempts).values(
                event_id=event_id,
                attempt=number,
                at=at,
                url=url[:2048],
                status_code=status_code,
                error=error,
                duration=duration,
                next_retry_at=next_retry_at,
                response_excerpt=response_excerpt,
            )
        )
        held = conn.execute(
            sa.update(webhook_events)
            .where(webhook_events.c.id == event_id, webhook_events.c.lease_owner == owner)
            .values(
                attempts=number,
                state=state,
                next_attempt_at=next_retry_at if state == "pending" else None,
                finished_at=None if state == "pending" else at,
                lease_owner=None,
                lease_until=None,
            )
        ).rowcount
        if not held:
            conn.execute(
                sa.update(webhook_events)
                .where(webhook_events.c.id == event_id)
                .values(attempts=number)
            )
    return bool(held)


def list_attempts(
    store: Store,
    *,
    consumer_id: int | None = None,
    event_id: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Attempt]:
    """Delivery attempts, newest first (by id), at most ``limit``; ``before``: ids below this one."""
    query = (
        sa.select(
            webhook_attempts,
            consumers.c.name.label("consumer_name"),
            webhook_events.c.type.label("event_type"),
        )
        .join(webhook_events, webhook_events.c.id == webhook_attempts.c.event_id)
        .join(consumers, consumers.c.id == webhook_events.c.consumer_id)
        .order_by(webhook_attempts.c.id.desc())
        .limit(max(0, limit))
    )
    if consumer_id is not None:
        query = query.where(webhook_events.c.consumer_id == consumer_id)
    if event_id is not None:
        query = query.where(webhook_attempts.c.event_id == event_id)
    if before is not None:
        query = query.where(webhook_attempts.c.id < before)
    with store._reading() as conn:
        rows = conn.execute(query).all()
    return [_attempt(row) for row in rows]
