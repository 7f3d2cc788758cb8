"""``keyswap admin``: serve the admin API against the gateways' database.

The listening address is bound before anything else (a port in use is one ``Error:`` line, exit 1,
nothing opened). Changes go through the same store as the CLI's: the revision bump the gateways
poll, PostgreSQL's NOTIFY, and the Redis publisher with ``--redis`` (or ``$KEYSWAP_REDIS_URL``), so
running gateways see them as fast as a CLI change. Binding a non-loopback address logs a warning:
the API speaks plain HTTP; put TLS in front of it.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING

import click

from keyswap.gateway.cli import (
    ManagedCommand,
    db_option,
    handle_errors,
    key_prefix_option,
    new_database_guard,
    open_secret,
    open_store,
    resolve_db_url,
    secret_file_option,
)

if TYPE_CHECKING:
    from keyswap.admin.oidc import OidcAuthenticator

__all__ = ["admin", "is_loopback"]

logger = logging.getLogger("keyswap.admin")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _oidc(
    issuer: str | None,
    audience: str | None,
    jwks_url: str | None,
    scopes_claims: tuple[str, ...],
    profile: str | None,
) -> OidcAuthenticator | None:
    """The OIDC authenticator the options describe, or ``None`` without ``--oidc-issuer``."""
    from keyswap.admin.oidc import DEFAULT_SCOPES_CLAIMS, OidcAuthenticator, OidcConfig

    issuer = (issuer or "").strip() or None
    if issuer is None:
        others = audience or jwks_url or scopes_claims or profile
        if others:
            raise click.ClickException("the --oidc-* options need --oidc-issuer")
        return None
    audience = (audience or "").strip()
    if not audience:
        raise click.ClickException("--oidc-issuer needs --oidc-audience")
    claims = tuple(c.strip() for c in scopes_claims if c.strip()) or DEFAULT_SCOPES_CLAIMS
    config = OidcConfig(
        issuer,
        audience,
        jwks_url=(jwks_url or "").strip() or None,
        scopes_claims=claims,
        profile=profile,
    )
    return OidcAuthenticator(config)


@click.command(cls=ManagedCommand)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="KEYSWAP_ADMIN_HOST",
    help="Address to listen on (also $KEYSWAP_ADMIN_HOST). Anything but loopback: put TLS in front.",
)
@click.option(
    "--port",
    default=8081,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="KEYSWAP_ADMIN_PORT",
    help="Port (also $KEYSWAP_ADMIN_PORT).",
)
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    default=None,
    envvar="KEYSWAP_ADMIN_REDIS_URL",
    help="Announce changes on Redis (also $KEYSWAP_ADMIN_REDIS_URL, else $KEYSWAP_REDIS_URL), as "
    "gateways started with --redis expect.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar="KEYSWAP_ADMIN_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--log-format",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    envvar="KEYSWAP_ADMIN_LOG_FORMAT",
    help="json: one JSON object per log line (also $KEYSWAP_ADMIN_LOG_FORMAT).",
)
@click.option(
    "--oidc-issuer",
    metavar="URL",
    default=None,
    envvar="KEYSWAP_ADMIN_OIDC_ISSUER",
    help="Also accept JWTs from this identity provider (its exact iss; also "
    "$KEYSWAP_ADMIN_OIDC_ISSUER). Needs --oidc-audience.",
)
@click.option(
    "--oidc-audience",
    metavar="AUD",
    default=None,
    envvar="KEYSWAP_ADMIN_OIDC_AUDIENCE",
    help="The aud OIDC tokens must carry (also $KEYSWAP_ADMIN_OIDC_AUDIENCE).",
)
@click.option(
    "--oidc-jwks-url",
    metavar="URL",
    default=None,
    envvar="KEYSWAP_ADMIN_OIDC_JWKS_URL",
    help="The provider's JWKS (also $KEYSWAP_ADMIN_OIDC_JWKS_URL); default: found in the "
    "issuer's metadata (discovery; the issuer must then be https, http only on loopback).",
)
@click.option(
    "--oidc-scopes-claim",
    "oidc_scopes_claims",
    metavar="PATH",
    multiple=True,
    envvar="KEYSWAP_ADMIN_OIDC_SCOPES_CLAIM",
    help="Claim holding the admin scopes, e.g. roles or realm_access.roles; repeatable (also "
    "$KEYSWAP_ADMIN_OIDC_SCOPES_CLAIM, space-separated). Default: scope, then scp. Only exact "
    "admin scope names count.",
)
@click.option(
    "--oidc-profile",
    type=click.Choice(["rfc9068"]),
    default=None,
    envvar="KEYSWAP_ADMIN_OIDC_PROFILE",
    help="Require RFC 9068 JWT access tokens (typ at+jwt; also $KEYSWAP_ADMIN_OIDC_PROFILE).",
)
@click.option(
    "--webhooks-allow-loopback",
    is_flag=True,
    envvar="KEYSWAP_WEBHOOKS_ALLOW_LOOPBACK",
    default=False,
    help="Let API callers set webhook URLs on a loopback address (allow_http_loopback: local "
    "development only; off, such requests get 422). $KEYSWAP_WEBHOOKS_ALLOW_LOOPBACK.",
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
    "--portal-url",
    metavar="URL",
    default=None,
    envvar="KEYSWAP_PORTAL_PUBLIC_URL",
    help="The developer portal's public URL (also $KEYSWAP_PORTAL_PUBLIC_URL): sign-in links made "
    "with POST /v1/consumers/{name}/portal-links come back whole.",
)
@key_prefix_option
@db_option
@secret_file_option
@handle_errors
def admin(
    host: str,
    port: int,
    redis_url: str | None,
    log_level: str,
    log_format: str,
    oidc_issuer: str | None,
    oidc_audience: str | None,
    oidc_jwks_url: str | None,
    oidc_scopes_claims: tuple[str, ...],
    oidc_profile: str | None,
    webhooks_allow_loopback: bool,
    webhooks: bool,
    portal_url: str | None,
    key_prefix: str,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Serve the admin HTTP API (consumers, keys, signing keys, audit) on 127.0.0.1:8081.

    Callers authenticate with admin tokens (`keyswap admin-tokens create`) or, with --oidc-issuer
    and --oidc-audience, with JWTs from the identity provider (audit actor oidc:<sub>). --db also reads
    $KEYSWAP_ADMIN_DB, else $KEYSWAP_DB. The OpenAPI document is at /openapi.json, interactive docs
    (Swagger UI, served from the package: no internet access needed) at /docs.
    """
    import os

    from keyswap.admin.app import build_admin_app
    from keyswap.admin.metrics import AdminMetrics
    from keyswap.admin.state import AdminState
    from keyswap.gateway.keyring import Keyring
    from keyswap.gateway.serve import configure_logging, run_until_signal, server_config
    from keyswap.manage.context import audit_retention_from_env
    from keyswap.ports import bind_listeners, listen_address
    from keyswap.webhooks.background import background_dispatcher

    if db_url is None and os.environ.get("KEYSWAP_ADMIN_DB", "").strip():
        db_url = os.environ["KEYSWAP_ADMIN_DB"].strip()
    oidc = _oidc(oidc_issuer, oidc_audience, oidc_jwks_url, oidc_scopes_claims, oidc_profile)
    sockets = bind_listeners(host, port)
    try:
        configure_logging(log_level, log_format)
        if not is_loopback(host):
            logger.warning(
                "the admin API listens on %s, beyond this machine, over plain HTTP: put TLS in "
                "front of it and restrict who can reach it",
                listen_address(host, port),
            )
        if oidc is not None:
            oidc.start()
        with (
            new_database_guard(resolve_db_url(db_url)) as guard,
            open_store(db_url, redis_url=redis_url) as store,
        ):
            secret = open_secret(store, secret_file)
            state = AdminState(
                store,
                secret,
                Keyring(store, secret),
                key_prefix=key_prefix,
                audit_retention=audit_retention_from_env(),
                oidc=oidc,
                portal_url=(portal_url or "").strip() or None,
                webhooks_allow_loopback=webhooks_allow_loopback,
            )
            app = build_admin_app(state, metrics=AdminMetrics())
            guard.started()  # a failed start before here leaves no new database behind
            bound = sockets[0].getsockname()[1]

            def ready() -> None:
                line = f"keyswap admin API on http://{listen_address(host, bound)} (docs: /docs)"
                if log_format == "json":
                    logger.info("%s", line)
                else:
                    click.echo(line)

            with background_dispatcher(store, secret, enabled=webhooks):
                status = run_until_signal(
                    [server_config(app, host, bound, log_level=log_level)],
                    on_ready=ready,
                    sockets=[sockets],
                )
    finally:
        if oidc is not None:
            oidc.close()
        for sock in sockets:
            sock.close()
    if status != 0:
        raise click.ClickException("the admin API could not start (see the message above)")
