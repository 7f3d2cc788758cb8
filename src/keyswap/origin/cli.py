"""``keyswap origin``: serve the claims-echo app behind the JWT middleware with uvicorn or granian.

Every option can also be set by an environment variable (``KEYSWAP_JWKS_URL``, ``KEYSWAP_ISSUER``,
``KEYSWAP_DISCOVER``, ``KEYSWAP_AUDIENCE``, ``KEYSWAP_ALGORITHMS``, ``KEYSWAP_REQUIRED_CLAIMS``,
``KEYSWAP_PROFILE``, ``KEYSWAP_HOST``, ``KEYSWAP_PORT``, ``KEYSWAP_LEEWAY``,
``KEYSWAP_JWKS_CACHE_TTL``, ``KEYSWAP_JWKS_COOLDOWN``, ``KEYSWAP_REALM``, ``KEYSWAP_LOG_LEVEL``,
``KEYSWAP_ACCESS_LOG``, ``KEYSWAP_SERVER``), which ``--help`` names; a flag wins over its variable.
A bad value prints one ``Error: ...`` line and exits with status 2 before anything is served.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from keyswap.cli_support import OneLineErrorsCommand, OneLineUsageError, Seconds
from keyswap.errors import ConfigError

if TYPE_CHECKING:
    from keyswap.verifier.verify import IssuerConfig, Verifier

__all__ = ["DEFAULT_ALGORITHMS", "origin"]

#: Accepted when ``--algorithms`` is not given: every algorithm keyswap verifies. Each JWKS key is
#: bound to its own algorithm family, so allowing all four never lets one key verify another's alg.
#: (The same default as :data:`keyswap.verifier.envconfig.DEFAULT_ALGORITHMS`.)
DEFAULT_ALGORITHMS = "RS256,PS256,ES256,EdDSA"

logger = logging.getLogger("keyswap.origin")


class _HttpUrl(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        try:
            parts = urlsplit(text)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            host = None
        if parts.scheme not in ("http", "https"):
            got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            self.fail(f"must be an http:// or https:// URL (got {got})", param, ctx)
        if not host or any(c.isspace() or not c.isprintable() for c in text):
            from keyswap.verifier.fetch import redact_url

            self.fail(f"must be a URL with a valid host (got {redact_url(text)!r})", param, ctx)
        return text


class _Algorithms(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    name = "algs"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        from keyswap.verifier.jws import SUPPORTED_ALGORITHMS

        names = [name.strip() for name in str(value).split(",") if name.strip()]
        unknown = [name for name in names if name not in SUPPORTED_ALGORITHMS]
        if unknown or not names:
            supported = ", ".join(sorted(SUPPORTED_ALGORITHMS))
            got = ", ".join(unknown) if unknown else "nothing"
            self.fail(f"unsupported algorithm {got} (supported: {supported})", param, ctx)
        return tuple(dict.fromkeys(names))


class _ClaimNames(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    name = "claims"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        names = tuple(dict.fromkeys(n.strip() for n in str(value).split(",") if n.strip()))
        if not names:
            self.fail("must name at least one claim (exp is always required)", param, ctx)
        return names


class _NonEmpty(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not text:
            self.fail("must not be empty", param, ctx)
        return text


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _http_protocol() -> Any:
    """httptools without request trailers (:mod:`keyswap.serverproto`), else uvicorn's h11."""
    if _available("httptools") != "httptools":
        return "h11"
    from keyswap.serverproto import HeadOnlyHttpToolsProtocol

    return HeadOnlyHttpToolsProtocol


_SERVERS = ("uvicorn", "granian")


@click.command(
    cls=OneLineErrorsCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--jwks-url",
    envvar="KEYSWAP_JWKS_URL",
    type=_HttpUrl(),
    help="Issuer's JWKS (required unless --discover).",
)
@click.option(
    "--issuer", envvar="KEYSWAP_ISSUER", required=True, type=_NonEmpty(), help="Exact `iss`."
)
@click.option(
    "--discover/--no-discover",
    envvar="KEYSWAP_DISCOVER",
    default=False,
    show_default=True,
    help="Read the JWKS URL from the issuer's /.well-known/openid-configuration "
    "(or oauth-authorization-server) metadata.",
)
@click.option(
    "--audience", envvar="KEYSWAP_AUDIENCE", type=_NonEmpty(), help="Required `aud` (optional)."
)
@click.option(
    "--algorithms",
    envvar="KEYSWAP_ALGORITHMS",
    type=_Algorithms(),
    default=DEFAULT_ALGORITHMS,
    show_default=True,
    help="Comma-separated allow-list.",
)
@click.option(
    "--required-claims",
    envvar="KEYSWAP_REQUIRED_CLAIMS",
    type=_ClaimNames(),
    default="sub",
    show_default=True,
    help="Comma-separated claims every token must have (exp always).",
)
@click.option(
    "--profile",
    envvar="KEYSWAP_PROFILE",
    type=click.Choice(["rfc9068"], case_sensitive=False),
    help="rfc9068: JWT access tokens only (typ at+jwt, its required claims; needs --audience).",
)
@click.option(
    "--bind-request/--no-bind-request",
    envvar="KEYSWAP_BIND_REQUEST",
    default=False,
    show_default=True,
    help="Require request-bound tokens (gateway --bind-request): method, URL, query and body are "
    "checked, each token accepted once.",
)
@click.option(
    "--public-url",
    envvar="KEYSWAP_PUBLIC_URL",
    type=_HttpUrl(),
    help="With --bind-request: this origin's base URL as the gateway sees it (its --upstream), "
    "when proxies in between change the Host or path. Default: the request's scheme and Host.",
)
@click.option(
    "--bind-max-body",
    envvar="KEYSWAP_BIND_MAX_BODY",
    type=click.IntRange(0, 1 << 30),
    default=1 << 20,
    show_default=True,
    help="With --bind-request: largest body (bytes) read and checked; larger: 413.",
)
@click.option(
    "--replay-redis-url",
    envvar="KEYSWAP_REPLAY_REDIS_URL",
    help="With --bind-request: share the replay cache through this Redis (several origin "
    "processes). Default: in memory, per process.",
)
@click.option(
    "--replay-redis-prefix",
    envvar="KEYSWAP_REPLAY_REDIS_PREFIX",
    default="keyswap:jti:",
    show_default=True,
)
@click.option(
    "--replay-on-redis-down",
    envvar="KEYSWAP_REPLAY_ON_REDIS_DOWN",
    type=click.Choice(["refuse", "local"]),
    default="refuse",
    show_default=True,
    help="Redis unreachable: refuse bound tokens (503) or check replays per process only.",
)
@click.option(
    "--token-format",
    envvar="KEYSWAP_TOKEN_FORMAT",
    type=click.Choice(["jwt", "txn-token"]),
    default="jwt",
    show_default=True,
    help="txn-token: read Transaction Tokens from the Txn-Token header (typ txntoken+jwt).",
)
@click.option("--host", envvar="KEYSWAP_HOST", default="127.0.0.1", show_default=True)
@click.option(
    "--port", envvar="KEYSWAP_PORT", type=click.IntRange(1, 65535), default=7878, show_default=True
)
@click.option(
    "--leeway",
    envvar="KEYSWAP_LEEWAY",
    type=Seconds(0, 300),
    default=30.0,
    show_default=True,
    help="Clock skew allowed for exp/nbf/iat, seconds (0-300).",
)
@click.option(
    "--jwks-cache-ttl",
    envvar="KEYSWAP_JWKS_CACHE_TTL",
    type=Seconds(1),
    default=300.0,
    show_default=True,
    help="Refresh the JWKS after this many seconds (>= 1).",
)
@click.option(
    "--jwks-cooldown",
    envvar="KEYSWAP_JWKS_COOLDOWN",
    type=Seconds(1),
    default=10.0,
    show_default=True,
    help="Minimum seconds between refetches caused by unknown kids (>= 1).",
)
@click.option("--realm", envvar="KEYSWAP_REALM", default="keyswap", show_default=True)
@click.option(
    "--log-level",
    envvar="KEYSWAP_LOG_LEVEL",
    type=click.Choice(_LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format",
    envvar="KEYSWAP_LOG_FORMAT",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="json: one JSON object per log line (uvicorn's lines too; with --server granian, "
    "keyswap's own).",
)
@click.option(
    "--access-log/--no-access-log", envvar="KEYSWAP_ACCESS_LOG", default=False, show_default=True
)
@click.option(
    "--server",
    envvar="KEYSWAP_SERVER",
    type=click.Choice(_SERVERS, case_sensitive=False),
    default="uvicorn",
    show_default=True,
    help="ASGI server (granian: one worker, uvloop, HTTP/1).",
)
def origin(
    jwks_url: str | None,
    issuer: str,
    discover: bool,
    audience: str | None,
    algorithms: tuple[str, ...],
    required_claims: tuple[str, ...],
    profile: str | None,
    bind_request: bool,
    public_url: str | None,
    bind_max_body: int,
    replay_redis_url: str | None,
    replay_redis_prefix: str,
    replay_on_redis_down: str,
    token_format: str,
    host: str,
    port: int,
    leeway: float,
    jwks_cache_ttl: float,
    jwks_cooldown: float,
    realm: str,
    log_level: str,
    log_format: str,
    access_log: bool,
    server: str,
) -> None:
    """Run a protected API that answers every request with its verified JWT claims as JSON.

    Requests without a bearer token get 401 "No token provided", bad tokens 401 "Invalid token",
    and 503 with Retry-After while no signing keys could be fetched yet. GET /__keyswap/health
    needs no token: 200 while the signing keys are held, 503 otherwise (for load balancers).
    """
    from keyswap.origin.app import create_app
    from keyswap.verifier.fetch import redact_url
    from keyswap.verifier.verify import IssuerConfig, Verifier

    server = server.lower()
    if server == "granian" and importlib.util.find_spec("granian") is None:
        raise OneLineUsageError(
            "--server granian needs granian, which is not installed (pip install 'keyswap[server]')"
        )
    if jwks_url is None and not discover:
        raise OneLineUsageError(
            "Missing option '--jwks-url' (or --discover to read it from the issuer's metadata)"
        )
    if jwks_url is not None and discover:
        raise OneLineUsageError("give --jwks-url or --discover, not both")
    txn = token_format == "txn-token"  # noqa: S105 - a format name
    if server == "granian" and (bind_request or txn):
        raise OneLineUsageError("--bind-request and --token-format txn-token need --server uvicorn")
    if txn and profile is not None:
        raise OneLineUsageError("--token-format txn-token sets its own profile: drop --profile")
    _configure_logging(log_level, log_format)
    try:
        config = IssuerConfig(
            issuer=issuer,
            jwks_url=jwks_url,
            discover=discover,
            audience=audience,
            algorithms=algorithms,
            required_claims=required_claims,
            profile="txn-token" if txn else (profile.lower() if profile is not None else None),
            leeway=leeway,
            jwks_cache_ttl=jwks_cache_ttl,
            jwks_cooldown=jwks_cooldown,
            bind_request=bind_request,
            bind_max_body=bind_max_body,
        )
        replay_cache = None
        if bind_request and replay_redis_url:
            from keyswap.verifier.replay import RedisReplayCache

            replay_cache = RedisReplayCache(
                replay_redis_url.strip(),
                prefix=replay_redis_prefix,
                on_error="local" if replay_on_redis_down == "local" else "refuse",
            )
        verifier = Verifier(config)
        app = create_app(
            verifier,
            realm=realm,
            token_header="txn-token" if txn else "authorization",
            public_url=public_url,
            replay_cache=replay_cache,
        )
    except ConfigError as exc:
        raise OneLineUsageError(str(exc)) from exc
    sockets = _bind(host, port)
    logger.info(
        "keyswap origin on http://%s:%d: issuer=%s jwks_url=%s algorithms=%s audience=%s",
        host,
        port,
        issuer,
        redact_url(jwks_url) if jwks_url is not None else "(discovered)",
        ",".join(algorithms),
        audience or "-",
    )
    if bind_request:
        logger.info(
            "request binding on: public URL %s, replay cache %s (Redis down: %s), max body %d",
            public_url or "(from each request's Host)",
            "Redis" if replay_redis_url else "in memory",
            replay_on_redis_down,
            bind_max_body,
        )
    if server == "granian":
        for sock in sockets:  # granian binds by itself: the check was all that was wanted
            sock.close()
        _serve_granian(verifier, config, realm, host, port, log_level, access_log)
        return
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    uvicorn_server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop=_available("uvloop"),
            http=_http_protocol(),
            lifespan="on",
            log_level=log_level.lower(),
            access_log=access_log,
            server_header=False,
            log_config=_JSON_LOG_CONFIG if log_format == "json" else LOGGING_CONFIG,
        )
    )
    uvicorn_server.run(sockets=sockets)
    if not uvicorn_server.started:  # e.g. the port is taken; uvicorn has logged why
        sys.exit(1)


def _bind(host: str, port: int) -> list[socket.socket]:
    """Bind the address before serving: a port in use is one ``Error:`` line and exit status 1."""
    from keyswap.ports import bind_listeners

    try:
        return bind_listeners(host, port)
    except ConfigError as exc:
        raise click.ClickException(exc.reason) from None


def _serve_granian(
    verifier: Verifier,
    config: IssuerConfig,
    realm: str,
    host: str,
    port: int,
    log_level: str,
    access_log: bool,
) -> None:
    """Hand the validated settings to granian's worker through ``KEYSWAP_*`` and serve."""
    from keyswap.origin.server_granian import export_env, serve_granian

    verifier.close()  # built only to validate; the worker builds (and starts) its own
    export_env(config, realm, os.environ)
    try:
        serve_granian(host=host, port=port, log_level=log_level, access_log=access_log)
    except RuntimeError as exc:  # from granian's Rust core, e.g. the port is taken
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        logger.error("granian could not start: %s", reason)
        sys.exit(1)


def _available(module: str) -> str:
    return module if importlib.util.find_spec(module) is not None else "auto"


#: uvicorn's loggers as JSON lines (``--log-format json``; keyswap.logformat).
_JSON_LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "keyswap.logformat.JsonFormatter"}},
    "handlers": {
        "json": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["json"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["json"], "level": "INFO", "propagate": False},
    },
}


def _configure_logging(level: str, log_format: str = "text") -> None:
    root = logging.getLogger("keyswap")
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler()
        if log_format == "json":
            from keyswap.logformat import JsonFormatter

            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        root.addHandler(handler)
