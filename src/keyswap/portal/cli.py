"""``keyswap portal``: serve the developer portal; ``keyswap portal link``: make a sign-in link."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import click

from keyswap.admin.cli import is_loopback
from keyswap.cli_support import OneLineUsageError, Seconds
from keyswap.errors import ConfigError
from keyswap.gateway.cli import (
    ManagedGroup,
    _print_json,
    _time,
    db_option,
    handle_errors,
    json_option,
    key_prefix_option,
    manage_context,
    open_secret,
    open_store,
    secret_file_option,
)
from keyswap.manage.portal import DEFAULT_LINK_LIFETIME, MAX_LINK_LIFETIME, create_link

__all__ = ["portal"]

logger = logging.getLogger("keyswap.portal")


def _public_url(public_url: str | None, host: str, port: int) -> str:
    if public_url:
        return public_url.strip().rstrip("/")
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


@click.group(cls=ManagedGroup, invoke_without_command=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="KEYSWAP_PORTAL_HOST",
    help="Address to listen on (also $KEYSWAP_PORTAL_HOST).",
)
@click.option(
    "--port",
    default=8082,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="KEYSWAP_PORTAL_PORT",
    help="Port (also $KEYSWAP_PORTAL_PORT).",
)
@click.option(
    "--public-url",
    metavar="URL",
    default=None,
    envvar="KEYSWAP_PORTAL_PUBLIC_URL",
    help="Where people reach the portal, e.g. https://api.example.com (links, OIDC "
    "redirect; https makes cookies Secure). Default: http://HOST:PORT.",
)
@click.option(
    "--gateway-url",
    metavar="URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    envvar="KEYSWAP_PORTAL_GATEWAY_URL",
    help="The API's base URL shown to consumers.",
)
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    default=None,
    envvar="KEYSWAP_PORTAL_REDIS_URL",
    help="Announce changes on Redis, as gateways started with --redis expect.",
)
@click.option(
    "--provider-name",
    default="API",
    show_default=True,
    envvar="KEYSWAP_PORTAL_NAME",
    help="Your name, shown on every page.",
)
@click.option(
    "--logo-url",
    metavar="URL",
    default=None,
    envvar="KEYSWAP_PORTAL_LOGO_URL",
    help="A logo image (its origin is added to the Content-Security-Policy).",
)
@click.option(
    "--accent",
    default="#4f46e5",
    show_default=True,
    envvar="KEYSWAP_PORTAL_ACCENT",
    help="Accent colour, #rrggbb.",
)
@click.option(
    "--portal-oidc-issuer",
    "oidc_issuer",
    metavar="URL",
    default=None,
    envvar="KEYSWAP_PORTAL_OIDC_ISSUER",
    help="Sign in with this OpenID provider.",
)
@click.option(
    "--portal-oidc-client-id",
    "oidc_client_id",
    metavar="ID",
    default=None,
    envvar="KEYSWAP_PORTAL_OIDC_CLIENT_ID",
    help="The portal's client id there.",
)
@click.option(
    "--portal-oidc-client-secret-file",
    "oidc_secret_file",
    metavar="FILE",
    default=None,
    envvar="KEYSWAP_PORTAL_OIDC_CLIENT_SECRET_FILE",
    help="The client secret (a confidential client); none: a public client (PKCE).",
)
@click.option(
    "--signup/--no-signup",
    default=False,
    show_default=True,
    help="Let a person signed in with OIDC who belongs to no consumer create one.",
)
@click.option(
    "--signup-plan",
    metavar="JSON",
    default='{"metadata": {"plan": "free"}}',
    show_default=True,
    help='What self-signed-up consumers get: {"metadata": {...}, "rate_limit": "100/60s"}.',
)
@click.option(
    "--session-idle",
    type=Seconds(60, 86400),
    default="30m",
    show_default=True,
    help="Sign out after this long without a request.",
)
@click.option(
    "--session-max",
    type=Seconds(60, 30 * 86400),
    default="12h",
    show_default=True,
    help="Sign out this long after signing in, in any case.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@key_prefix_option
@db_option
@secret_file_option
@click.pass_context
@handle_errors
def portal(ctx: click.Context, /, **options: Any) -> None:
    """Serve the developer portal on 127.0.0.1:8082 (pages under /portal/).

    People sign in with a link (`keyswap portal link`) or, with --portal-oidc-issuer, through your
    identity provider, and see the consumers they are members of (`keyswap consumers members`).
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = options
        return
    _serve(**options)


def _serve(
    *,
    host: str,
    port: int,
    public_url: str | None,
    gateway_url: str,
    redis_url: str | None,
    provider_name: str,
    logo_url: str | None,
    accent: str,
    oidc_issuer: str | None,
    oidc_client_id: str | None,
    oidc_secret_file: str | None,
    signup: bool,
    signup_plan: str,
    session_idle: float,
    session_max: float,
    log_level: str,
    key_prefix: str,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    from keyswap.gateway.serve import configure_logging, run_until_signal, server_config
    from keyswap.portal.app import PortalState, build_portal_app
    from keyswap.portal.settings import OidcSettings, PortalSettings, SignupPlan
    from keyswap.ports import bind_listeners, listen_address

    oidc_settings = None
    if oidc_issuer or oidc_client_id:
        if not (oidc_issuer and oidc_client_id):
            raise OneLineUsageError("--portal-oidc-issuer and --portal-oidc-client-id go together")
        secret = None
        if oidc_secret_file:
            with open(oidc_secret_file, encoding="utf-8") as handle:
                secret = handle.read().strip() or None
        oidc_settings = OidcSettings(oidc_issuer, oidc_client_id, secret)
    plan = None
    if signup:
        try:
            raw = json.loads(signup_plan)
        except ValueError:
            raise OneLineUsageError("--signup-plan is not JSON") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("metadata", {}), dict):
            raise OneLineUsageError('--signup-plan is {"metadata": {...}, "rate_limit": ...}')
        plan = SignupPlan(raw.get("metadata", {}), raw.get("rate_limit"))
    sockets = bind_listeners(host, port)
    bound = sockets[0].getsockname()[1]
    settings = PortalSettings(
        public_url=_public_url(public_url, host, bound),
        gateway_url=gateway_url,
        provider_name=provider_name,
        logo_url=logo_url,
        accent=accent,
        idle_timeout=session_idle,
        absolute_timeout=session_max,
        oidc=oidc_settings,
        signup=plan,
    )
    oidc = None
    try:
        configure_logging(log_level)
        if not is_loopback(host) and not settings.secure_cookies:
            logger.warning(
                "the portal listens beyond this machine over plain HTTP: put TLS in "
                "front of it and give --public-url https://..."
            )
        with open_store(db_url, redis_url=redis_url) as store:
            server_secret = open_secret(store, secret_file)
            state = PortalState(store, server_secret, settings, key_prefix=key_prefix)
            if oidc_settings is not None:
                from keyswap.portal.oidc import OidcClient

                oidc = OidcClient(oidc_settings, settings.public_url, state.csrf_key)
                state.oidc = oidc
            app = build_portal_app(state)

            def ready() -> None:
                click.echo(
                    f"keyswap portal on http://{listen_address(host, bound)}/portal/ "
                    f"(public URL {settings.public_url}/portal/)"
                )

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
        raise click.ClickException("the portal could not start (see the message above)")


@portal.command("link")
@click.argument("consumer")
@click.option("--email", required=True, metavar="ADDRESS", help="Who the link is for.")
@click.option(
    "--expires-in",
    type=Seconds(1, MAX_LINK_LIFETIME),
    default=DEFAULT_LINK_LIFETIME,
    show_default="15m",
    help="How long the link works (at most 7 days).",
)
@click.option(
    "--public-url",
    metavar="URL",
    default=None,
    envvar="KEYSWAP_PORTAL_PUBLIC_URL",
    help="The portal's public URL (default: http://127.0.0.1:8082).",
)
@json_option
@db_option
@handle_errors
def portal_link(
    consumer: str,
    email: str,
    expires_in: float,
    public_url: str | None,
    as_json: bool,
    db_url: str | None,
) -> None:
    """Print a single-use sign-in link to the portal for ADDRESS, a member of CONSUMER from now on.

    Hand the link to the person (no mail is sent). It works once, for --expires-in.
    """
    base = (public_url or os.environ.get("KEYSWAP_PORTAL_PUBLIC_URL") or "").strip()
    base = base or "http://127.0.0.1:8082"
    if not base.startswith(("http://", "https://")):
        raise ConfigError("--public-url must be an http(s) URL")
    with open_store(db_url, existing=True) as store:
        link = create_link(manage_context(store), consumer, email, expires_in=expires_in)
    url = link.url(base)
    if as_json:
        _print_json(
            {
                "url": url,
                "consumer": consumer,
                "email": link.record.email,
                "expires_at": _time(link.record.expires_at),
            }
        )
    else:
        click.echo(url)
