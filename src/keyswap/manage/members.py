"""Consumer members: the people (an e-mail address or an OIDC subject) who may manage a consumer in the
developer portal. A signed-in person sees only the consumers they are a member of."""

from __future__ import annotations

from collections.abc import Iterable

from keyswap.manage.audit import recording
from keyswap.manage.context import Context
from keyswap.store.models import Consumer, MemberRecord, validate_member

__all__ = ["add_member", "consumers_of", "list_members", "remove_member"]


def add_member(ctx: Context, consumer: str, kind: str, value: str) -> MemberRecord:
    """Make a person a member of ``consumer`` (``kind``: ``email`` or ``subject``); audited as
    ``member.add`` on the consumer.

    Raises:
        InvalidInput: an unknown kind or a bad address or subject.
        NotFound: no such consumer.
        AlreadyExists: already a member.
    """
    kind, value = validate_member(kind, value)
    with recording(ctx, "member.add", f"consumer:{consumer}", {"kind": kind, "value": value}):
        return ctx.store.add_consumer_member(consumer, kind, value, now=ctx.now())


def remove_member(ctx: Context, consumer: str, member_id: int) -> MemberRecord:
    """Remove a member of ``consumer`` by id; audited as ``member.remove``. Their open portal
    sessions no longer show the consumer.

    Raises:
        NotFound: no such consumer or member.
    """
    with recording(ctx, "member.remove", f"consumer:{consumer}", {"member_id": member_id}):
        return ctx.store.remove_consumer_member(consumer, member_id)


def list_members(ctx: Context, consumer: str) -> list[MemberRecord]:
    """The members of ``consumer``, oldest first.

    Raises:
        NotFound: no such consumer.
    """
    return ctx.store.list_consumer_members(consumer)


def consumers_of(ctx: Context, identities: Iterable[tuple[str, str]]) -> list[Consumer]:
    """The consumers one person (any of their ``(kind, value)`` identities) is a member of, by name."""
    return ctx.store.consumers_of(identities)
