"""``keyswap usage``: metered usage per consumer (and key), top consumers, the rollup.

Thin shells over :mod:`keyswap.manage.usage`, with the conventions of :mod:`keyswap.gateway.cli`
(``--db``, ``--json``, one ``Error:`` line, exit 2 for a bad command line)::

    keyswap usage [CONSUMER] [--key KEY_ID] [--since 7d] [--until WHEN] [--by minute|hour|day] [--json]
    keyswap usage top [--by requests|errors] [--since 7d] [--limit 10] [--json]
    keyswap usage rollup [--minute-age 1d] [--hour-age 30d] [--retention 400d] [--json]

``keyswap usage`` without a consumer sums every consumer, with the requests refused before a key was
known. A consumer called ``top`` or ``rollup`` is read with ``keyswap usage show top``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import click

from keyswap.cli_support import Seconds
from keyswap.gateway.cli import (
    ManagedGroup,
    ParsedType,
    _print_json,
    _print_table,
    _time,
    db_option,
    handle_errors,
    json_option,
    open_store,
)
from keyswap.gateway.cli_admin import parse_since
from keyswap.manage import usage as manage
from keyswap.store.usage import DAY

__all__ = ["usage"]

_WHEN = ParsedType("when", parse_since, float)
_YEARS = 100 * 365 * DAY


class _UsageGroup(ManagedGroup):
    """``keyswap usage ARGS``: a subcommand when the first word names one, else ``show ARGS``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group("usage", cls=_UsageGroup)
def usage() -> None:
    """Metered usage: requests, status classes, bytes and latency per consumer and key.

    `keyswap usage [CONSUMER]` shows one consumer (every consumer without one; its options, such as
    --since, --by, --key and --json: `keyswap usage show --help`); `keyswap usage top` the busiest or
    most failing consumers; `keyswap usage rollup` merges old rows (gateways do it hourly).
    """


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(count)  # pragma: no cover


def _latency(bucket: manage.UsageBucket) -> str | None:
    mean = bucket.latency_mean
    return None if mean is None else f"{mean * 1000:.1f}ms"


def _rows(buckets: Sequence[manage.UsageBucket], by: str) -> list[list[str | None]]:
    shown = "%Y-%m-%dT%H:%MZ" if by != "day" else "%Y-%m-%d"
    rows: list[list[str | None]] = []
    for bucket in buckets:
        start = time.strftime(shown, time.gmtime(bucket.start))
        rows.append(
            [
                start,
                str(bucket.requests),
                str(bucket.status_2xx),
                str(bucket.status_3xx),
                str(bucket.status_4xx),
                str(bucket.status_5xx),
                str(bucket.unauthorized),
                str(bucket.rate_limited),
                _human_bytes(bucket.bytes_in),
                _human_bytes(bucket.bytes_out),
                _latency(bucket),
            ]
        )
    return rows


_HEADERS = ["START", "REQUESTS", "2XX", "3XX", "4XX", "5XX", "401", "429", "IN", "OUT", "LATENCY"]


def _total(buckets: Sequence[manage.UsageBucket]) -> manage.UsageBucket:
    def total(name: str) -> Any:
        return sum(getattr(b, name) for b in buckets)

    return manage.UsageBucket(
        start=buckets[0].start if buckets else 0.0,
        requests=total("requests"),
        status_2xx=total("status_2xx"),
        status_3xx=total("status_3xx"),
        status_4xx=total("status_4xx"),
        status_5xx=total("status_5xx"),
        bytes_in=total("bytes_in"),
        bytes_out=total("bytes_out"),
        unauthorized=total("unauthorized"),
        rate_limited=total("rate_limited"),
        latency_sum=total("latency_sum"),
        latency_buckets=(
            sum(b.latency_buckets[0] for b in buckets),
            sum(b.latency_buckets[1] for b in buckets),
            sum(b.latency_buckets[2] for b in buckets),
            sum(b.latency_buckets[3] for b in buckets),
            sum(b.latency_buckets[4] for b in buckets),
        ),
    )


@usage.command("show")
@click.argument("consumer", required=False)
@click.option(
    "--key", "key_id", metavar="KEY_ID", default=None, help="Only this API key's requests."
)
@click.option(
    "--since",
    metavar="WHEN",
    type=_WHEN,
    default="7d",
    show_default=True,
    help="From then: a duration back from now (7d, 12h) or an ISO date/time.",
)
@click.option(
    "--until", metavar="WHEN", type=_WHEN, default=None, help="Up to then (default: now)."
)
@click.option(
    "--by",
    type=click.Choice(["minute", "hour", "day"]),
    default="day",
    show_default=True,
    help="Bucket size (UTC).",
)
@json_option
@db_option
@handle_errors
def usage_show(
    consumer: str | None,
    key_id: str | None,
    since: float,
    until: float | None,
    by: Literal["minute", "hour", "day"],
    as_json: bool,
    db_url: str | None,
) -> None:
    """Usage of CONSUMER (every consumer without one) per bucket, oldest first.

    --json prints {"consumer", "key_id", "since", "until", "by", "buckets": [...], "total": {...}}.
    """
    end = time.time() if until is None else until
    with open_store(db_url, existing=True) as store:
        if consumer is None:
            buckets = manage.query_all(store, since=since, until=end, by=by, key_id=key_id)
        else:
            manage.require_consumer(store, consumer)
            buckets = manage.query(
                store, consumer_id=consumer, since=since, until=end, by=by, key_id=key_id
            )
    total = _total(buckets)
    if as_json:
        _print_json(
            {
                "consumer": consumer,
                "key_id": key_id,
                "since": _time(since),
                "until": _time(end),
                "by": by,
                "buckets": [{**b.to_json(), "start": _time(b.start)} for b in buckets],
                "total": {**total.to_json(), "start": _time(since)},
            }
        )
        return
    who = f"consumer '{consumer}'" if consumer else "every consumer"
    if key_id:
        who += f", key {key_id}"
    if not buckets:
        click.echo(f"No usage for {who} between {_time(since)} and {_time(end)}.")
        return
    click.echo(f"Usage of {who}, {_time(since)} to {_time(end)}, by {by}:")
    rows = _rows(buckets, by)
    rows.append(["TOTAL", *_rows([total], by)[0][1:]])
    _print_table(_HEADERS, rows)


@usage.command("top")
@click.option(
    "--by",
    "order",
    type=click.Choice(["requests", "errors"]),
    default="requests",
    show_default=True,
    help="Most requests, or highest error rate ((4xx + 5xx) / requests).",
)
@click.option("--since", metavar="WHEN", type=_WHEN, default="7d", show_default=True)
@click.option("--until", metavar="WHEN", type=_WHEN, default=None, help="Default: now.")
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option(
    "--min-requests",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="With --by errors: only consumers with at least this many requests.",
)
@json_option
@db_option
@handle_errors
def usage_top(
    order: Literal["requests", "errors"],
    since: float,
    until: float | None,
    limit: int,
    min_requests: int,
    as_json: bool,
    db_url: str | None,
) -> None:
    """The top consumers by requests or by error rate. --json prints {"consumers": [...]}."""
    end = time.time() if until is None else until
    with open_store(db_url, existing=True) as store:
        found = manage.top_consumers(
            store, since=since, until=end, by=order, limit=limit, min_requests=min_requests
        )
    if as_json:
        _print_json(
            {
                "since": _time(since),
                "until": _time(end),
                "by": order,
                "consumers": [
                    {
                        "consumer": c.consumer,
                        "error_rate": round(c.error_rate, 6),
                        **{k: v for k, v in c.totals.to_json().items() if k != "start"},
                    }
                    for c in found
                ],
            }
        )
        return
    if not found:
        click.echo("No usage in that period.")
        return
    rows: list[list[str | None]] = [
        [
            c.consumer,
            str(c.totals.requests),
            str(c.totals.errors),
            f"{c.error_rate * 100:.1f}%",
            str(c.totals.rate_limited),
            _human_bytes(c.totals.bytes_out),
            _latency(c.totals),
        ]
        for c in found
    ]
    _print_table(["CONSUMER", "REQUESTS", "ERRORS", "ERROR RATE", "429", "OUT", "LATENCY"], rows)


@usage.command("rollup")
@click.option(
    "--minute-age",
    type=Seconds(DAY, _YEARS),
    default="1d",
    show_default=True,
    help="Minute rows older than this become hour rows (at least 1d).",
)
@click.option(
    "--hour-age",
    type=Seconds(DAY, _YEARS),
    default="30d",
    show_default=True,
    help="Hour rows older than this become day rows.",
)
@click.option(
    "--retention",
    type=Seconds(0, _YEARS),
    default="400d",
    show_default=True,
    help="Day rows older than this are deleted (0: kept forever).",
)
@json_option
@db_option
@handle_errors
def usage_rollup(
    minute_age: float, hour_age: float, retention: float, as_json: bool, db_url: str | None
) -> None:
    """Merge old minute rows into hours and old hour rows into days; delete expired day rows.

    Gateways run it hourly with the defaults; it is idempotent and safe on several nodes at once.
    """
    policy = manage.RollupPolicy(minute_age=minute_age, hour_age=hour_age, retention=retention)
    with open_store(db_url, existing=True) as store:
        result = manage.rollup(store, now=time.time(), policy=policy)
    if as_json:
        _print_json({"minutes": result.minutes, "hours": result.hours, "expired": result.expired})
        return
    click.echo(
        f"Rolled up {result.minutes} minute row(s) into hours and {result.hours} hour row(s) "
        f"into days; deleted {result.expired} expired day row(s)."
    )
