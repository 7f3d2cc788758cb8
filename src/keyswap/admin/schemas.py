"""Request and response bodies of the admin API (pydantic models; they make the OpenAPI schemas).

Times in responses are RFC 3339 UTC strings (``2026-01-31T12:00:00Z``); durations in requests are
whole seconds. A key's secret appears only in :class:`KeyCreated` (``key``), in the response that
created it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from keyswap.store.models import ApiKeyRecord, AuditRecord, Consumer, SigningKeyRecord

__all__ = [
    "AuditEventOut",
    "AuditPageOut",
    "ConsumerIn",
    "ConsumerOut",
    "ConsumerPageOut",
    "ConsumerPatch",
    "KeyCreateIn",
    "KeyCreated",
    "KeyOut",
    "KeyPageOut",
    "RollIn",
    "RolledOut",
    "RotateIn",
    "SigningKeyOut",
    "SigningKeysOut",
    "iso",
]

_NAME = r"^[A-Za-z0-9._-]{1,64}$"
_SCOPE = r"^[!#-+\--\[\]-~]{1,64}$"  # printable ASCII but space, '"', '\' and ','
#: Longest duration accepted (100 years, seconds).
MAX_SECONDS = 100 * 365 * 86400

Scope = Annotated[str, Field(pattern=_SCOPE, min_length=1, max_length=64)]
Scopes = Annotated[list[Scope], Field(max_length=32)]


def iso(value: float | None) -> str | None:
    """Epoch seconds as an RFC 3339 UTC string."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConsumerIn(_In):
    """A consumer to create."""

    name: str = Field(pattern=_NAME, description="1-64 of [A-Za-z0-9._-]; unique.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="JSON object, <= 1 KiB.")
    scopes: Scopes = Field(default_factory=list, description="Scopes its keys may be granted.")


class ConsumerPatch(_In):
    """Fields to change; those left out stay as they are."""

    metadata: dict[str, Any] | None = Field(default=None, description="Replaces the metadata.")
    scopes: Scopes | None = Field(default=None, description="Replaces the scopes.")
    rate_limit: str | None = Field(
        default=None,
        max_length=32,
        description="'<requests>/<seconds>s', 'unlimited', or null for the gateway's default.",
    )
    max_connections: int | None = Field(
        default=None, ge=1, le=10_000, description="1-10000, or null for the gateway's default."
    )
    leak_policy: Literal["revoke", "roll", "notify"] | None = Field(
        default=None,
        description="What happens when one of its keys is found in public: revoke, roll (a new key "
        "delivered only by its webhook) or notify; null for the gateway's default (--leak-policy).",
    )
    quota: str | None = Field(
        default=None,
        max_length=32,
        description="Request quota: '<requests>/day' or '<requests>/month' (calendar, UTC); null "
        "or 'off' for none.",
    )
    credits: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000_000_000,
        description="A new credit balance, from now (replaces what is left); null for none.",
    )
    credits_refill: str | None = Field(
        default=None,
        max_length=32,
        description="What the balance is set back to at each period start: '<n>/day' or "
        "'<n>/month'; null for never.",
    )


class ConsumerOut(BaseModel):
    """A consumer."""

    name: str
    metadata: dict[str, Any]
    scopes: list[str]
    rate_limit: str | None
    max_connections: int | None
    leak_policy: str | None = None
    quota: str | None
    credits: int | None
    credits_refill: str | None
    credits_set_at: str | None
    created_at: str | None

    @classmethod
    def of(cls, consumer: Consumer) -> ConsumerOut:
        """The view of a stored consumer."""
        return cls(
            name=consumer.name,
            metadata=consumer.metadata,
            scopes=list(consumer.scopes),
            rate_limit=consumer.rate_limit,
            max_connections=consumer.max_connections,
            leak_policy=consumer.leak_policy,
            quota=consumer.quota,
            credits=consumer.credits,
            credits_refill=consumer.credits_refill,
            credits_set_at=None
            if consumer.credits_set_at is None
            else iso(consumer.credits_set_at),
            created_at=iso(consumer.created_at),
        )


class QuotaStatusOut(BaseModel):
    """One counter of a consumer's quota or credits, as the gateways have recorded it (each writes its
    counts every 2 s)."""

    kind: str = Field(description="quota or credits.")
    period: str = Field(description="The day (2026-12-07) or month (2026-12), or 'grant'.")
    limit: int
    used: int
    remaining: int
    refills_at: str | None = Field(description="RFC 3339; null: never refills.")


class QuotaStatusListOut(BaseModel):
    """A consumer's quota and credits now (empty: none)."""

    items: list[QuotaStatusOut]


class ConsumerPageOut(BaseModel):
    """One page of consumers by name; pass ``next_cursor`` as ``?cursor=`` for the next."""

    items: list[ConsumerOut]
    next_cursor: str | None


class KeyCreateIn(_In):
    """A key to create for the consumer in the path."""

    expires_in: int | None = Field(
        default=None, ge=1, le=MAX_SECONDS, description="Lifetime in seconds (none: no expiry)."
    )
    scopes: Scopes | None = Field(
        default=None,
        description="Its own scopes (a subset of its consumer's); none: the consumer's.",
    )


class KeyOut(BaseModel):
    """An API key's record: id and hint, never the key."""

    id: str
    consumer: str
    hint: str
    state: str = Field(description="active, expired, revoked or rolled (in its grace period).")
    scopes: list[str] | None
    effective_scopes: list[str]
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None
    replaced_by: str | None

    @classmethod
    def of(cls, record: ApiKeyRecord, now: float) -> KeyOut:
        """The view of a stored key at ``now``."""
        if record.revoked_at is not None and record.revoked_at <= now:
            state = "revoked"
        elif record.expires_at is not None and record.expires_at <= now:
            state = "expired"
        elif record.replaced_by is not None:
            state = "rolled"
        else:
            state = "active"
        return cls(
            id=record.id,
            consumer=record.consumer_name,
            hint=record.hint,
            state=state,
            scopes=None if record.scopes is None else list(record.scopes),
            effective_scopes=list(record.effective_scopes),
            created_at=iso(record.created_at),
            expires_at=iso(record.expires_at),
            revoked_at=iso(record.revoked_at),
            last_used_at=iso(record.last_used_at),
            replaced_by=record.replaced_by,
        )


class KeyCreated(KeyOut):
    """A new key. ``key`` (the secret) is here only in the response that created it; a replay of
    that request (same ``Idempotency-Key``) answers the same record without ``key``."""

    key: str | None = Field(default=None, description="The API key, shown once.")


class KeyPageOut(BaseModel):
    """One page of keys by id; pass ``next_cursor`` as ``?cursor=`` for the next."""

    items: list[KeyOut]
    next_cursor: str | None


class RollIn(_In):
    """How long the old key keeps working."""

    grace: int | None = Field(
        default=None, ge=0, le=MAX_SECONDS, description="Seconds (default 86400)."
    )


class RolledOut(BaseModel):
    """A roll: the new key (with its secret, once) and the old one as it is now."""

    new: KeyCreated
    old: KeyOut


class SigningKeyOut(BaseModel):
    """A signing key (public part only)."""

    kid: str
    alg: str
    state: str = Field(description="next, active or retired.")
    public_jwk: dict[str, Any]
    created_at: str | None
    activated_at: str | None
    retired_at: str | None

    @classmethod
    def of(cls, record: SigningKeyRecord) -> SigningKeyOut:
        """The view of a stored signing key (never its private material)."""
        return cls(
            kid=record.kid,
            alg=record.alg,
            state=record.state,
            public_jwk=record.public_jwk,
            created_at=iso(record.created_at),
            activated_at=iso(record.activated_at),
            retired_at=iso(record.retired_at),
        )


class SigningKeysOut(BaseModel):
    """Every signing key: next, active, then retired."""

    items: list[SigningKeyOut]


class RotateIn(_In):
    """A rotation."""

    force: bool = Field(
        default=False, description="Rotate even if the next key is newer than the cache margin."
    )


class AuditEventOut(BaseModel):
    """One audit event (never a secret)."""

    id: int
    at: str | None
    actor: str = Field(description="kind:name (token:billing, cli:alice, system:rotation).")
    action: str
    target: str
    request_id: str | None
    client: str | None
    changes: dict[str, Any]

    @classmethod
    def of(cls, record: AuditRecord) -> AuditEventOut:
        """The view of a stored event."""
        actor = (
            f"{record.actor_kind}:{record.actor_name}" if record.actor_name else record.actor_kind
        )
        return cls(
            id=record.id,
            at=iso(record.at),
            actor=actor,
            action=record.action,
            target=record.target,
            request_id=record.request_id,
            client=record.client,
            changes=record.changes,
        )


class AuditPageOut(BaseModel):
    """One page of events, newest first; pass ``next_cursor`` as ``?cursor=`` for the next."""

    items: list[AuditEventOut]
    next_cursor: str | None
