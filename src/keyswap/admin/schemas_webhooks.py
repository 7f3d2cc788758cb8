"""Request and response bodies of the admin API's webhook routes (see :mod:`keyswap.admin.schemas`).

A webhook's signing secret appears only in :class:`WebhookSecretOut` (``secret``), in the response
that generated it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from keyswap.admin.schemas import _In, iso
from keyswap.manage.webhooks import MAX_URL_LENGTH, WebhookInfo, shown_payload
from keyswap.store.webhooks import Attempt, WebhookEvent

__all__ = [
    "DeliveryOut",
    "DeliveryPageOut",
    "WebhookEventOut",
    "WebhookEventPageOut",
    "WebhookIn",
    "WebhookOut",
    "WebhookSecretOut",
]


class WebhookIn(_In):
    """A consumer's webhook endpoint."""

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="An https URL of a public host (plain http only to loopback, with "
        "allow_http_loopback).",
    )
    allow_http_loopback: bool = Field(
        default=False,
        description="Allow a loopback host (127.0.0.1, ::1, localhost), also over plain http: local "
        "development only.",
    )


class WebhookOut(BaseModel):
    """A consumer's webhook (never its secret)."""

    consumer: str
    url: str
    allow_http_loopback: bool
    created_at: str | None
    updated_at: str | None

    @classmethod
    def of(cls, info: WebhookInfo) -> WebhookOut:
        """The view of a webhook."""
        return cls(
            consumer=info.consumer,
            url=info.url,
            allow_http_loopback=info.allow_http_loopback,
            created_at=iso(info.created_at),
            updated_at=iso(info.updated_at),
        )


class WebhookSecretOut(WebhookOut):
    """A webhook, with its signing secret when this response generated one (shown once; ``null``
    when the secret was kept, or in a replay)."""

    secret: str | None = Field(description="whsec_...: give it to the consumer now.")


class WebhookEventOut(BaseModel):
    """One event of the outbox; ``id`` is its ``webhook-id``."""

    id: str
    consumer: str
    type: str
    state: str = Field(description="pending, delivered or failed.")
    attempts: int
    created_at: str | None
    next_attempt_at: str | None
    finished_at: str | None
    payload: dict[str, Any] = Field(
        description="The body sent: type, timestamp and data (data null and sealed true when it "
        "holds a secret, such as a rolled key's new API key)."
    )

    @classmethod
    def of(cls, event: WebhookEvent) -> WebhookEventOut:
        """The view of an event."""
        return cls(
            id=event.id,
            consumer=event.consumer_name,
            type=event.type,
            state=event.state,
            attempts=event.attempts,
            created_at=iso(event.created_at),
            next_attempt_at=iso(event.next_attempt_at),
            finished_at=iso(event.finished_at),
            payload=shown_payload(event),
        )


class WebhookEventPageOut(BaseModel):
    """Events, newest first."""

    items: list[WebhookEventOut]


class DeliveryOut(BaseModel):
    """One delivery attempt: an HTTP status, or an error kind when there was no answer."""

    id: int
    event_id: str
    consumer: str
    type: str
    attempt: int
    at: str | None
    url: str
    status_code: int | None
    error: str | None = Field(
        description="timeout, connect, network, blocked_address, dns, no_endpoint or secret."
    )
    duration_ms: float
    next_retry_at: str | None
    response_excerpt: str | None = Field(description="At most 256 characters of the answer.")

    @classmethod
    def of(cls, attempt: Attempt) -> DeliveryOut:
        """The view of an attempt."""
        return cls(
            id=attempt.id,
            event_id=attempt.event_id,
            consumer=attempt.consumer_name,
            type=attempt.event_type,
            attempt=attempt.attempt,
            at=iso(attempt.at),
            url=attempt.url,
            status_code=attempt.status_code,
            error=attempt.error,
            duration_ms=round(attempt.duration * 1000, 1),
            next_retry_at=iso(attempt.next_retry_at),
            response_excerpt=attempt.response_excerpt,
        )


class DeliveryPageOut(BaseModel):
    """Attempts, newest first; pass ``next_cursor`` as ``?cursor=`` for the next page."""

    items: list[DeliveryOut]
    next_cursor: str | None
