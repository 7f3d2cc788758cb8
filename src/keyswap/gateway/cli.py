"""Gateway commands: ``keyswap consumers|keys|signing-keys|db`` (and ``gateway``/``demo``, added below).

Every command takes ``--db URL`` (a SQLAlchemy URL or a SQLite file path). Without it: ``$KEYSWAP_DB``,
else the SQLite file ``keyswap.db`` in the data directory (``$KEYSWAP_DATA_DIR``, else
``$XDG_DATA_HOME/keyswap``, else ``~/.local/share/keyswap``). Commands that need the server secret also
take ``--secret-file`` (see :mod:`keyswap.gateway.secret` for where the secret comes from).

Errors print one ``Error: ...`` line, never a traceback. Exit status 2 when the command line is wrong and
nothing was done (unknown flags; bad values: JSON, new consumer names, durations, rates: parse them
with a click type such as :class:`RateType` or :class:`~keyswap.cli_support.Seconds`); 1 for everything
else (unknown consumers or key ids, no database, a port in use, ...). Commands that only read or act on
existing data open the store with ``existing=True`` (a missing database is an error, never created).

Adding a command: write a function decorated with a group's ``.command()`` (or ``@click.command`` for a
top-level one mapped in :mod:`keyswap.cli`), use :func:`db_option` / :func:`secret_file_option`, open
state with :func:`open_store` / :func:`open_secret`, and wrap the body with :func:`handle_errors`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click
from sqlalchemy.exc import SQLAlchemyError

from keyswap.cli_support import OneLineErrorsCommand, OneLineErrorsGroup, OneLineUsageError, Seconds
from keyswap.durations import format_duration
from keyswap.errors import ConfigError, KeyswapError
from keyswap.gateway.apikeys import DEFAULT_PREFIX
from keyswap.gateway.binding import (
    BOUND_DEFAULT_ALG,
    DEFAULT_BIND_MAX_BODY,
    DEFAULT_BIND_TTL,
    TOKEN_FORMATS,
    BindPolicy,
    describe,
    parse_bind_route,
)
from keyswap.gateway.keymaterial import SIGNING_ALGORITHMS
from keyswap.gateway.keyring import DEFAULT_CACHE_MARGIN, DEFAULT_TOKEN_TTL, Keyring
from keyswap.gateway.secret import ServerSecret, default_secret_file, load_secret
from keyswap.manage import consumers as manage_consumers
from keyswap.manage import keys as manage_keys
from keyswap.manage import signing as manage_signing
from keyswap.manage.actor import Actor
from keyswap.store import migrate
from keyswap.store.models import (
    UNLIMITED,
    ApiKeyRecord,
    Consumer,
    SigningKeyRecord,
    parse_metadata,
    parse_scopes,
    validate_consumer_name,
)
from keyswap.store.schema import SCHEMA_VERSION
from keyswap.store.sql import CreateMode, SchemaMode, Store
from keyswap.store.urls import (
    default_database_url,
    display_url,
    is_postgres,
    normalize_database_url,
    sqlite_file,
)

__all__ = [
    "ParsedType",
    "consumers",
    "db",
    "db_option",
    "demo",
    "gateway",
    "handle_errors",
    "key_prefix_option",
    "keys",
    "new_database_guard",
    "open_secret",
    "open_store",
    "resolve_db_url",
    "scopes_type",
    "secret_file_option",
    "signing_keys",
]

if TYPE_CHECKING:
    from keyswap.gateway.app import GatewayApp
    from keyswap.gateway.cluster import ClusterSettings
    from keyswap.gateway.ratelimit import Rate
    from keyswap.gateway.secretscanning import SecretScanningSettings
    from keyswap.manage.context import Context

F = TypeVar("F", bound=Callable[..., Any])

DB_HELP = (
    "Database: a SQLAlchemy URL or a SQLite file path. Default: $KEYSWAP_DB, else keyswap.db in "
    "$KEYSWAP_DATA_DIR, else $XDG_DATA_HOME/keyswap, else ~/.local/share/keyswap."
)

# -- shared plumbing ------------------------------------------------------------------------------------


# One-line usage errors: shared with `keyswap origin`.
ManagedCommand = OneLineErrorsCommand
ManagedGroup = OneLineErrorsGroup


def db_option(function: F) -> F:
    """``--db URL`` (stored as ``db_url``; ``None`` means the default, see :func:`resolve_db_url`)."""
    return click.option("--db", "db_url", metavar="URL", default=None, help=DB_HELP)(function)


def secret_file_option(function: F) -> F:
    """``--secret-file PATH`` (stored as ``secret_file``)."""
    return click.option(
        "--secret-file",
        "secret_file",
        metavar="PATH",
        default=None,
        help=(
            "File holding the server secret (created, mode 0600, if missing). Default: "
            "$KEYSWAP_SECRET, else $KEYSWAP_SECRET_FILE, else <database file>.secret beside a "
            "SQLite database."
        ),
    )(function)


def key_prefix_option(function: F) -> F:
    """``--key-prefix`` (``$KEYSWAP_KEY_PREFIX``, default ``ks``): the gateway and the CLI must agree."""
    return click.option(
        "--key-prefix",
        "key_prefix",
        metavar="PREFIX",
        envvar="KEYSWAP_KEY_PREFIX",
        default=DEFAULT_PREFIX,
        show_default=True,
        help="API key prefix (also $KEYSWAP_KEY_PREFIX); the gateway and `keys create|roll` must "
        "agree on it.",
    )(function)


def json_option(function: F) -> F:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(function)


class RateType(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """A rate limit flag: ``<requests>/<window>`` (``100/60s``, ``10/s``; converts to a ``Rate``) or
    one of ``keywords`` (case-insensitive; converts to the keyword's value). A bad value is a usage
    error (exit status 2)."""

    name = "rate"

    def __init__(self, keywords: dict[str, Any]) -> None:
        self.keywords = keywords

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from keyswap.gateway.ratelimit import Rate, parse_rate

        if isinstance(value, Rate):
            return value
        text = str(value).strip()
        if text.lower() in self.keywords:
            return self.keywords[text.lower()]
        try:
            return parse_rate(text)
        except KeyswapError as exc:
            words = " or ".join(repr(k) for k in self.keywords if k)
            self.fail(f"{exc.reason}; or {words}" if words else exc.reason, param, ctx)


class WorkersType(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """``--workers``: a count (1-1024) or ``auto`` (one per CPU)."""

    name = "workers"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from keyswap.gateway.workers import resolve_workers

        if isinstance(value, int):
            return value
        try:
            return resolve_workers(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a worker count (1-1024) or 'auto'", param, ctx)


class ParsedType(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """A value read by one of keyswap's parsers; what the parser refuses is a usage error (exit 2)."""

    def __init__(self, name: str, parse: Callable[[str], Any], parsed: type) -> None:
        self.name = name
        self._parse = parse
        self._parsed = parsed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self._parsed):
            return value  # a default, or a value converted once already
        try:
            return self._parse(str(value))
        except KeyswapError as exc:
            self.fail(exc.reason, param, ctx)


def _metadata_type() -> ParsedType:
    """Consumer metadata: a JSON object of at most 1 KiB."""
    return ParsedType("json", parse_metadata, dict)


def scopes_type() -> ParsedType:
    """Scopes, comma- or space-separated, as a tuple."""
    return ParsedType("scopes", parse_scopes, tuple)


def _consumer_name_type() -> ParsedType:
    """A new consumer's name."""
    return ParsedType("name", validate_consumer_name, type(None))


#: Longest duration a flag takes (100 years).
_MAX_SECONDS = 100 * 365 * 86400


def resolve_db_url(db_url: str | None) -> str:
    """The database URL for ``--db`` (``None``: ``$KEYSWAP_DB`` or the default SQLite file)."""
    return default_database_url() if db_url is None else normalize_database_url(db_url)


def _db_is_explicit(db_url: str | None) -> bool:
    """True when the database was named (``--db`` or ``$KEYSWAP_DB``), not the default data dir."""
    return db_url is not None or bool(os.environ.get("KEYSWAP_DB", "").strip())


def _create_mode(db_url: str | None, *, existing: bool) -> CreateMode:
    if existing:
        return "none"
    return "file" if _db_is_explicit(db_url) else "dirs"


def check_db_location(db_url: str | None) -> str:
    """The URL for ``--db``, refused if it names a SQLite file in a directory that does not exist.

    Raises:
        ConfigError: ``cannot create the database PATH: the directory DIR does not exist``.
    """
    url = resolve_db_url(db_url)
    path = sqlite_file(url)
    if path is not None and _db_is_explicit(db_url) and not path.parent.is_dir():
        raise ConfigError(
            f"cannot create the database {path}: the directory {path.parent} does not exist"
        )
    return url


class StartGuard:
    """What :func:`new_database_guard` yields: call :meth:`started` once start-up has succeeded."""

    def __init__(self) -> None:
        self.done = False

    def started(self) -> None:
        """Start-up succeeded: from now on, the database stays whatever happens."""
        self.done = True


@contextmanager
def new_database_guard(url: str) -> Iterator[StartGuard]:
    """A failed start leaves no database behind: if ``url`` names a SQLite file that does not exist
    yet and the block raises before :meth:`StartGuard.started`, the file that start-up created is
    removed again (with its ``-wal``, ``-shm`` and ``-journal`` files, and the ``.secret`` file beside
    it if that was created too). Other databases, and files that existed before, are never touched.
    Directories stay."""
    guard = StartGuard()
    path = sqlite_file(url)
    if path is None or path.exists():
        yield guard
        return
    secret = default_secret_file(url)
    created = [path, *(path.with_name(path.name + tail) for tail in ("-wal", "-shm", "-journal"))]
    if secret is not None and not secret.exists():
        created.append(secret)
    try:
        yield guard
    except BaseException:
        if not guard.done:
            for leftover in created:
                with suppress(OSError):
                    leftover.unlink(missing_ok=True)
        raise


@contextmanager
def open_store(
    db_url: str | None,
    *,
    schema: SchemaMode = "auto",
    existing: bool = False,
    redis_url: str | None = None,
) -> Iterator[Store]:
    """Open the store for ``--db`` and close it afterwards.

    A SQLite database is created or upgraded on open; another database must be at the newest schema
    (``keyswap db upgrade``). What may be created: with ``existing=True`` (read-only commands and
    those acting on existing consumers or keys) nothing (``no database at PATH``); for a database
    named by ``--db`` or ``$KEYSWAP_DB``, the file but not its directory; for the default database,
    the file and the data directory. With ``$KEYSWAP_REDIS_URL`` set (as for ``keyswap gateway
    --redis``), every change is also announced on Redis (prefix ``$KEYSWAP_REDIS_PREFIX``), so
    gateways sharing a SQLite file hear about it at once; on PostgreSQL the database announces changes
    itself. ``redis_url`` (``keyswap admin --redis``) overrides ``$KEYSWAP_REDIS_URL``. A bad
    ``$KEYSWAP_AUDIT_RETENTION`` is a usage error (exit 2) before anything is opened.
    """
    from keyswap.manage.context import audit_retention_from_env

    try:  # a bad $KEYSWAP_AUDIT_RETENTION is a usage error, before anything is opened or created
        audit_retention_from_env()
    except ConfigError as exc:
        raise OneLineUsageError(exc.reason) from None
    store = Store(
        resolve_db_url(db_url), schema=schema, create=_create_mode(db_url, existing=existing)
    )
    changes = None
    try:
        if redis_url is None:
            redis_url = os.environ.get("KEYSWAP_REDIS_URL", "").strip()
        if redis_url:
            from keyswap.gateway.redisbus import DEFAULT_PREFIX, RedisChanges

            changes = RedisChanges(
                redis_url, prefix=os.environ.get("KEYSWAP_REDIS_PREFIX") or DEFAULT_PREFIX
            )
            store.on_commit(changes.publish)
        yield store
    finally:
        if changes is not None:
            changes.stop()
        store.close()


def manage_context(store: Store) -> Context:
    """The service-layer context of a CLI command: actor ``cli`` with the OS user, the audit
    retention from ``$KEYSWAP_AUDIT_RETENTION`` (default 365 days)."""
    from keyswap.manage.context import Context, audit_retention_from_env

    return Context(store, Actor.cli(), audit_retention=audit_retention_from_env())


def open_secret(store: Store, secret_file: str | None) -> ServerSecret:
    """Load the server secret for ``store`` (``--secret-file`` first; see keyswap.gateway.secret)."""
    return load_secret(store.url, secret_file=secret_file)


def handle_errors(function: F) -> F:
    """Turn keyswap and database errors into one ``Error: ...`` line and exit status 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except KeyswapError as exc:
            raise click.ClickException(exc.reason) from None
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise click.ClickException(f"database error: {_first_line(cause)}") from None
        except OSError as exc:
            raise click.ClickException(
                f"{exc.strerror or exc}: {exc.filename or ''}".strip()
            ) from None

    return wrapper  # type: ignore[return-value]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _time(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str | None]]) -> None:
    cells = [[cell if cell is not None else "-" for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


# -- consumers ------------------------------------------------------------------------------------------


def _consumer_json(consumer: Consumer) -> dict[str, Any]:
    return {
        "id": consumer.id,
        "name": consumer.name,
        "metadata": consumer.metadata,
        "created_at": _time(consumer.created_at),
        "rate_limit": consumer.rate_limit,
        "scopes": list(consumer.scopes),
        "max_connections": consumer.max_connections,
        "leak_policy": consumer.leak_policy,
        "quota": consumer.quota,
        "credits": consumer.credits,
        "credits_refill": consumer.credits_refill,
        "credits_set_at": None
        if consumer.credits_set_at is None
        else _time(consumer.credits_set_at),
    }


def _credits_text(consumer: Consumer) -> str:
    if consumer.credits is None:
        return "-"
    refill = consumer.credits_refill
    return f"{consumer.credits};refill={refill}" if refill else str(consumer.credits)


SCOPES_HELP = (
    "Scopes, separated by commas (orders:read,orders:write); each 1-64 printable ASCII characters "
    "without space, '\"', '\\' or ','."
)


def _scopes_text(scopes: Sequence[str]) -> str:
    return ",".join(scopes) or "-"


@click.group(cls=ManagedGroup)
def consumers() -> None:
    """Manage API consumers (who the keys belong to)."""


@consumers.command("create")
@click.argument("name", type=_consumer_name_type())
@click.option(
    "--metadata",
    "metadata",
    metavar="JSON",
    type=_metadata_type(),
    default=None,
    help="JSON object (<= 1 KiB).",
)
@click.option(
    "--scopes",
    "scopes",
    metavar="SCOPES",
    type=scopes_type(),
    default=None,
    help=SCOPES_HELP + " Default: none.",
)
@json_option
@db_option
@handle_errors
def consumers_create(
    name: str,
    metadata: dict[str, Any] | None,
    scopes: tuple[str, ...] | None,
    as_json: bool,
    db_url: str | None,
) -> None:
    """Create consumer NAME (1-64 characters of letters, digits, '.', '_', '-').

    --scopes are what its keys may be granted: the `scope` claim of the tokens the gateway mints.
    """
    with open_store(db_url) as store:
        consumer = manage_consumers.create_consumer(
            manage_context(store),
            manage_consumers.NewConsumer(name, metadata or {}, scopes or ()),
        )
    if as_json:
        _print_json(_consumer_json(consumer))
    else:
        click.echo(f"Created consumer '{consumer.name}'.")


@consumers.command("list")
@json_option
@db_option
@handle_errors
def consumers_list(as_json: bool, db_url: str | None) -> None:
    """List consumers."""
    with open_store(db_url, existing=True) as store:
        everyone = manage_consumers.list_consumers(manage_context(store))
    if as_json:
        _print_json([_consumer_json(c) for c in everyone])
        return
    if not everyone:
        click.echo("No consumers.")
        return
    rows = [
        [
            c.name,
            _time(c.created_at),
            c.rate_limit or "default",
            c.quota or "-",
            _credits_text(c),
            _scopes_text(c.scopes),
            json.dumps(c.metadata, separators=(",", ":"), ensure_ascii=False),
        ]
        for c in everyone
    ]
    _print_table(["NAME", "CREATED", "RATE_LIMIT", "QUOTA", "CREDITS", "SCOPES", "METADATA"], rows)


@consumers.command("set-metadata")
@click.argument("name")
@click.argument("metadata", metavar="JSON", type=_metadata_type())
@json_option
@db_option
@handle_errors
def consumers_set_metadata(
    name: str, metadata: dict[str, Any], as_json: bool, db_url: str | None
) -> None:
    """Replace the metadata of consumer NAME with the JSON object JSON."""
    with open_store(db_url, existing=True) as store:
        consumer = manage_consumers.update_consumer(
            manage_context(store), name, manage_consumers.ConsumerUpdate(metadata=metadata)
        )
    if as_json:
        _print_json(_consumer_json(consumer))
    else:
        click.echo(f"Updated the metadata of consumer '{consumer.name}'.")


@consumers.command("set-scopes")
@click.argument("name")
@click.argument("scopes", metavar="SCOPES", type=scopes_type())
@json_option
@db_option
@handle_errors
def consumers_set_scopes(
    name: str, scopes: tuple[str, ...], as_json: bool, db_url: str | None
) -> None:
    """Replace the scopes of consumer NAME with SCOPES (comma-separated; '' clears them).

    Keys created with scopes of their own keep them, but carry only those the consumer still has;
    keys without their own carry the consumer's. Running gateways pick the change up within a second.
    """
    with open_store(db_url, existing=True) as store:
        consumer = manage_consumers.update_consumer(
            manage_context(store), name, manage_consumers.ConsumerUpdate(scopes=scopes)
        )
    if as_json:
        _print_json(_consumer_json(consumer))
    elif consumer.scopes:
        click.echo(f"Consumer '{consumer.name}' now has the scopes {','.join(consumer.scopes)}.")
    else:
        click.echo(f"Consumer '{consumer.name}' now has no scopes.")


@consumers.command("set-limit")
@click.argument("name")
@click.option(
    "--rate",
    metavar="RATE",
    type=RateType({"default": "default", UNLIMITED: UNLIMITED}),
    default=None,
    help="REQUESTS/WINDOW (100/60s, 100/1m, 10/s), 'unlimited', or 'default' (the gateway's "
    "--rate-limit).",
)
@click.option(
    "--connections",
    metavar="N",
    default=None,
    help="Most requests in flight to the upstream at once (per gateway process), 1-10000, or "
    "'default' (the gateway's --max-connections-per-consumer).",
)
@json_option
@db_option
@handle_errors
def consumers_set_limit(
    name: str, rate: Any, connections: str | None, as_json: bool, db_url: str | None
) -> None:
    """Set the rate limit and/or the connection cap of consumer NAME (shared by all its keys)."""
    if rate is None and connections is None:
        raise OneLineUsageError("give --rate, --connections or both")
    cap: int | None = None
    if connections is not None and connections.strip().lower() != "default":
        try:
            cap = int(connections.strip())
        except ValueError:
            cap = 0
        if not 1 <= cap <= 10_000:
            raise OneLineUsageError(
                f"--connections must be a whole number 1-10000 or 'default', got {connections!r}"
            )
    value: str | None = None if rate in (None, "default") else str(rate)
    update = manage_consumers.ConsumerUpdate(
        rate_limit=manage_consumers.KEEP if rate is None else value,
        max_connections=manage_consumers.KEEP if connections is None else cap,
    )
    with open_store(db_url, existing=True) as store:
        consumer = manage_consumers.update_consumer(manage_context(store), name, update)
    if as_json:
        _print_json(_consumer_json(consumer))
        return
    if connections is not None:
        if cap is None:
            click.echo(f"Consumer '{consumer.name}' now has the gateway's default connection cap.")
        else:
            click.echo(f"Consumer '{consumer.name}' may have {cap} requests in flight at once.")
    if rate is None:
        return
    if value is None:
        click.echo(f"Consumer '{consumer.name}' now has the gateway's default rate limit.")
    elif value == UNLIMITED:
        click.echo(f"Consumer '{consumer.name}' is not rate limited.")
    else:
        click.echo(f"Consumer '{consumer.name}' may make {value} (requests/window).")


@consumers.command("set-leak-policy")
@click.argument("name")
@click.argument("policy", type=click.Choice(["revoke", "roll", "notify", "default"]))
@json_option
@db_option
@handle_errors
def consumers_set_leak_policy(name: str, policy: str, as_json: bool, db_url: str | None) -> None:
    """What happens when a key of consumer NAME is found in public: revoke it, roll it (a new key
    delivered only by the consumer's webhook), notify only, or the gateway's default (--leak-policy).
    """
    from keyswap.manage.leaks import parse_policy, set_leak_policy

    with open_store(db_url, existing=True) as store:
        consumer = set_leak_policy(manage_context(store), name, parse_policy(policy))
    if as_json:
        _print_json(_consumer_json(consumer))
    else:
        click.echo(
            f"Leak policy of consumer '{consumer.name}': {consumer.leak_policy or 'default'}."
        )


@consumers.command("set-quota")
@click.argument("name")
@click.argument("quota", metavar="QUOTA")
@json_option
@db_option
@handle_errors
def consumers_set_quota(name: str, quota: str, as_json: bool, db_url: str | None) -> None:
    """Set the request quota of consumer NAME: REQUESTS/day or REQUESTS/month (calendar periods,
    UTC), or 'off'.

    Past it, the gateway answers 429 until the next period. Shared by all the consumer's keys; exact
    across gateways with --redis, per gateway without. Running gateways pick the change up within a
    second.
    """
    from keyswap.manage import quotas as manage_quotas

    try:
        value = manage_quotas.canonical(quota)
    except KeyswapError as exc:
        raise OneLineUsageError(exc.reason) from None
    with open_store(db_url, existing=True) as store:
        consumer = manage_quotas.set_quota(manage_context(store), name, value)
    if as_json:
        _print_json(_consumer_json(consumer))
    elif consumer.quota is None:
        click.echo(f"Consumer '{consumer.name}' has no quota.")
    else:
        click.echo(f"Consumer '{consumer.name}' may make {consumer.quota} (requests/period).")


@consumers.command("set-credits")
@click.argument("name")
@click.argument("credits", metavar="CREDITS")
@click.option(
    "--refill",
    metavar="AMOUNT/PERIOD",
    default=None,
    help="Set the balance back to AMOUNT at the start of every day or month (UTC): 500/month, "
    "100/day; 'never' (the default) for a balance that never refills.",
)
@json_option
@db_option
@handle_errors
def consumers_set_credits(
    name: str, credits: str, refill: str | None, as_json: bool, db_url: str | None
) -> None:
    """Grant consumer NAME a balance of CREDITS requests from now (0-10^12), or 'off'.

    Each request the gateway accepts spends one; at 0 it answers 429 (until the refill, if any).
    Setting credits again starts a new balance: what the previous one had left is replaced.
    """
    from keyswap.manage import quotas as manage_quotas

    amount: int | None = None
    if credits.strip().lower() != "off":
        try:
            amount = int(credits.strip())
        except ValueError:
            amount = -1
        if not 0 <= amount <= 1_000_000_000_000:
            raise OneLineUsageError(
                f"CREDITS must be a whole number 0-1000000000000 or 'off', got {credits[:40]!r}"
            )
    refill_value: str | None = None
    if refill is not None and refill.strip().lower() not in ("never", "off"):
        if amount is None:
            raise OneLineUsageError("--refill needs credits, not 'off'")
        try:
            refill_value = manage_quotas.canonical(refill)
        except KeyswapError as exc:
            raise OneLineUsageError(f"--refill: {exc.reason}; or 'never'") from None
    with open_store(db_url, existing=True) as store:
        consumer = manage_quotas.set_credits(
            manage_context(store), name, amount, refill=refill_value
        )
    if as_json:
        _print_json(_consumer_json(consumer))
    elif consumer.credits is None:
        click.echo(f"Consumer '{consumer.name}' has no credits.")
    elif consumer.credits_refill is None:
        click.echo(f"Consumer '{consumer.name}' has {consumer.credits} credits (never refilled).")
    else:
        click.echo(
            f"Consumer '{consumer.name}' has {consumer.credits} credits, refilled to "
            f"{consumer.credits_refill}."
        )


@consumers.command("quota")
@click.argument("name")
@json_option
@db_option
@handle_errors
def consumers_quota(name: str, as_json: bool, db_url: str | None) -> None:
    """Show where consumer NAME stands: limit, used and remaining of its quota and credits.

    The counts are those the gateways have recorded (each writes them every 2 s).
    """
    from keyswap.manage import quotas as manage_quotas

    with open_store(db_url, existing=True) as store:
        found = manage_quotas.quota_status(manage_context(store), name)
    if as_json:
        _print_json([_status_json(status) for status in found])
        return
    if not found:
        click.echo(f"Consumer '{name}' has no quota and no credits.")
        return
    rows = [
        [
            s.kind,
            s.period,
            str(s.limit),
            str(s.used),
            str(s.remaining),
            "never" if s.refills_at is None else _time(s.refills_at),
        ]
        for s in found
    ]
    _print_table(["KIND", "PERIOD", "LIMIT", "USED", "REMAINING", "REFILLS_AT"], rows)


def _status_json(status: Any) -> dict[str, Any]:
    return {
        "kind": status.kind,
        "period": status.period,
        "limit": status.limit,
        "used": status.used,
        "remaining": status.remaining,
        "refills_at": None if status.refills_at is None else _time(status.refills_at),
    }


@consumers.command("delete")
@click.argument("name")
@click.option(
    "--yes",
    "-y",
    "yes",
    is_flag=True,
    help="Do not ask for confirmation (needed without a terminal).",
)
@json_option
@db_option
@handle_errors
def consumers_delete(name: str, yes: bool, as_json: bool, db_url: str | None) -> None:
    """Delete consumer NAME and all its API keys (they stop working at once).

    Asks for confirmation on a terminal; scripts pass --yes (without a terminal and without --yes,
    nothing is deleted and the command fails).
    """
    if not yes and not _stdin_is_terminal():
        raise click.ClickException(
            f"not deleting consumer '{name}' without confirmation: pass --yes (no terminal to ask on)"
        )
    with open_store(db_url, existing=True) as store:
        ctx = manage_context(store)
        if not yes:
            count = manage_consumers.count_keys(ctx, name)
            if not click.confirm(
                f"Delete consumer '{name}' and its {count} API key(s)? They stop working at once.",
                default=False,
                err=True,
            ):
                raise click.ClickException(f"consumer '{name}' was not deleted")
        deleted = manage_consumers.delete_consumer(ctx, name).api_keys_deleted
    if as_json:
        _print_json({"deleted": name, "api_keys_deleted": deleted})
    else:
        click.echo(f"Deleted consumer '{name}' and {deleted} API key(s).")


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: no one to ask
        return False


# -- keys -----------------------------------------------------------------------------------------------


def _key_json(record: ApiKeyRecord, now: float) -> dict[str, Any]:
    return {
        "id": record.id,
        "consumer": record.consumer_name,
        "hint": record.hint,
        "status": record.status_at(now),
        "created_at": _time(record.created_at),
        "expires_at": _time(record.expires_at),
        "revoked_at": _time(record.revoked_at),
        "last_used_at": _time(record.last_used_at),
        "replaced_by": record.replaced_by,
        "scopes": None if record.scopes is None else list(record.scopes),
        "effective_scopes": list(record.effective_scopes),
    }


def _show_new_key(record: ApiKeyRecord, key: str, as_json: bool, headline: str) -> None:
    if as_json:
        _print_json(
            {
                "id": record.id,
                "key": key,
                "consumer": record.consumer_name,
                "hint": record.hint,
                "expires_at": _time(record.expires_at),
                "scopes": None if record.scopes is None else list(record.scopes),
                "effective_scopes": list(record.effective_scopes),
            }
        )
        return
    click.echo(headline)
    click.echo("API key (shown only once; store it now, it cannot be shown again):")
    click.echo("")
    click.echo(f"    {key}")
    click.echo("")
    click.echo(f"Expires: {_time(record.expires_at) or 'never'}")
    inherited = " (its consumer's)" if record.scopes is None else ""
    click.echo(f"Scopes:  {_scopes_text(record.effective_scopes)}{inherited}")


@click.group(cls=ManagedGroup)
def keys() -> None:
    """Manage consumers' API keys (create, list, revoke, roll)."""


@keys.command("create")
@click.argument("consumer")
@click.option(
    "--expires-in",
    metavar="DURATION",
    type=Seconds(1, _MAX_SECONDS),
    default=None,
    help="Lifetime: 90d, 12h, 30m, 45s or seconds.",
)
@click.option(
    "--scopes",
    "scopes",
    metavar="SCOPES",
    type=scopes_type(),
    default=None,
    help=SCOPES_HELP + " Each must be one of the consumer's; '' gives the key none. "
    "Default: the consumer's scopes, whatever they are at the time.",
)
@json_option
@key_prefix_option
@db_option
@secret_file_option
@handle_errors
def keys_create(
    consumer: str,
    expires_in: float | None,
    scopes: tuple[str, ...] | None,
    as_json: bool,
    key_prefix: str,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Create an API key for CONSUMER. The key is printed once and never stored."""
    with open_store(db_url, existing=True) as store:
        created = manage_keys.create_key(
            manage_context(store),
            open_secret(store, secret_file),
            manage_keys.NewKey(consumer, expires_in, scopes),
            prefix=key_prefix,
        )
    record, key = created.record, created.key
    _show_new_key(record, key, as_json, f"Created key {record.id} for consumer '{consumer}'.")


@keys.command("list")
@click.argument("consumer", required=False)
@json_option
@db_option
@handle_errors
def keys_list(consumer: str | None, as_json: bool, db_url: str | None) -> None:
    """List API keys (of CONSUMER, if given). Shows ids and hints, never keys."""
    with open_store(db_url, existing=True) as store:
        records = manage_keys.list_keys(manage_context(store), consumer)
    now = datetime.now(UTC).timestamp()
    if as_json:
        _print_json([_key_json(r, now) for r in records])
        return
    if not records:
        click.echo("No API keys.")
        return
    rows = [
        [
            r.id,
            r.consumer_name,
            r.hint,
            r.status_at(now),
            _time(r.created_at),
            _time(r.expires_at),
            _time(r.revoked_at),
            _time(r.last_used_at),
            _scopes_text(r.effective_scopes) + ("" if r.scopes is None else " (own)"),
        ]
        for r in records
    ]
    _print_table(
        [
            "ID",
            "CONSUMER",
            "HINT",
            "STATUS",
            "CREATED",
            "EXPIRES",
            "REVOKED",
            "LAST USED",
            "SCOPES",
        ],
        rows,
    )


@keys.command("scan")
@click.argument("source", metavar="[PATH|-]", default="-")
@click.option(
    "--apply",
    "apply_policy",
    is_flag=True,
    help="Do it: apply each key's leak policy (audited as actor scan:<user>).",
)
@click.option(
    "--url",
    "base_url",
    metavar="URL",
    default=None,
    help="Where the scanned content is public (recorded instead of PATH:LINE for plain text).",
)
@click.option(
    "--leak-policy",
    envvar="KEYSWAP_LEAK_POLICY",
    type=click.Choice(["revoke", "roll", "notify"]),
    default="revoke",
    show_default=True,
    help="The policy of consumers without their own (as the gateway's --leak-policy). "
    "$KEYSWAP_LEAK_POLICY.",
)
@json_option
@key_prefix_option
@db_option
@secret_file_option
@handle_errors
def keys_scan(
    source: str,
    apply_policy: bool,
    base_url: str | None,
    leak_policy: str,
    as_json: bool,
    key_prefix: str,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Find keyswap keys in PATH (or stdin): plain text, or a gitleaks / TruffleHog JSON report.

    Prints, for each key found, its consumer, key id and what its leak policy would do; --apply does
    it. Never prints a key (only its hint).
    """
    from keyswap.gateway.leakscan import find_keys
    from keyswap.manage.context import Context, audit_retention_from_env
    from keyswap.manage.leaks import Finding, assess, report_leaks

    if source == "-":
        text = sys.stdin.read()
        name = "stdin"
    else:
        with open(source, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        name = source
    findings = find_keys(text, name=name, prefix=key_prefix)
    if base_url:
        findings = [
            Finding(f.token, base_url if f.token_type == _TEXT else f.url, f.token_type)
            for f in findings
        ]
    with open_store(db_url, existing=True) as store:
        secret = open_secret(store, secret_file)
        if apply_policy:
            ctx = Context(store, Actor.scan(), audit_retention=audit_retention_from_env())
            outcomes = report_leaks(
                ctx, secret, findings, source="scan", prefix=key_prefix, default_policy=leak_policy
            )
        else:
            outcomes = assess(
                manage_context(store),
                secret,
                findings,
                prefix=key_prefix,
                default_policy=leak_policy,
            )
    rows: list[dict[str, Any]] = []
    for outcome in outcomes:
        token = outcome.finding.token
        rows.append(
            {
                "found_at": outcome.finding.url,
                "consumer": outcome.consumer,
                "key_id": outcome.key_id,
                "hint": outcome.hint or f"{token.split('_', 1)[0]}_...{token[-4:]}",
                "status": outcome.status or "unknown",
                "label": outcome.label,
                "action": outcome.action,
                "replay": outcome.replay,
                "new_key_id": outcome.new_key_id,
                "applied": apply_policy,
            }
        )
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("No keyswap keys found.")
        return
    _print_table(
        ["FOUND_AT", "CONSUMER", "KEY_ID", "HINT", "STATUS", "ACTION"],
        [
            [
                row["found_at"],
                row["consumer"],
                row["key_id"],
                row["hint"],
                row["status"],
                _scan_action(row),
            ]
            for row in rows
        ],
    )
    if not apply_policy and any(row["action"] not in ("none",) for row in rows):
        click.echo("Nothing was changed: run again with --apply to do it.")


_TEXT = "text"  # the token type of plain-text findings (keyswap.gateway.leakscan)


def _scan_action(row: dict[str, Any]) -> str:
    action = str(row["action"])
    if action == "none":
        return "none (not a live key)"
    if row["replay"]:
        return f"{action} (already done)"
    if not row["applied"]:
        return f"would {action}"
    return action + (f" -> {row['new_key_id']}" if row["new_key_id"] else "")


@keys.command("revoke")
@click.argument("key_id")
@json_option
@db_option
@handle_errors
def keys_revoke(key_id: str, as_json: bool, db_url: str | None) -> None:
    """Revoke the key KEY_ID at once (running gateways notice within seconds)."""
    with open_store(db_url, existing=True) as store:
        ctx = manage_context(store)
        record = manage_keys.revoke_key(ctx, key_id)
        now = ctx.now()
    if as_json:
        _print_json(_key_json(record, now))
    else:
        click.echo(f"Revoked key {record.id} of consumer '{record.consumer_name}'.")


@keys.command("roll")
@click.argument("key_id")
@click.option(
    "--grace",
    metavar="DURATION",
    type=Seconds(0, _MAX_SECONDS),
    default=None,
    help="How long the old key keeps working (default 24h; 0 = stop now).",
)
@json_option
@key_prefix_option
@db_option
@secret_file_option
@handle_errors
def keys_roll(
    key_id: str,
    grace: float | None,
    as_json: bool,
    key_prefix: str,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Replace KEY_ID with a new key for the same consumer (inheriting its expiry, if any)."""
    with open_store(db_url, existing=True) as store:
        rolled = manage_keys.roll_key(
            manage_context(store),
            open_secret(store, secret_file),
            key_id,
            grace=grace,
            prefix=key_prefix,
        )
    record, key = rolled.new.record, rolled.new.key
    old_until = _time(rolled.old.expires_at)
    _show_new_key(
        record,
        key,
        as_json,
        f"Rolled key {key_id}: new key {record.id} for consumer '{record.consumer_name}'; "
        f"the old key works until {old_until}.",
    )


# -- signing keys ---------------------------------------------------------------------------------------


def _signing_json(record: SigningKeyRecord, window: float) -> dict[str, Any]:
    return {
        "kid": record.kid,
        "alg": record.alg,
        "state": record.state,
        "created_at": _time(record.created_at),
        "activated_at": _time(record.activated_at),
        "retired_at": _time(record.retired_at),
        "published_until": _time(_published_until(record, window)),
    }


def _window_options(function: F) -> F:
    function = click.option(
        "--cache-margin",
        metavar="DURATION",
        type=Seconds(0, _MAX_SECONDS),
        default=None,
        help=f"How long verifiers cache the JWKS (default {format_duration(DEFAULT_CACHE_MARGIN)}).",
    )(function)
    return click.option(
        "--token-ttl",
        metavar="DURATION",
        envvar="KEYSWAP_TOKEN_TTL",
        type=Seconds(0, _MAX_SECONDS),
        default=None,
        help=(
            f"Lifetime of minted tokens, as the gateway uses (default "
            f"{format_duration(DEFAULT_TOKEN_TTL)}; $KEYSWAP_TOKEN_TTL)."
        ),
    )(function)


def _published_until(record: SigningKeyRecord, window: float) -> float | None:
    if record.state != "retired" or record.retired_at is None:
        return None
    return record.retired_at + window


def _window(token_ttl: float | None, cache_margin: float | None) -> tuple[float, float]:
    return (
        DEFAULT_TOKEN_TTL if token_ttl is None else token_ttl,
        DEFAULT_CACHE_MARGIN if cache_margin is None else cache_margin,
    )


def _keyring(
    store: Store, secret_file: str | None, token_ttl: float | None, cache_margin: float | None
) -> Keyring:
    ttl, margin = _window(token_ttl, cache_margin)
    return Keyring(store, open_secret(store, secret_file), token_ttl=ttl, cache_margin=margin)


def _print_signing_keys(records: list[SigningKeyRecord], window: float, as_json: bool) -> None:
    if as_json:
        _print_json([_signing_json(r, window) for r in records])
        return
    if not records:
        click.echo("No signing keys yet (the gateway creates them on first start).")
        return
    rows = [
        [
            r.kid,
            r.alg,
            r.state,
            _time(r.created_at),
            _time(r.activated_at),
            _time(r.retired_at),
            _time(_published_until(r, window)),
        ]
        for r in records
    ]
    _print_table(
        ["KID", "ALG", "STATE", "CREATED", "ACTIVATED", "RETIRED", "PUBLISHED UNTIL"], rows
    )


@click.group("signing-keys", cls=ManagedGroup)
def signing_keys() -> None:
    """Manage the gateway's JWT signing keys (next -> active -> retired -> pruned)."""


@signing_keys.command("list")
@json_option
@_window_options
@db_option
@handle_errors
def signing_keys_list(
    as_json: bool, token_ttl: float | None, cache_margin: float | None, db_url: str | None
) -> None:
    """List signing keys: kid, algorithm, state and dates (never private material)."""
    ttl, margin = _window(token_ttl, cache_margin)
    with open_store(db_url, existing=True) as store:
        records = manage_signing.list_signing_keys(manage_context(store))
    _print_signing_keys(records, ttl + margin, as_json)


@signing_keys.command("rotate")
@click.option(
    "--alg",
    type=click.Choice(SIGNING_ALGORITHMS),
    default=None,
    help="Algorithm of the new next key (default: the same as the key becoming active).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Rotate even if the next key was published less than the cache margin ago (emergency).",
)
@json_option
@_window_options
@db_option
@secret_file_option
@handle_errors
def signing_keys_rotate(
    alg: str | None,
    force: bool,
    as_json: bool,
    token_ttl: float | None,
    cache_margin: float | None,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Rotate: the next key starts signing, the active key retires, a new next key is published.

    The retired key stays in the JWKS for token TTL + cache margin; the running gateway prunes it
    after that (or run `keyswap signing-keys prune`). With no keys yet, this creates them. The next key
    must have been published for at least the cache margin, so verifiers caching the JWKS already know
    it; `--force` rotates anyway (verifiers then refetch on the unknown kid).
    """
    with open_store(db_url) as store:
        keyring = _keyring(store, secret_file, token_ttl, cache_margin)
        rotation = manage_signing.rotate_signing_keys(
            manage_context(store), keyring, alg=alg, force=force
        )
        if not as_json:
            active = keyring.active()
            done = "Rotated" if rotation.had_keys else "Created the first signing keys"
            click.echo(f"{done}: {active.kid} ({active.alg}) signs now.")
        _print_signing_keys(keyring.records(), keyring.token_ttl + keyring.cache_margin, as_json)


@signing_keys.command("prune")
@json_option
@_window_options
@db_option
@secret_file_option
@handle_errors
def signing_keys_prune(
    as_json: bool,
    token_ttl: float | None,
    cache_margin: float | None,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Delete retired keys whose tokens have all expired (retired + token TTL + cache margin)."""
    with open_store(db_url, existing=True) as store:
        pruned = manage_signing.prune_signing_keys(
            manage_context(store), _keyring(store, secret_file, token_ttl, cache_margin)
        )
    if as_json:
        _print_json({"pruned": list(pruned)})
        return
    click.echo(
        f"Pruned {len(pruned)} retired key(s)." + (f" ({', '.join(pruned)})" if pruned else "")
    )


# -- db -------------------------------------------------------------------------------------------------


@click.group(cls=ManagedGroup)
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@json_option
@db_option
@handle_errors
def db_upgrade(as_json: bool, db_url: str | None) -> None:
    """Create the schema, or bring it to this keyswap's revision (Alembic migrations).

    Safe to run at any time and from several places at once; needed before the first start on
    PostgreSQL and after each keyswap upgrade that changes the schema (SQLite upgrades itself).
    """
    with open_store(db_url, schema="upgrade") as store:
        change, url = store.schema_change, store.url
    if as_json:
        _print_json(
            {
                "database": display_url(url),
                "upgraded": change is not None,
                "from_revision": None if change is None else change[0],
                "revision": migrate.head_revision() if change is None else change[1],
                "schema_version": SCHEMA_VERSION,
            }
        )
    elif change is None:
        click.echo(
            f"The schema is up to date (revision {migrate.head_revision()}, version "
            f"{SCHEMA_VERSION}): {display_url(url)}"
        )
    else:
        before = "an empty database" if change[0] is None else f"revision {change[0]}"
        click.echo(
            f"Upgraded {display_url(url)} from {before} to revision {change[1]} "
            f"(schema version {SCHEMA_VERSION})."
        )


@db.command("status")
@json_option
@db_option
@handle_errors
def db_status(as_json: bool, db_url: str | None) -> None:
    """Show the schema revision of the database and the one this keyswap needs (exit 1 if behind)."""
    with open_store(db_url, schema="any", existing=True) as store:
        state, url = store.schema_state, store.url
    assert state is not None
    status = (
        "up to date"
        if state.up_to_date
        else "newer than this keyswap"
        if state.ahead
        else ("behind: run `keyswap db upgrade`")
    )
    if as_json:
        _print_json(
            {
                "database": display_url(url),
                "revision": state.current,
                "head": state.head,
                "up_to_date": state.up_to_date,
                "status": status,
            }
        )
    else:
        click.echo(f"Database: {display_url(url)}")
        click.echo(f"Revision: {state.current or 'none (empty database)'}")
        click.echo(f"Needed:   {state.head}")
        click.echo(f"Status:   {status}")
    if not state.up_to_date:
        raise SystemExit(1)


# -- gateway and demo (the servers) ---------------------------------------------------------------------


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _secret_scanning_settings(
    mode: str, keys_url: str | None, webhook_secret_file: str | None, policy: str
) -> SecretScanningSettings | None:
    """The ``--secret-scanning`` settings (``None``: off).

    Raises:
        ConfigError: a bad URL, policy or webhook secret.
    """
    if mode != "github":
        return None
    from keyswap.gateway.secretscanning import (
        GITHUB_KEYS_URL,
        SecretScanningSettings,
        load_webhook_secret,
    )

    return SecretScanningSettings(
        keys_url=(keys_url or "").strip() or GITHUB_KEYS_URL,
        policy=policy,
        webhook_secret=load_webhook_secret(webhook_secret_file, os.environ),
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@click.command("gateway", cls=ManagedCommand)
@click.option(
    "--upstream",
    envvar="KEYSWAP_UPSTREAM",
    required=True,
    metavar="URL",
    help="The protected API (base URL; an optional path prefix is kept). $KEYSWAP_UPSTREAM.",
)
@click.option(
    "--public-url",
    envvar="KEYSWAP_PUBLIC_URL",
    metavar="URL",
    default=None,
    help="How clients and origins reach this gateway; the issuer is <URL>/__keyswap/issuer. "
    "Default http://<host>:<port>. $KEYSWAP_PUBLIC_URL.",
)
@click.option("--host", envvar="KEYSWAP_HOST", default="127.0.0.1", show_default=True)
@click.option(
    "--port", envvar="KEYSWAP_PORT", type=click.IntRange(1, 65535), default=8080, show_default=True
)
@click.option(
    "--audience",
    envvar="KEYSWAP_AUDIENCE",
    metavar="AUD",
    default=None,
    help="`aud` of minted tokens. Default: the upstream URL. $KEYSWAP_AUDIENCE.",
)
@click.option(
    "--token-ttl",
    envvar="KEYSWAP_TOKEN_TTL",
    type=Seconds(1, 86400, whole=True),
    default=300,
    show_default=True,
    help="Lifetime of minted tokens (seconds, or 5m). $KEYSWAP_TOKEN_TTL.",
)
@click.option(
    "--upstream-timeout",
    envvar="KEYSWAP_UPSTREAM_TIMEOUT",
    type=Seconds(0.001, 3600),
    default=30.0,
    show_default=True,
    help="Connect/read timeout towards the upstream; 504 when exceeded. $KEYSWAP_UPSTREAM_TIMEOUT.",
)
@click.option(
    "--alg",
    envvar="KEYSWAP_ALG",
    type=click.Choice(SIGNING_ALGORITHMS),
    default=None,
    help="Algorithm of the signing keys created on first start. Default: RS256; "
    f"{BOUND_DEFAULT_ALG} with --bind-request/--bind-route/--token-format txn-token "
    "(per-request signing). $KEYSWAP_ALG.",
)
@click.option(
    "--bind-request/--no-bind-request",
    envvar="KEYSWAP_BIND_REQUEST",
    default=False,
    show_default=True,
    help="Give every request its own token bound to its method, URL, query and body "
    "(docs/request-binding.md). $KEYSWAP_BIND_REQUEST.",
)
@click.option(
    "--bind-route",
    "bind_routes",
    envvar="KEYSWAP_BIND_ROUTES",
    multiple=True,
    metavar="METHOD:/PREFIX[:unbound-body]",
    help="Bind requests of this route only (METHOD may be * or GET,POST); ':unbound-body' forwards "
    "bodies over --bind-max-body unhashed instead of 413. Repeatable. $KEYSWAP_BIND_ROUTES.",
)
@click.option(
    "--bind-max-body",
    envvar="KEYSWAP_BIND_MAX_BODY",
    type=click.IntRange(0, 1 << 30),
    default=DEFAULT_BIND_MAX_BODY,
    show_default=True,
    help="Largest body (bytes) hashed before forwarding a bound request; larger: 413. "
    "$KEYSWAP_BIND_MAX_BODY.",
)
@click.option(
    "--bind-ttl",
    envvar="KEYSWAP_BIND_TTL",
    type=Seconds(1, 3600, whole=True),
    default=DEFAULT_BIND_TTL,
    show_default=True,
    help="Lifetime of per-request tokens (seconds). $KEYSWAP_BIND_TTL.",
)
@click.option(
    "--token-format",
    envvar="KEYSWAP_TOKEN_FORMAT",
    type=click.Choice(TOKEN_FORMATS),
    default="jwt",
    show_default=True,
    help="jwt: Authorization: Bearer; txn-token: a Transaction Token per request in the Txn-Token "
    "header (draft-ietf-oauth-transaction-tokens-10). $KEYSWAP_TOKEN_FORMAT.",
)
@click.option(
    "--txn-purpose",
    envvar="KEYSWAP_TXN_PURPOSE",
    default="api",
    show_default=True,
    help="`purp` claim of Transaction Tokens. $KEYSWAP_TXN_PURPOSE.",
)
@click.option(
    "--trust-forwarded/--no-trust-forwarded",
    envvar="KEYSWAP_TRUST_FORWARDED",
    default=False,
    show_default=True,
    help="Keep the client's X-Forwarded-For/-Proto/-Host (only behind a proxy you run).",
)
@click.option(
    "--drop-header",
    "drop_headers",
    envvar="KEYSWAP_DROP_HEADERS",
    multiple=True,
    metavar="NAME",
    help="Also drop this request header; a shell-style pattern (x-internal-*) or a comma-separated "
    "list works too. Repeatable. $KEYSWAP_DROP_HEADERS.",
)
@click.option(
    "--forward-headers-only",
    envvar="KEYSWAP_FORWARD_HEADERS_ONLY",
    metavar="NAMES",
    default=None,
    help="Forward only these request headers (comma-separated names or patterns) besides the "
    "gateway's own. Default: all but the dropped ones. $KEYSWAP_FORWARD_HEADERS_ONLY.",
)
@click.option(
    "--max-connections",
    envvar="KEYSWAP_MAX_CONNECTIONS",
    type=click.IntRange(1, 10000),
    default=100,
    show_default=True,
    help="Keep-alive connection pool size towards the upstream.",
)
@click.option(
    "--max-connections-per-consumer",
    envvar="KEYSWAP_MAX_CONNECTIONS_PER_CONSUMER",
    type=click.IntRange(1, 10000),
    default=None,
    help="Requests one consumer may have in flight to the upstream at once, unless it has its own "
    "cap (consumers set-limit --connections); beyond it 429. Default: 1/4 of --max-connections. "
    "$KEYSWAP_MAX_CONNECTIONS_PER_CONSUMER.",
)
@click.option(
    "--max-client-connections",
    envvar="KEYSWAP_MAX_CLIENT_CONNECTIONS",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Client connections open at once; a connection beyond it is answered 503. Default: 1000, "
    "or less to fit the file-descriptor limit. $KEYSWAP_MAX_CLIENT_CONNECTIONS.",
)
@click.option(
    "--head-timeout",
    envvar="KEYSWAP_HEAD_TIMEOUT",
    type=Seconds(0.001, 3600),
    default=10.0,
    show_default=True,
    help="A request head must arrive within this time (else 408 and close). $KEYSWAP_HEAD_TIMEOUT.",
)
@click.option(
    "--keep-alive-timeout",
    envvar="KEYSWAP_KEEP_ALIVE_TIMEOUT",
    type=Seconds(0.001, 3600),
    default=5.0,
    show_default=True,
    help="An idle client connection is closed when no request starts within this time. "
    "$KEYSWAP_KEEP_ALIVE_TIMEOUT.",
)
@click.option(
    "--client-body-timeout",
    envvar="KEYSWAP_CLIENT_BODY_TIMEOUT",
    type=Seconds(0.001, 3600),
    default=30.0,
    show_default=True,
    help="Most time between two pieces of a request body (else 408). $KEYSWAP_CLIENT_BODY_TIMEOUT.",
)
@click.option(
    "--client-body-deadline",
    envvar="KEYSWAP_CLIENT_BODY_DEADLINE",
    type=Seconds(0.001, 86400),
    default="5m",
    show_default=True,
    help="Most time for a whole request body (else 408). $KEYSWAP_CLIENT_BODY_DEADLINE.",
)
@click.option(
    "--client-send-timeout",
    envvar="KEYSWAP_CLIENT_SEND_TIMEOUT",
    type=Seconds(0.001, 3600),
    default=30.0,
    show_default=True,
    help="A client that reads none of its response for this long is disconnected. "
    "$KEYSWAP_CLIENT_SEND_TIMEOUT.",
)
@click.option(
    "--log-level",
    envvar="KEYSWAP_LOG_LEVEL",
    type=click.Choice(_LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="info logs one access line per request (logger keyswap.access).",
)
@click.option(
    "--log-format",
    envvar="KEYSWAP_LOG_FORMAT",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="json: one JSON object per log line, access lines included. $KEYSWAP_LOG_FORMAT.",
)
@click.option(
    "--metrics-port",
    envvar="KEYSWAP_METRICS_PORT",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics at /metrics on this port (its own listener, never the public "
    "port). Default: no metrics. $KEYSWAP_METRICS_PORT.",
)
@click.option(
    "--metrics-host",
    envvar="KEYSWAP_METRICS_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics listener binds. $KEYSWAP_METRICS_HOST.",
)
@click.option(
    "--tracing/--no-tracing",
    envvar="KEYSWAP_TRACING",
    default=False,
    show_default=True,
    help="OpenTelemetry spans (key lookup, mint, upstream call) and traceparent to the upstream, "
    "exported as the OTEL_* variables say (OTLP by default; needs keyswap[otel]). $KEYSWAP_TRACING.",
)
@click.option(
    "--trace-sample-rate",
    envvar="KEYSWAP_TRACE_SAMPLE_RATE",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    metavar="RATE",
    help="Fraction of new traces sampled (0.01 = 1 %); a caller's traceparent decides for its own. "
    "Default: OTEL_TRACES_SAMPLER (every request). $KEYSWAP_TRACE_SAMPLE_RATE.",
)
@click.option(
    "--redis",
    "redis_url",
    envvar="KEYSWAP_REDIS_URL",
    metavar="URL",
    default=None,
    help="Redis shared by every node: rate limits and quotas counted cluster-wide, changes pushed "
    "by pub/sub (redis://host:6379/0). $KEYSWAP_REDIS_URL.",
)
@click.option(
    "--redis-prefix",
    envvar="KEYSWAP_REDIS_PREFIX",
    metavar="PREFIX",
    default="keyswap",
    show_default=True,
    help="Prefix of keyswap's Redis keys and channel (one per deployment). $KEYSWAP_REDIS_PREFIX.",
)
@click.option(
    "--rotate-every",
    envvar="KEYSWAP_ROTATE_EVERY",
    metavar="DURATION",
    type=Seconds(0, 100 * 365 * 86400),
    default="30d",
    show_default=True,
    help="Rotate the signing keys this often (one node does it); 0 turns it off. "
    "$KEYSWAP_ROTATE_EVERY.",
)
@click.option(
    "--rate-limit",
    envvar="KEYSWAP_RATE_LIMIT",
    metavar="RATE",
    type=RateType({"off": None, "none": None, "": None}),
    default="off",
    show_default=True,
    help="Requests per window for consumers without their own limit (100/60s, 10/s), or off. "
    "$KEYSWAP_RATE_LIMIT.",
)
@click.option(
    "--outage-grace",
    envvar="KEYSWAP_OUTAGE_GRACE",
    metavar="DURATION",
    type=Seconds(0, 86400),
    default="5m",
    show_default=True,
    help="While the database is unreachable, keys this node checked within this time keep working; "
    "others get 503. $KEYSWAP_OUTAGE_GRACE.",
)
@click.option(
    "--db-timeout",
    envvar="KEYSWAP_DB_TIMEOUT",
    metavar="SECONDS",
    type=Seconds(0.1, 60),
    default="2",
    show_default=True,
    help="A request waits this long for the database, then is answered as during an outage "
    "(PostgreSQL: also the statement timeout). $KEYSWAP_DB_TIMEOUT.",
)
@click.option(
    "--workers",
    envvar="KEYSWAP_WORKERS",
    metavar="N|auto",
    type=WorkersType(),
    default="1",
    show_default=True,
    help="Processes serving the one listening socket, each with its own caches; auto = one per CPU. "
    "$KEYSWAP_WORKERS.",
)
@click.option(
    "--drain-timeout",
    envvar="KEYSWAP_DRAIN_TIMEOUT",
    metavar="SECONDS",
    type=Seconds(0.001, 3600),
    default="30",
    show_default=True,
    help="On SIGTERM: stop accepting, let requests in flight finish for at most this long, exit 0. "
    "$KEYSWAP_DRAIN_TIMEOUT.",
)
@click.option(
    "--websocket-idle-timeout",
    envvar="KEYSWAP_WEBSOCKET_IDLE_TIMEOUT",
    metavar="DURATION",
    type=Seconds(0.001, 86400),
    default="5m",
    show_default=True,
    help="A relayed websocket with no message either way for this long is closed. "
    "$KEYSWAP_WEBSOCKET_IDLE_TIMEOUT.",
)
@click.option(
    "--websocket-max-lifetime",
    envvar="KEYSWAP_WEBSOCKET_MAX_LIFETIME",
    metavar="DURATION",
    type=Seconds(0.001, 7 * 86400),
    default="1h",
    show_default=True,
    help="A relayed websocket is closed after this long (its key is checked at the handshake only). "
    "$KEYSWAP_WEBSOCKET_MAX_LIFETIME.",
)
@click.option(
    "--secret-scanning",
    "secret_scanning",
    envvar="KEYSWAP_SECRET_SCANNING",
    type=click.Choice(["off", "github"]),
    default="off",
    show_default=True,
    help="Answer GitHub's secret scanning reports at <public-url>/__keyswap/secret-scanning/github "
    "(docs/leaked-keys.md). $KEYSWAP_SECRET_SCANNING.",
)
@click.option(
    "--secret-scanning-keys-url",
    envvar="KEYSWAP_SECRET_SCANNING_KEYS_URL",
    metavar="URL",
    default=None,
    help="GitHub's published secret scanning public keys "
    "(default https://api.github.com/meta/public_keys/secret_scanning). "
    "$KEYSWAP_SECRET_SCANNING_KEYS_URL.",
)
@click.option(
    "--secret-scanning-webhook-secret-file",
    envvar="KEYSWAP_SECRET_SCANNING_WEBHOOK_SECRET_FILE",
    metavar="PATH",
    default=None,
    help="Also accept GitHub's secret_scanning_alert webhook (custom patterns) at "
    "<public-url>/__keyswap/secret-scanning/github/alerts, signed with the secret in this file "
    "(or $KEYSWAP_SECRET_SCANNING_WEBHOOK_SECRET). $KEYSWAP_SECRET_SCANNING_WEBHOOK_SECRET_FILE.",
)
@click.option(
    "--leak-policy",
    envvar="KEYSWAP_LEAK_POLICY",
    type=click.Choice(["revoke", "roll", "notify"]),
    default="revoke",
    show_default=True,
    help="What happens to a key reported in public, for consumers without their own policy "
    "(keyswap consumers set-leak-policy). $KEYSWAP_LEAK_POLICY.",
)
@click.option(
    "--webhooks/--no-webhooks",
    "webhooks",
    envvar="KEYSWAP_WEBHOOKS",
    default=True,
    show_default=True,
    help="Deliver consumers' webhook events from this process (needs the 'webhooks' extra); "
    "--no-webhooks leaves it to other processes or `keyswap webhooks dispatch`. $KEYSWAP_WEBHOOKS.",
)
@click.option(
    "--usage/--no-usage",
    "usage",
    envvar="KEYSWAP_USAGE",
    default=True,
    show_default=True,
    help="Meter every request per consumer and key into the database (keyswap usage). "
    "$KEYSWAP_USAGE.",
)
@click.option(
    "--usage-flush-interval",
    envvar="KEYSWAP_USAGE_FLUSH_INTERVAL",
    metavar="SECONDS",
    type=Seconds(0.1, 3600),
    default="10",
    show_default=True,
    help="Seconds between writes of the usage counts (at most this much is lost on a crash). "
    "$KEYSWAP_USAGE_FLUSH_INTERVAL.",
)
@key_prefix_option
@db_option
@secret_file_option
@handle_errors
def gateway(
    upstream: str,
    public_url: str | None,
    host: str,
    port: int,
    audience: str | None,
    token_ttl: int,
    upstream_timeout: float,
    alg: str | None,
    bind_request: bool,
    bind_routes: tuple[str, ...],
    bind_max_body: int,
    bind_ttl: int,
    token_format: str,
    txn_purpose: str,
    trust_forwarded: bool,
    drop_headers: tuple[str, ...],
    forward_headers_only: str | None,
    max_connections: int,
    max_connections_per_consumer: int | None,
    max_client_connections: int | None,
    head_timeout: float,
    keep_alive_timeout: float,
    client_body_timeout: float,
    client_body_deadline: float,
    client_send_timeout: float,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    tracing: bool,
    trace_sample_rate: float | None,
    redis_url: str | None,
    redis_prefix: str,
    rotate_every: float,
    rate_limit: Rate | None,
    outage_grace: float,
    db_timeout: float,
    workers: int,
    drain_timeout: float,
    websocket_idle_timeout: float,
    websocket_max_lifetime: float,
    secret_scanning: str,
    secret_scanning_keys_url: str | None,
    secret_scanning_webhook_secret_file: str | None,
    leak_policy: str,
    webhooks: bool,
    usage: bool,
    usage_flush_interval: float,
    key_prefix: str,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Run the API-key gateway: API key in, short-lived JWT to --upstream, JWKS published.

    Clients send `Authorization: Bearer <API key>`; the upstream receives `Authorization: Bearer <JWT>`
    signed by the gateway (verify it with the JWKS at <public-url>/__keyswap/issuer/.well-known/jwks.json).
    """
    import socket

    from keyswap.gateway.app import GatewaySettings, build_gateway
    from keyswap.gateway.clientconn import (
        ClientLimits,
        default_max_client_connections,
        open_connections,
    )
    from keyswap.gateway.cluster import ClusterSettings
    from keyswap.gateway.metrics import GatewayMetrics, SnapshotDirectory
    from keyswap.gateway.metricsserver import MetricsServer
    from keyswap.gateway.serve import configure_logging, run_until_signal, server_config
    from keyswap.gateway.workers import run_workers
    from keyswap.gateway.wsrelay import WebSocketLimits
    from keyswap.ports import bind_listeners

    try:
        websocket_limits = WebSocketLimits(websocket_idle_timeout, websocket_max_lifetime)
        bind = BindPolicy(
            tuple(
                parse_bind_route(part)
                for value in bind_routes
                for part in value.split()
                if part.strip()
            ),
            bind_all=bind_request,
            max_body=bind_max_body,
            ttl=bind_ttl,
        )
        if alg is None:
            per_request = bind.enabled or token_format == "txn-token"  # noqa: S105
            alg = BOUND_DEFAULT_ALG if per_request else "RS256"
        settings = GatewaySettings(
            upstream=upstream.strip(),
            public_url=(public_url or f"http://{_url_host(host)}:{port}").strip(),
            audience=(audience or "").strip(),
            token_ttl=token_ttl,
            upstream_timeout=upstream_timeout,
            alg=alg,
            bind=bind,
            token_format=token_format,
            txn_purpose=txn_purpose.strip(),
            trust_forwarded=trust_forwarded,
            max_connections=max_connections,
            max_connections_per_consumer=max_connections_per_consumer,
            key_prefix=key_prefix,
            drop_headers=drop_headers,
            forward_headers_only=(
                (forward_headers_only,)
                if forward_headers_only is not None and forward_headers_only.strip()
                else None
            ),
        )
        client_limits = ClientLimits(
            head_timeout=head_timeout,
            keep_alive_timeout=keep_alive_timeout,
            body_timeout=client_body_timeout,
            body_deadline=client_body_deadline,
            send_timeout=client_send_timeout,
            max_connections=max_client_connections
            or default_max_client_connections(max_connections),
        )
        cluster = ClusterSettings(
            redis_url=(redis_url or "").strip() or None,
            redis_prefix=redis_prefix,
            rotate_every=rotate_every,
            rate_limit=rate_limit,
            outage_grace=outage_grace,
            db_timeout=db_timeout,
        )
        scanning = _secret_scanning_settings(
            secret_scanning,
            secret_scanning_keys_url,
            secret_scanning_webhook_secret_file,
            leak_policy,
        )
    except ConfigError as exc:  # a bad flag or variable value: a usage error
        raise OneLineUsageError(exc.reason) from None
    if metrics_port is not None:
        import importlib.util

        if importlib.util.find_spec("prometheus_client") is None:
            raise OneLineUsageError(
                "--metrics-port needs prometheus-client: pip install 'keyswap[prometheus]'"
            )
    tracing_settings = None
    if tracing:
        from keyswap.gateway.tracing import TracingSettings

        tracing_settings = TracingSettings(sample_rate=trace_sample_rate)
    url = check_db_location(db_url)
    # The ports before anything else: taken, it is one error line and nothing was loaded or changed.
    sockets = bind_listeners(host, port)
    metrics_sockets: list[socket.socket] = []
    snapshots: SnapshotDirectory | None = None
    metrics_server: MetricsServer | None = None
    try:
        if metrics_port is not None:
            metrics_sockets = bind_listeners(metrics_host, metrics_port)
        configure_logging(log_level, log_format)
        with new_database_guard(url) as guard:  # a failed start leaves no new database behind
            app = build_gateway(
                settings,
                db_url=url,
                secret_file=secret_file,
                cluster=cluster,
                websocket_limits=websocket_limits,
                secret_scanning=scanning,
                usage_interval=usage_flush_interval if usage else None,
                metrics=GatewayMetrics() if metrics_sockets and workers == 1 else None,
                tracing=tracing_settings if workers == 1 else None,
            )
            app.prepare()
            guard.started()
        redis_up = cluster.redis_url is None or _redis_reachable(cluster.redis_url)
        if metrics_sockets:
            from prometheus_client import CollectorRegistry

            from keyswap.gateway.metrics import collector

            registry = CollectorRegistry()
            if workers == 1:
                assert app.metrics is not None
                registry.register(collector(app.metrics.snapshot))
            else:
                snapshots = SnapshotDirectory()
                registry.register(collector(snapshots.read))
            for extra in metrics_sockets[1:]:
                extra.close()
            metrics_server = MetricsServer(metrics_sockets[0], registry, threads=workers == 1)
    except BaseException:
        for sock in [*sockets, *metrics_sockets]:
            sock.close()
        if snapshots is not None:
            snapshots.close()
        raise

    def say(line: str) -> None:  # with --log-format json, every line on stderr is a JSON object
        if log_format == "json":
            logging.getLogger("keyswap.gateway").info("%s", line)
        else:
            click.echo(line, err=True)

    say(
        f"keyswap gateway on http://{_url_host(host)}:{port} -> {settings.upstream} "
        f"(issuer {settings.issuer}, audience {settings.audience}, db {display_url(url)})"
    )
    say(_cluster_banner(cluster, postgres=is_postgres(url), redis_up=redis_up))
    say(
        f"usage: counted per consumer and key, written every {usage_flush_interval:g} s "
        "(keyswap usage)"
        if usage
        else "usage: not metered (--no-usage)"
    )
    if metrics_server is not None:
        say(f"metrics on http://{_url_host(metrics_host)}:{metrics_server.port}/metrics")
    if tracing_settings is not None:
        say(
            "tracing on: "
            + (
                f"{tracing_settings.sample_rate:g} of new traces sampled"
                if tracing_settings.sample_rate is not None
                else "sampled as OTEL_TRACES_SAMPLER says"
            )
        )
    if settings.bind.enabled or settings.token_format != "jwt":  # noqa: S105 - a format name
        routes = describe(settings.bind.rules_in_order) if settings.bind.enabled else []
        say(
            f"per-request tokens ({settings.token_format}, {settings.bind.ttl} s, {settings.alg})"
            + (
                f"; bound routes: {' '.join(routes)}; bodies hashed up to "
                f"{settings.bind.max_body} bytes"
                if routes
                else ""
            )
        )
    if workers > 1:
        say(
            f"{workers} worker processes, each with its own caches"
            + (
                ""
                if cluster.redis_url
                else "; rate limits are counted per worker, quotas approximately (give --redis)"
            )
        )

    def serve(served: GatewayApp, on_ready: Callable[[], None] | None = None) -> int:
        config = server_config(
            served,
            host,
            port,
            log_level=log_level,
            client_limits=client_limits,
            drain_timeout=drain_timeout,
            websockets=True,
        )
        if served.metrics is not None:
            served.metrics.gauges["connections_open"] = open_connections(config.http)
        with _webhook_dispatcher(url, secret_file, enabled=webhooks):
            return run_until_signal([config], sockets=[sockets], on_ready=on_ready)

    def worker(on_ready: Callable[[], None]) -> int:  # in a forked worker: its own gateway
        if metrics_server is not None:
            metrics_server.socket.close()  # the supervisor's: never accepted on here
        served = build_gateway(
            settings,
            db_url=url,
            secret_file=secret_file,
            cluster=cluster,
            websocket_limits=websocket_limits,
            secret_scanning=scanning,
            usage_interval=usage_flush_interval if usage else None,
            metrics=None if snapshots is None else GatewayMetrics(),
            metrics_dir=None if snapshots is None else snapshots.path,
            tracing=tracing_settings,
        )
        served.prepare()
        return serve(served, on_ready)

    if workers == 1:
        try:
            if metrics_server is not None:
                metrics_server.start()
            failed = serve(app)
        finally:
            if metrics_server is not None:
                metrics_server.close()
    else:
        import asyncio

        asyncio.run(app.shutdown())  # the parent only checked the set-up; workers build their own
        try:
            failed = run_workers(
                workers, worker, idle=None if metrics_server is None else metrics_server.poll
            )
        finally:
            for sock in sockets:
                sock.close()
            if metrics_server is not None:
                metrics_server.close()
            if snapshots is not None:
                snapshots.close()
    if failed:
        raise click.ClickException("the gateway could not start (see the message above)")


@contextmanager
def _webhook_dispatcher(url: str, secret_file: str | None, *, enabled: bool) -> Iterator[None]:
    """Consumers' webhook deliveries in the background of this (worker) process."""
    if not enabled:
        yield
        return
    from keyswap.webhooks.background import background_dispatcher

    with background_dispatcher(url, load_secret(url, secret_file=secret_file)):
        yield


def _redis_reachable(url: str, timeout: float = 1.0) -> bool:
    """True if Redis at ``url`` answers a PING within ``timeout`` seconds."""
    import redis

    from keyswap.gateway.redisbus import redis_options

    client = redis.Redis.from_url(url, **redis_options(timeout))
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def redis_display(url: str) -> str:
    """A Redis URL for messages: scheme, host, port and path; never a user, password or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _cluster_banner(cluster: ClusterSettings, *, postgres: bool, redis_up: bool) -> str:
    """The gateway's second start-up line: how changes arrive, rate limits, signing-key rotation."""
    pushes = ["PostgreSQL NOTIFY"] if postgres else []
    if cluster.redis_url is None:
        limits = "per node"
    elif redis_up:
        pushes.append("Redis pub/sub")
        limits = "shared in Redis"
    else:
        where = redis_display(cluster.redis_url)
        pushes.append("Redis pub/sub (once reachable)")
        limits = f"per node until Redis at {where} is reachable (then shared)"
    rotation = (
        "every " + format_duration(cluster.rotate_every) if cluster.rotate_every else "by hand"
    )
    return (
        f"changes: {' + '.join([*pushes, 'polling'])}; rate limits: {limits}, default "
        f"{cluster.rate_limit or 'none'}; signing keys rotate {rotation}"
    )


@click.command("demo", cls=ManagedCommand)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Gateway port."
)
@click.option(
    "--origin-port",
    type=click.IntRange(1, 65535),
    default=7878,
    show_default=True,
    help="Origin (keyswap origin) port.",
)
@click.option(
    "--admin-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Admin API port. Default: --port + 1 (8081).",
)
@click.option(
    "--portal-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Developer portal port. Default: --port + 2 (8082).",
)
@click.option(
    "--data-dir",
    metavar="DIR",
    default=".keyswap-data",
    show_default=True,
    help="Where the demo keeps its SQLite database and secret.",
)
@click.option(
    "--alg",
    type=click.Choice(SIGNING_ALGORITHMS),
    default="RS256",
    show_default=True,
    help="Algorithm of the signing keys created on the first run.",
)
@handle_errors
def demo(
    port: int,
    origin_port: int,
    admin_port: int | None,
    portal_port: int | None,
    data_dir: str,
    alg: str,
) -> None:
    """Run the gateway (port 8080) in front of `keyswap origin` (port 7878) with a demo key, the
    admin API (port 8081) with a fresh admin token, and the developer portal (port 8082) with a
    sign-in link for the demo consumer.

    Prints a curl command to try; the answer is the origin echoing the verified JWT claims. Each run
    reuses the data in --data-dir and prints a fresh demo key; older demo keys keep working (another
    demo or a script may use them; `keyswap keys revoke` them). Every port is checked before the data
    is touched: a port in use changes nothing.
    """
    from pathlib import Path

    from keyswap.gateway.demo import run_demo

    if port == origin_port:
        raise OneLineUsageError("--port and --origin-port must differ")
    admin = port + 1 if admin_port is None else admin_port
    if admin in (port, origin_port) or admin > 65535:
        raise OneLineUsageError("--admin-port must differ from --port and --origin-port")
    portal = port + 2 if portal_port is None else portal_port
    if portal in (port, origin_port, admin) or portal > 65535:
        raise OneLineUsageError("--portal-port must differ from the other ports")

    status = run_demo(
        Path(data_dir),
        port=port,
        origin_port=origin_port,
        admin_port=admin,
        portal_port=portal,
        alg=alg,
        echo=click.echo,
    )
    if status != 0:
        raise click.ClickException("the demo could not start (see the message above)")


# The webhook subcommands of `keyswap consumers` (set-webhook, webhook, clear-webhook,
# rotate-webhook-secret) live in keyswap.webhooks.cli and join the group here.
from keyswap.webhooks import cli as _webhooks_cli  # noqa: E402, F401
