"""``keyswap consumers members add|remove|list``: who may manage a consumer in the developer portal."""

from __future__ import annotations

import click

from keyswap.cli_support import OneLineUsageError
from keyswap.errors import NotFound
from keyswap.gateway.cli import (
    ManagedGroup,
    _print_json,
    _print_table,
    _time,
    consumers,
    db_option,
    handle_errors,
    json_option,
    manage_context,
    open_store,
)
from keyswap.manage import members as manage_members
from keyswap.store.models import MemberRecord, validate_member

__all__ = ["consumers", "members"]


def _member_json(member: MemberRecord) -> dict[str, object]:
    return {
        "id": member.id,
        "consumer": member.consumer_name,
        "kind": member.kind,
        "value": member.value,
        "created_at": _time(member.created_at),
    }


def _who(email: str | None, subject: str | None) -> tuple[str, str]:
    if (email is None) == (subject is None):
        raise OneLineUsageError("give exactly one of --email and --subject")
    return ("email", email) if email is not None else ("subject", subject or "")


@consumers.group("members", cls=ManagedGroup)
def members() -> None:
    """Who may manage a consumer in the developer portal (e-mail addresses, OIDC subjects)."""


@members.command("add")
@click.argument("consumer")
@click.option("--email", metavar="ADDRESS", default=None, help="An e-mail address.")
@click.option("--subject", metavar="SUB", default=None, help="An OIDC subject (the 'sub' claim).")
@json_option
@db_option
@handle_errors
def members_add(
    consumer: str, email: str | None, subject: str | None, as_json: bool, db_url: str | None
) -> None:
    """Make a person a member of CONSUMER: they see it in the portal once signed in."""
    kind, value = _who(email, subject)
    with open_store(db_url, existing=True) as store:
        member = manage_members.add_member(manage_context(store), consumer, kind, value)
    if as_json:
        _print_json(_member_json(member))
    else:
        click.echo(f"Added {member.kind} {member.value} to consumer '{consumer}'.")


@members.command("remove")
@click.argument("consumer")
@click.option("--email", metavar="ADDRESS", default=None, help="An e-mail address.")
@click.option("--subject", metavar="SUB", default=None, help="An OIDC subject.")
@json_option
@db_option
@handle_errors
def members_remove(
    consumer: str, email: str | None, subject: str | None, as_json: bool, db_url: str | None
) -> None:
    """Remove a member of CONSUMER."""
    kind, value = validate_member(*_who(email, subject))
    with open_store(db_url, existing=True) as store:
        ctx = manage_context(store)
        found = [
            m
            for m in manage_members.list_members(ctx, consumer)
            if (m.kind, m.value) == (kind, value)
        ]
        if not found:
            raise NotFound(f"{kind} {value} is not a member of '{consumer}'")
        member = manage_members.remove_member(ctx, consumer, found[0].id)
    if as_json:
        _print_json(_member_json(member))
    else:
        click.echo(f"Removed {member.kind} {member.value} from consumer '{consumer}'.")


@members.command("list")
@click.argument("consumer")
@json_option
@db_option
@handle_errors
def members_list(consumer: str, as_json: bool, db_url: str | None) -> None:
    """List the members of CONSUMER."""
    with open_store(db_url, existing=True) as store:
        found = manage_members.list_members(manage_context(store), consumer)
    if as_json:
        _print_json([_member_json(m) for m in found])
        return
    if not found:
        click.echo("No members.")
        return
    _print_table(
        ["ID", "KIND", "MEMBER", "ADDED"],
        [[str(m.id), m.kind, m.value, _time(m.created_at)] for m in found],
    )
