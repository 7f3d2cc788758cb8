"""``keyswap tokens mint``: a token as the gateway would mint it, for testing an origin without a gateway.

The token is signed with the gateway's active signing key (from the database, decrypted with the server
secret) and carries the gateway's claims for the consumer: ``iss`` (``<public-url>/__keyswap/issuer``,
or ``--issuer``), ``sub``, ``aud`` (``--audience``, else the gateway's upstream URL), ``iat``, ``exp``,
``jti``, ``metadata`` and ``scope`` (the consumer's scopes, or the ``--scopes`` subset of them). There is
no ``key_id``: no API key is involved. Issuer and audience are computed as the gateway computes them
(:func:`keyswap.gateway.wellknown.issuer_for`, :func:`keyswap.gateway.app.token_audience`), from the
same options and environment variables. Each mint is audited (``token.mint``: kid, jti, issuer,
audience, scopes, expiry; never the token).
"""

from __future__ import annotations

import time

import click

from keyswap.cli_support import OneLineUsageError, Seconds
from keyswap.errors import ConfigError, InvalidInput, KeysUnavailable, NotFound
from keyswap.gateway.app import token_audience
from keyswap.gateway.cli import (
    ManagedGroup,
    _print_json,
    _time,
    db_option,
    handle_errors,
    json_option,
    manage_context,
    open_secret,
    open_store,
    scopes_type,
    secret_file_option,
)
from keyswap.gateway.keyring import Keyring
from keyswap.gateway.mint import sign_compact, token_claims
from keyswap.gateway.wellknown import issuer_for
from keyswap.manage.audit import record_event

__all__ = ["mint_token", "tokens"]

_NO_KEYS = (
    "there is no active signing key yet: start the gateway once (it creates its keys), "
    "or run `keyswap signing-keys rotate`"
)


@click.group("tokens", cls=ManagedGroup)
def tokens() -> None:
    """Mint tokens for testing an origin without a gateway in between."""


def _issuer(ctx: click.Context, public_url: str | None, issuer: str | None) -> str:
    explicit = click.core.ParameterSource.COMMANDLINE
    if (
        issuer
        and public_url
        and ctx.get_parameter_source("issuer") == explicit
        and ctx.get_parameter_source("public_url") == explicit
    ):
        raise OneLineUsageError("give --public-url or --issuer, not both")
    if issuer is not None:
        if not issuer.strip():
            raise InvalidInput("--issuer must not be empty")
        return issuer.strip()
    if not public_url or not public_url.strip():
        raise InvalidInput(
            "no issuer: give the gateway's --public-url ($KEYSWAP_PUBLIC_URL; the issuer is "
            "<public-url>/__keyswap/issuer) or --issuer"
        )
    return issuer_for(public_url.strip())


def mint_token(
    keyring: Keyring,
    consumer_name: str,
    consumer_metadata: dict[str, object],
    consumer_scopes: tuple[str, ...],
    *,
    issuer: str,
    audience: str,
    ttl: int,
    scopes: tuple[str, ...] | None = None,
    now: float | None = None,
) -> tuple[str, str, dict[str, object]]:
    """Sign a token for a consumer with the keyring's active key; returns ``(token, kid, claims)``.

    ``scopes``: a subset of ``consumer_scopes`` (``None``: all of them).

    Raises:
        InvalidInput: a scope the consumer does not have.
        KeysUnavailable: no active signing key.
    """
    granted = consumer_scopes if scopes is None else scopes
    beyond = [scope for scope in granted if scope not in consumer_scopes]
    if beyond:
        raise InvalidInput(
            f"consumer '{consumer_name}' does not have the scope(s) {', '.join(beyond)}; "
            f"its scopes: {', '.join(consumer_scopes) or 'none'}"
        )
    keyring.reload()
    key = keyring.active()
    claims = token_claims(
        issuer=issuer,
        audience=audience,
        consumer=consumer_name,
        metadata=consumer_metadata,
        scopes=granted,
        iat=int(time.time() if now is None else now),
        ttl=ttl,
    )
    return sign_compact(key, claims), key.kid, claims


@tokens.command("mint")
@click.argument("consumer")
@click.option(
    "--ttl",
    envvar="KEYSWAP_TOKEN_TTL",
    type=Seconds(1, 86400, whole=True),
    default=300,
    show_default=True,
    help="Lifetime of the token (seconds, or 5m, 1h; at most 1d). $KEYSWAP_TOKEN_TTL.",
)
@click.option(
    "--public-url",
    envvar="KEYSWAP_PUBLIC_URL",
    metavar="URL",
    default=None,
    help="The gateway's public URL; the issuer is <URL>/__keyswap/issuer. $KEYSWAP_PUBLIC_URL.",
)
@click.option(
    "--issuer",
    metavar="ISS",
    default=None,
    help="The `iss` claim itself (instead of --public-url).",
)
@click.option(
    "--audience",
    envvar="KEYSWAP_AUDIENCE",
    metavar="AUD",
    default=None,
    help="`aud` of the token. Default: --upstream, as for the gateway. $KEYSWAP_AUDIENCE.",
)
@click.option(
    "--upstream",
    envvar="KEYSWAP_UPSTREAM",
    metavar="URL",
    default=None,
    help="The gateway's upstream URL: the audience when --audience is not given. $KEYSWAP_UPSTREAM.",
)
@click.option(
    "--scopes",
    "narrowed",
    metavar="SCOPES",
    type=scopes_type(),
    default=None,
    help="Narrow the `scope` claim to these of the consumer's scopes (comma-separated; '' for "
    "none). Default: all the consumer's scopes.",
)
@json_option
@db_option
@secret_file_option
@click.pass_context
@handle_errors
def tokens_mint(
    ctx: click.Context,
    consumer: str,
    ttl: int,
    public_url: str | None,
    issuer: str | None,
    audience: str | None,
    upstream: str | None,
    narrowed: tuple[str, ...] | None,
    as_json: bool,
    db_url: str | None,
    secret_file: str | None,
) -> None:
    """Print a JWT for CONSUMER signed with the gateway's active signing key.

    It carries the claims the gateway would mint for the consumer (no key_id), so an origin can be
    tested without a gateway in between: curl -H "Authorization: Bearer $(keyswap tokens mint acme
    --public-url https://gw.example.com --audience https://api.example.com)" ... Only the token goes to
    stdout; --json prints {"token", "kid", "expires_at", "claims"}.
    """
    iss = _issuer(ctx, public_url, issuer)
    aud = token_audience(audience, upstream)
    with open_store(db_url, existing=True) as store:
        owner = store.get_consumer(consumer)
        if owner is None:
            raise NotFound(f"unknown consumer '{consumer}'")
        keyring = Keyring(store, open_secret(store, secret_file))
        try:
            token, kid, claims = mint_token(
                keyring,
                owner.name,
                owner.metadata,
                owner.scopes,
                issuer=iss,
                audience=aud,
                ttl=ttl,
                scopes=narrowed,
            )
        except KeysUnavailable:
            raise ConfigError(_NO_KEYS) from None
        record_event(
            manage_context(store),
            "token.mint",
            f"consumer:{owner.name}",
            {
                "kid": kid,
                "jti": claims.get("jti"),
                "issuer": iss,
                "audience": aud,
                "scopes": claims.get("scope") or "",
                "expires_at": claims.get("exp"),
            },
        )
    exp = claims["exp"]
    assert isinstance(exp, int)
    if as_json:
        _print_json({"token": token, "kid": kid, "expires_at": _time(exp), "claims": claims})
        return
    click.echo(token)
    scope = claims.get("scope") or "none"
    click.echo(
        f"Token for '{owner.name}' (kid {kid}, audience {aud}, scope {scope}); "
        f"expires {_time(exp)}.",
        err=True,
    )
