"""Webhook commands: ``keyswap consumers set-webhook|webhook|clear-webhook|rotate-webhook-secret`` and
``keyswap webhooks events|deliveries|redeliver|dispatch``.

Thin shells over :mod:`keyswap.manage.webhooks` with the conventions of :mod:`keyswap.gateway.cli`
(``--db``, ``--json``, one ``Error:`` line, exit 2 for a bad command line). The ``consumers``
subcommands join that group when :mod:`keyswap.gateway.cli` is imported.
"""

from __future__ import annotations

import time
from typing import Any

import click

from keyswap.cli_support import Seconds
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
    open_secret,
    open_store,
    secret_file_option,
)
from keyswap.manage import webhooks as manage_webhooks
from keyswap.store.webhooks import Attempt, WebhookEvent

__all__ = ["webhooks"]


def _webhook_json(info: manage_webhooks.WebhookInfo) -> dict[str, Any]:
    return {
        "consumer": info.consumer,
        "url": info.url,
        "allow_http_loopback": info.allow_http_loopback,
        "created_at": _time(info.created_at),
        "updated_at": _time(info.updated_at),
    }


def _show_secret(created: manage_webhooks.NewSecret, as_json: bool, headline: str) -> None:
    if as_json:
        shown = _webhook_json(created.webhook)
        if created.secret is not None:
            shown["secret"] = created.secret
        _print_json(shown)
        return
    click.echo(headline)
    if created.secret is None:
        click.echo("Its signing secret is unchanged (rotate it with rotate-webhook-secret).")
        return
    click.echo(
        "Signing secret (shown only once; give it to the consumer now, it cannot be shown again):"
    )
    click.echo("")
    click.echo(f"    {created.secret}")
    click.echo("")
    click.echo("Receivers verify the webhook-signature header with it (Standard Webhooks).")


@consumers.command("set-webhook")
@click.argument("name")
@click.argument("url")
@click.option(
    "--allow-http-loopback",
    is_flag=True,
    help="Allow http:// and https:// to a loopback address (127.0.0.1, ::1, localhost): local development only.",
)
@json_option
@db_option
@secret_file_option
@handle_errors
def consumers_set_webhook(
    name: str,
    url: str,
    allow_http_loopback: bool,
    as_json: bool,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Send consumer NAME's events (key.leaked, key.revoked, key.rolled, quota.threshold) to URL.

    URL must be https:// to a public host. The first time, a signing secret (whsec_...) is generated
    and printed once; changing the URL later keeps it.
    """
    with open_store(db_url, existing=True) as store:
        created = manage_webhooks.set_webhook(
            manage_context(store),
            open_secret(store, secret_file),
            name,
            url,
            allow_http_loopback=allow_http_loopback,
        )
    _show_secret(created, as_json, f"Webhook of consumer '{name}': {created.webhook.url}")


@consumers.command("webhook")
@click.argument("name")
@json_option
@db_option
@handle_errors
def consumers_webhook(name: str, as_json: bool, db_url: str | None) -> None:
    """Show consumer NAME's webhook (never its secret)."""
    with open_store(db_url, existing=True) as store:
        info = manage_webhooks.get_webhook(manage_context(store), name)
    if as_json:
        _print_json(_webhook_json(info))
        return
    click.echo(f"Consumer:  {info.consumer}")
    click.echo(f"URL:       {info.url}")
    if info.allow_http_loopback:
        click.echo("Loopback:  allowed")
    click.echo(f"Created:   {_time(info.created_at)}")
    click.echo(f"Updated:   {_time(info.updated_at)}")


@consumers.command("clear-webhook")
@click.argument("name")
@json_option
@db_option
@handle_errors
def consumers_clear_webhook(name: str, as_json: bool, db_url: str | None) -> None:
    """Remove consumer NAME's webhook; its undelivered events fail."""
    with open_store(db_url, existing=True) as store:
        manage_webhooks.clear_webhook(manage_context(store), name)
    if as_json:
        _print_json({"consumer": name, "webhook": None})
    else:
        click.echo(f"Removed the webhook of consumer '{name}'.")


@consumers.command("rotate-webhook-secret")
@click.argument("name")
@json_option
@db_option
@secret_file_option
@handle_errors
def consumers_rotate_webhook_secret(
    name: str, as_json: bool, db_url: str | None, secret_file: str | None
) -> None:
    """Give consumer NAME's webhook a new signing secret (printed once; the old one stops at once)."""
    with open_store(db_url, existing=True) as store:
        created = manage_webhooks.rotate_secret(
            manage_context(store), open_secret(store, secret_file), name
        )
    _show_secret(created, as_json, f"New signing secret for the webhook of consumer '{name}'.")


# -- keyswap webhooks ----------------------------------------------------------------------------------


def _event_json(event: WebhookEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "consumer": event.consumer_name,
        "type": event.type,
        "state": event.state,
        "attempts": event.attempts,
        "created_at": _time(event.created_at),
        "next_attempt_at": _time(event.next_attempt_at),
        "finished_at": _time(event.finished_at),
        "payload": event.payload,
    }


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "event_id": attempt.event_id,
        "consumer": attempt.consumer_name,
        "type": attempt.event_type,
        "attempt": attempt.attempt,
        "at": _time(attempt.at),
        "url": attempt.url,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "duration_ms": round(attempt.duration * 1000, 1),
        "next_retry_at": _time(attempt.next_retry_at),
        "response_excerpt": attempt.response_excerpt,
    }


@click.group("webhooks", cls=ManagedGroup)
def webhooks() -> None:
    """Consumers' webhook events: list events and delivery attempts, redeliver, run the dispatcher."""


_LIMIT = click.IntRange(1, manage_webhooks.MAX_PAGE)


@webhooks.command("events")
@click.argument("consumer", required=False)
@click.option(
    "--state",
    type=click.Choice(["pending", "delivered", "failed"]),
    default=None,
    help="Only these.",
)
@click.option("--limit", type=_LIMIT, default=100, show_default=True, help="Most events listed.")
@json_option
@db_option
@handle_errors
def webhooks_events(
    consumer: str | None, state: str | None, limit: int, as_json: bool, db_url: str | None
) -> None:
    """List webhook events, newest first (of CONSUMER, or of every consumer)."""
    with open_store(db_url, existing=True) as store:
        events = manage_webhooks.list_webhook_events(
            manage_context(store), consumer, state=state, limit=limit
        )
    if as_json:
        _print_json([_event_json(e) for e in events])
        return
    if not events:
        click.echo("No webhook events.")
        return
    rows = [
        [
            e.id,
            e.consumer_name,
            e.type,
            e.state,
            str(e.attempts),
            _time(e.created_at),
            _time(e.next_attempt_at),
        ]
        for e in events
    ]
    _print_table(["ID", "CONSUMER", "TYPE", "STATE", "ATTEMPTS", "CREATED", "NEXT"], rows)


@webhooks.command("deliveries")
@click.argument("consumer", required=False)
@click.option("--event", "event_id", metavar="EVENT_ID", default=None, help="Only this event's.")
@click.option(
    "--before", type=click.IntRange(1), default=None, help="Cursor: attempts before this id."
)
@click.option("--limit", type=_LIMIT, default=100, show_default=True, help="Most attempts listed.")
@json_option
@db_option
@handle_errors
def webhooks_deliveries(
    consumer: str | None,
    event_id: str | None,
    before: int | None,
    limit: int,
    as_json: bool,
    db_url: str | None,
) -> None:
    """List delivery attempts, newest first (of CONSUMER, or of every consumer)."""
    with open_store(db_url, existing=True) as store:
        page = manage_webhooks.list_deliveries(
            manage_context(store), consumer, event_id=event_id, before=before, limit=limit
        )
    if as_json:
        _print_json(
            {"attempts": [_attempt_json(a) for a in page.attempts], "next_before": page.next_before}
        )
        return
    if not page.attempts:
        click.echo("No delivery attempts.")
        return
    rows = [
        [
            str(a.id),
            _time(a.at),
            a.consumer_name,
            a.event_id,
            a.event_type,
            str(a.attempt),
            str(a.status_code) if a.status_code is not None else a.error,
            f"{a.duration * 1000:.0f}ms",
            _time(a.next_retry_at),
        ]
        for a in page.attempts
    ]
    _print_table(
        ["ID", "AT", "CONSUMER", "EVENT", "TYPE", "#", "RESULT", "TOOK", "NEXT RETRY"], rows
    )
    if page.next_before is not None:
        click.echo(f"More: --before {page.next_before}")


@webhooks.command("redeliver")
@click.argument("event_id")
@json_option
@db_option
@handle_errors
def webhooks_redeliver(event_id: str, as_json: bool, db_url: str | None) -> None:
    """Deliver event EVENT_ID (msg_...) again now, with the same webhook-id."""
    with open_store(db_url, existing=True) as store:
        event = manage_webhooks.redeliver(manage_context(store), event_id)
    if as_json:
        _print_json(_event_json(event))
    else:
        click.echo(
            f"Event {event.id} ({event.type}) to consumer '{event.consumer_name}' is due now."
        )


@webhooks.command("dispatch")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit (for cron).")
@click.option(
    "--timeout",
    type=Seconds(0.1, 60),
    default=10.0,
    show_default=True,
    help="Seconds for each of connect, read and write of one delivery.",
)
@click.option(
    "--max-age",
    type=Seconds(60, 30 * 86400),
    default=86400.0,
    help="Retry a failed delivery until the event is this old (default 24h).",
)
@click.option(
    "--interval",
    type=Seconds(0.1, 3600),
    default=2.0,
    show_default=True,
    help="Without --once: seconds between rounds.",
)
@json_option
@db_option
@secret_file_option
@handle_errors
def webhooks_dispatch(
    once: bool,
    timeout: float,
    max_age: float,
    interval: float,
    as_json: bool,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Deliver due webhook events (keyswap gateway and keyswap admin do this too, unless
    --no-webhooks). Safe to run on several machines at once."""
    from keyswap.gateway.secret import check_secret
    from keyswap.webhooks.dispatch import Dispatcher, RetryPolicy

    with open_store(db_url, existing=True) as store:
        secret = open_secret(store, secret_file)
        check_secret(store, secret)
        dispatcher = Dispatcher(store, secret, policy=RetryPolicy(max_age=max_age), timeout=timeout)
        try:
            if once:
                made = dispatcher.drain()
                if as_json:
                    _print_json({"attempts": made})
                else:
                    click.echo(f"Made {made} delivery attempt(s).")
                return
            while True:  # pragma: no cover - runs until interrupted
                if dispatcher.run_once() < dispatcher.batch:
                    time.sleep(interval)
        except KeyboardInterrupt:  # pragma: no cover
            pass
        finally:
            dispatcher.close()
