"""``keyswap admin-tokens`` (credentials of the admin API) and ``keyswap audit list`` (the audit log).

Thin shells over :mod:`keyswap.manage.tokens` and :mod:`keyswap.manage.audit`; the same conventions as
:mod:`keyswap.gateway.cli` (``--db``, ``--json``, one ``Error:`` line, exit 2 for a bad command line).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from keyswap.cli_support import Seconds
from keyswap.durations import parse_duration
from keyswap.errors import InvalidInput
from keyswap.gateway.cli import (
    ManagedGroup,
    ParsedType,
    _print_json,
    _print_table,
    _time,
    db_option,
    handle_errors,
    json_option,
    manage_context,
    open_secret,
    open_store,
    secret_file_option,
)
from keyswap.manage import tokens as manage_tokens
from keyswap.manage.audit import MAX_PAGE, AuditQuery, list_events
from keyswap.manage.scopes import ADMIN, MANAGEMENT_SCOPES, parse_management_scopes
from keyswap.store.models import AdminTokenRecord, AuditRecord

__all__ = ["admin_tokens", "audit", "parse_since"]

_MAX_SECONDS = 100 * 365 * 86400


def _parse_admin_scopes(text: str) -> tuple[str, ...]:
    return parse_management_scopes(part for part in text.replace(",", " ").split() if part)


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``7d``, ``12h``) or an ISO 8601 date or time
    (``2026-01-31``, ``2026-01-31T12:00:00Z``; UTC unless it says otherwise); epoch seconds.

    Raises:
        InvalidInput: neither.
    """
    value = text.strip()
    current = datetime.now(UTC).timestamp() if now is None else now
    try:
        return current - parse_duration(value)
    except InvalidInput:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"--since {value[:40]!r}: give a duration (7d, 12h) or an ISO date/time (2026-01-31)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- admin tokens -------------------------------------------------------------------------------------


def _token_json(record: AdminTokenRecord, now: float) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "hint": record.hint,
        "scopes": list(record.scopes),
        "status": record.status_at(now),
        "created_at": _time(record.created_at),
        "expires_at": _time(record.expires_at),
        "revoked_at": _time(record.revoked_at),
    }


@click.group("admin-tokens", cls=ManagedGroup)
def admin_tokens() -> None:
    """Manage admin tokens: the credentials of the admin API (create, list, revoke)."""


@admin_tokens.command("create")
@click.argument("name")
@click.option(
    "--scopes",
    "scopes",
    metavar="SCOPES",
    required=True,
    type=ParsedType("scopes", _parse_admin_scopes, tuple),
    help=f"Comma-separated: {', '.join(MANAGEMENT_SCOPES)}, or {ADMIN} (all of them).",
)
@click.option(
    "--expires-in",
    metavar="DURATION",
    type=Seconds(1, _MAX_SECONDS),
    default=None,
    help="Lifetime: 90d, 12h, 30m, 45s or seconds. Default: no expiry.",
)
@json_option
@db_option
@secret_file_option
@handle_errors
def admin_tokens_create(
    name: str,
    scopes: tuple[str, ...],
    expires_in: float | None,
    as_json: bool,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Create admin token NAME (1-64 of letters, digits, '.', '_', '-'). It is printed once."""
    with open_store(db_url) as store:
        created = manage_tokens.create_admin_token(
            manage_context(store),
            open_secret(store, secret_file),
            manage_tokens.NewAdminToken(name, scopes, expires_in),
        )
    record = created.record
    if as_json:
        _print_json({**_token_json(record, record.created_at), "token": created.token})
        return
    click.echo(f"Created admin token {record.id} '{record.name}'.")
    click.echo("Admin token (shown only once; store it now, it cannot be shown again):")
    click.echo("")
    click.echo(f"    {created.token}")
    click.echo("")
    click.echo(f"Expires: {_time(record.expires_at) or 'never'}")
    click.echo(f"Scopes:  {','.join(record.scopes)}")


@admin_tokens.command("list")
@json_option
@db_option
@handle_errors
def admin_tokens_list(as_json: bool, db_url: str | None) -> None:
    """List admin tokens: ids, names, hints, scopes and status (never a token)."""
    with open_store(db_url, existing=True) as store:
        ctx = manage_context(store)
        records = manage_tokens.list_admin_tokens(ctx)
        now = ctx.now()
    if as_json:
        _print_json([_token_json(r, now) for r in records])
        return
    if not records:
        click.echo("No admin tokens.")
        return
    rows = [
        [
            r.id,
            r.name,
            r.hint,
            r.status_at(now),
            ",".join(r.scopes),
            _time(r.created_at),
            _time(r.expires_at),
            _time(r.revoked_at),
        ]
        for r in records
    ]
    _print_table(["ID", "NAME", "HINT", "STATUS", "SCOPES", "CREATED", "EXPIRES", "REVOKED"], rows)


@admin_tokens.command("revoke")
@click.argument("token_id", metavar="ID")
@json_option
@db_option
@handle_errors
def admin_tokens_revoke(token_id: str, as_json: bool, db_url: str | None) -> None:
    """Revoke the admin token ID at once."""
    with open_store(db_url, existing=True) as store:
        ctx = manage_context(store)
        record = manage_tokens.revoke_admin_token(ctx, token_id)
        now = ctx.now()
    if as_json:
        _print_json(_token_json(record, now))
    else:
        click.echo(f"Revoked admin token {record.id} '{record.name}'.")


# -- audit ----------------------------------------------------------------------------------------------


def _event_json(event: AuditRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": _time(event.at),
        "actor": f"{event.actor_kind}:{event.actor_name}" if event.actor_name else event.actor_kind,
        "action": event.action,
        "target": event.target,
        "request_id": event.request_id,
        "client": event.client,
        "changes": event.changes,
    }


@click.group("audit", cls=ManagedGroup)
def audit() -> None:
    """The audit log: every change, who made it, when and from where."""


@audit.command("list")
@click.option(
    "--since",
    metavar="WHEN",
    type=ParsedType("when", parse_since, float),
    default=None,
    help="Only events since then: a duration back from now (7d, 12h) or an ISO date/time.",
)
@click.option(
    "--actor", metavar="ACTOR", default=None, help="cli, token, oidc, system, or KIND:NAME."
)
@click.option(
    "--action",
    metavar="ACTION",
    default=None,
    help="An action (key.revoke) or a family (key: every key.* action).",
)
@click.option("--target", metavar="TARGET", default=None, help="A target (consumer:acme, key:ID).")
@click.option(
    "--before",
    metavar="ID",
    type=click.IntRange(1),
    default=None,
    help="Only events older than event ID (the next page: the last ID shown).",
)
@click.option(
    "--limit",
    metavar="N",
    type=click.IntRange(1, MAX_PAGE),
    default=50,
    show_default=True,
    help=f"Most events shown (1-{MAX_PAGE}).",
)
@json_option
@db_option
@handle_errors
def audit_list(
    since: float | None,
    actor: str | None,
    action: str | None,
    target: str | None,
    before: int | None,
    limit: int,
    as_json: bool,
    db_url: str | None,
) -> None:
    """List audit events, newest first. --json prints {"events": [...], "next_before": ID|null}."""
    query = AuditQuery(
        since=since, actor=actor, action=action, target=target, before=before, limit=limit
    )
    with open_store(db_url, existing=True) as store:
        page = list_events(manage_context(store), query)
    if as_json:
        _print_json(
            {"events": [_event_json(e) for e in page.events], "next_before": page.next_before}
        )
        return
    if not page.events:
        click.echo("No audit events.")
        return
    rows = [
        [
            str(e.id),
            _time(e.at),
            _event_json(e)["actor"],
            e.action,
            e.target,
            e.client,
            json.dumps(e.changes, separators=(",", ":"), ensure_ascii=False, sort_keys=True),
        ]
        for e in page.events
    ]
    _print_table(["ID", "AT", "ACTOR", "ACTION", "TARGET", "CLIENT", "CHANGES"], rows)
    if page.next_before is not None:
        click.echo(f"More: --before {page.next_before}")
