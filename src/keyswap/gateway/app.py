"""The gateway ASGI app: API key in, minted JWT out, request streamed to the upstream.

Hot path (pure ASGI, no framework objects)::

    Authorization header -> ApiKeys.lookup_cached (memory)  -> TokenMinter cache -> UpstreamProxy
                             \\-> cache miss: ApiKeys.authenticate on a store thread (StoreCalls:
                                 bounded wait, bounded threads)

Paths under ``/__keyswap/`` are the gateway's own (JWKS, discovery, health) and need no API key; they
are never proxied. Refusals (written by the gateway, never reaching the upstream)::

    405  Method not allowed   TRACE, TRACK or CONNECT (before the key check; Allow lists the usual
                              methods)
    400  Bad request          the request target is not plain ASCII, has a dot-segment, or (with an
                              upstream path prefix) an encoded slash or a backslash (after the key
                              check)
    431  Request header fields too large   over 256 headers or 64 KiB of headers (after the key check)
    401  No API key provided  no Authorization header, or a scheme other than Bearer
                              (WWW-Authenticate: Bearer realm="keyswap")
    401  Invalid API key      unknown, malformed, revoked or expired key; two Authorization headers
                              (WWW-Authenticate: Bearer realm="keyswap", error="invalid_token")
    429  Too many requests    the consumer's rate limit is spent (Retry-After, RateLimit-* fields;
                              see keyswap.gateway.ratelimit)
    429  Quota exceeded       the consumer's quota or credits are spent (problem+json, Retry-After
                              until the refill, RateLimit fields; see keyswap.gateway.quota)
    429  Too many concurrent requests   the consumer already has its connection cap of requests in
                              flight to the upstream (Retry-After: 1)
    502  Bad gateway          upstream unreachable or broken
    503  Service unavailable  no signing key / key store unavailable or silent for longer than the
                              database timeout, for a key not known here (Retry-After: 5)
    504  Gateway timeout      upstream slower than the upstream timeout

WebSockets (``Upgrade: websocket``, when the server runs with them): the same checks in the same order,
refusals answered as the same plain HTTP responses before any ``101``, then the websocket is relayed to
the upstream with the minted JWT (:mod:`keyswap.gateway.wsrelay`).

Lifespan: start-up opens the connection pool, starts the store's ``ChangeWatcher`` with its push
channels and the rotation scheduler (:mod:`keyswap.gateway.cluster`; on every store revision change:
clear the API-key cache, reload the keyring, re-render the JWKS, flush minted tokens) and a task
pruning retired signing keys; shutdown stops them in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from keyswap.errors import (
    ConfigError,
    InvalidApiKey,
    KeysUnavailable,
    KeyswapError,
    StoreUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from keyswap.gateway.accesslog import AccessLog
from keyswap.gateway.binding import (
    TOKEN_FORMATS,
    BindPolicy,
    BindRule,
    BodyTooLarge,
    ClientLeft,
    ReadBody,
    binding_claims,
    read_body,
)
from keyswap.gateway.changefeed import FULL, ChangeFeed, Changes
from keyswap.gateway.cluster import ClusterSettings
from keyswap.gateway.headerpolicy import HeaderPolicy
from keyswap.gateway.meter import DEFAULT_INTERVAL as DEFAULT_USAGE_INTERVAL
from keyswap.gateway.meter import Exchange, Meter
from keyswap.gateway.metrics import GatewayMetrics, SnapshotWriter
from keyswap.gateway.mint import (
    SIGNING_ALGORITHMS,
    MintedToken,
    PrincipalLike,
    SigningKeyLike,
    TokenMinter,
)
from keyswap.gateway.proxy import (
    BadTarget,
    ClientGone,
    ForwardedHeaders,
    HeadersTooLarge,
    Message,
    Receive,
    Scope,
    Send,
    UpstreamProxy,
    forwarded_request_headers,
    validate_upstream,
)
from keyswap.gateway.quota import (
    QuotaDecision,
    QuotaEnforcer,
    quota_exceeded,
    with_limit_headers,
)
from keyswap.gateway.ratelimit import (
    Rate,
    RateLimiter,
    rate_for,
    too_many_requests,
)
from keyswap.gateway.signer import Signer
from keyswap.gateway.storecalls import StoreCalls, StoreTimeout
from keyswap.gateway.wellknown import DEFAULT_MAX_AGE, WellKnown, issuer_for
from keyswap.gateway.wsrelay import WebSocketLimits, handshake_headers, relay, upstream_ws_url
from keyswap.verifier.binding import UNBOUND_BODY

if TYPE_CHECKING:  # the tracing module imports OpenTelemetry: only when tracing is on
    from keyswap.gateway.secretscanning import SecretScanning, SecretScanningSettings
    from keyswap.gateway.tracing import Tracing, TracingSettings
    from keyswap.store.sql import QuickRevision

__all__ = [
    "ApiKeysLike",
    "GatewayApp",
    "GatewaySettings",
    "KeyringLike",
    "WatcherLike",
    "build_gateway",
    "token_audience",
]

logger = logging.getLogger("keyswap.gateway")

_RESERVED = b"/__keyswap/"
_AUTHORIZATION = b"authorization"
#: The W3C Trace Context headers (a traced gateway's ``Tracing.begin`` reads them when present).
_TRACE_HEADERS = frozenset((b"traceparent", b"tracestate"))
_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([\x21-\x7e]+) *")
_SCHEME = re.compile(rb"[A-Za-z0-9!#$%&'*+\-.^_`|~]+( .*)?", re.DOTALL)
_MAX_KEY_HEADER = 512
#: At start, the keys used this many seconds back are cached and their tokens minted...
WARM_WINDOW = 3600.0
#: ... up to this many (the lookup cache's default size).
WARM_LIMIT = 10_000
#: Least seconds between two store revision reads confirming that keys are unknown.
CHECK_INTERVAL = 0.001
#: Seconds a cached API-key lookup is trusted by :func:`build_gateway` (changes invalidate it sooner).
CACHE_TTL = 300.0


class ApiKeysLike(Protocol):
    """The part of ``keyswap.gateway.apikeys.ApiKeys`` the app uses."""

    def authenticate(self, key: str, now: float) -> PrincipalLike: ...


class KeyringLike(Protocol):
    """The part of ``keyswap.gateway.keyring.Keyring`` the app uses."""

    def ensure(self, alg: str) -> None: ...

    def active(self) -> SigningKeyLike: ...

    def public_jwks(self) -> Mapping[str, Any]: ...

    def reload(self) -> bool: ...

    def prune(self, now: float | None = None) -> list[str]: ...


class WatcherLike(Protocol):
    """A started/stopped background watcher (``keyswap.gateway.apikeys.ChangeWatcher``)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def token_audience(audience: str | None, upstream: str | None) -> str:
    """The ``aud`` of minted tokens: ``audience`` if given, else the upstream URL (the gateway's default).

    Raises:
        ConfigError: neither is given.
    """
    chosen = (audience or "").strip() or (upstream or "").strip()
    if not chosen:
        raise ConfigError(
            "no audience: give --audience ($KEYSWAP_AUDIENCE) or the gateway's --upstream "
            "($KEYSWAP_UPSTREAM), which is its default audience"
        )
    return chosen


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Validated gateway configuration (built once by the CLI, or by tests).

    Attributes:
        upstream: base URL of the protected API.
        public_url: how clients and origins reach the gateway; the issuer is
            ``<public_url>/__keyswap/issuer``.
        audience: ``aud`` of minted tokens; the upstream URL when not given.
        token_ttl: lifetime of minted tokens, seconds.
        upstream_timeout: connect / read timeout towards the upstream, seconds (504 when exceeded).
        alg: signing algorithm for new signing keys (``RS256``, ``ES256`` or ``EdDSA``).
        trust_forwarded: keep the client's ``X-Forwarded-*`` (only behind a proxy you run).
        max_connections: upstream keep-alive pool size.
        max_connections_per_consumer: most requests one consumer may have in flight to the upstream
            at once (each holds one upstream connection) unless the consumer has its own cap; default
            a quarter of ``max_connections`` (at least 1).
        watch_interval: seconds between store revision polls (revocation / rotation pick-up).
        prune_interval: seconds between prunes of retired signing keys (a retired key stays published
            for ``token_ttl + jwks_max_age`` after retirement).
        jwks_max_age: ``Cache-Control`` max-age of the JWKS and discovery documents.
        key_prefix: API key prefix (must match the one keys were created with).
        drop_headers: request header names or shell-style patterns dropped on top of the built-in
            rules (``--drop-header``; :mod:`keyswap.gateway.headerpolicy`).
        forward_headers_only: when given, the only request headers forwarded (names or patterns),
            besides those the gateway sets itself (``--forward-headers-only``).
        bind: which requests get a request-bound token (``--bind-request``, ``--bind-route``;
            :mod:`keyswap.gateway.binding`).
        token_format: ``"jwt"`` (``Authorization: Bearer``) or ``"txn-token"`` (a Transaction Token
            in the ``Txn-Token`` header, minted per request).
        txn_purpose: the ``purp`` claim of Transaction Tokens.
    """

    upstream: str
    public_url: str
    audience: str = ""
    token_ttl: int = 300
    upstream_timeout: float = 30.0
    alg: str = "RS256"
    trust_forwarded: bool = False
    max_connections: int = 100
    max_connections_per_consumer: int | None = None
    watch_interval: float = 1.0
    prune_interval: float = 60.0
    jwks_max_age: int = DEFAULT_MAX_AGE
    key_prefix: str = "ks"
    drop_headers: tuple[str, ...] = ()
    forward_headers_only: tuple[str, ...] | None = None
    bind: BindPolicy = field(default_factory=BindPolicy)
    token_format: str = "jwt"  # noqa: S105 - a format name
    txn_purpose: str = "api"
    issuer: str = field(init=False)
    header_policy: HeaderPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.alg not in SIGNING_ALGORITHMS:
            raise ConfigError(
                f"alg must be one of {', '.join(SIGNING_ALGORITHMS)}, got {self.alg!r}"
            )
        validate_upstream(self.upstream)
        if self.token_format not in TOKEN_FORMATS:
            raise ConfigError(f"token format must be one of {', '.join(TOKEN_FORMATS)}")
        if not self.txn_purpose or not self.txn_purpose.isprintable():
            raise ConfigError("the transaction token purpose must be printable and non-empty")
        object.__setattr__(
            self, "header_policy", HeaderPolicy(self.drop_headers, self.forward_headers_only)
        )
        object.__setattr__(self, "issuer", issuer_for(self.public_url))
        object.__setattr__(self, "audience", token_audience(self.audience, self.upstream))
        if not isinstance(self.token_ttl, int) or not 1 <= self.token_ttl <= 86_400:
            raise ConfigError(f"token TTL must be 1-86400 whole seconds, got {self.token_ttl!r}")
        if not 0 < self.upstream_timeout <= 3600:
            raise ConfigError(
                f"upstream timeout must be in (0, 3600] seconds, got {self.upstream_timeout!r}"
            )
        per_consumer = self.max_connections_per_consumer
        if per_consumer is None:
            object.__setattr__(
                self, "max_connections_per_consumer", max(1, self.max_connections // 4)
            )
        elif not isinstance(per_consumer, int) or per_consumer < 1:
            raise ConfigError(f"connections per consumer must be at least 1, got {per_consumer!r}")
        if not self.watch_interval > 0 or not self.prune_interval > 0:
            raise ConfigError("watch and prune intervals must be positive")
        if not 0 <= self.jwks_max_age <= 86_400:
            raise ConfigError(f"JWKS max-age must be 0-86400 seconds, got {self.jwks_max_age!r}")


def _text(
    status: int, body: str, *extra: tuple[bytes, bytes]
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    data = body.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    return status, headers, data


#: Exact refusal responses (documented in docs/gateway.md).
NO_API_KEY = _text(401, "No API key provided", (b"www-authenticate", b'Bearer realm="keyswap"'))
INVALID_API_KEY = _text(
    401,
    "Invalid API key",
    (b"www-authenticate", b'Bearer realm="keyswap", error="invalid_token"'),
)
BAD_REQUEST = _text(400, "Bad request")
HEADERS_TOO_LARGE = _text(431, "Request header fields too large")
BAD_GATEWAY = _text(502, "Bad gateway")
GATEWAY_TIMEOUT = _text(504, "Gateway timeout")
UNAVAILABLE = _text(503, "Service unavailable", (b"retry-after", b"5"))


class _MintJob(NamedTuple):
    """One request's own token to sign (:meth:`GatewayApp._mint_job`)."""

    principal: PrincipalLike
    binding: Mapping[str, Any]
    ttl: int
    txn: str | None = None
    purpose: str = "api"
    requester: Mapping[str, Any] | None = None


#: Readiness (for a load balancer): 200 once the warm start is done, 503 until then (the liveness
#: check is ``/__keyswap/health``: 200 as soon as the node serves).
READY_PATH = "/__keyswap/ready"
READY = _text(200, "ready")
WARMING = _text(503, "warming", (b"retry-after", b"1"))
READY_METHODS = _text(405, "Method not allowed", (b"allow", b"GET, HEAD"))
TOO_MANY_CONNECTIONS = _text(429, "Too many concurrent requests", (b"retry-after", b"1"))
PAYLOAD_TOO_LARGE = _text(413, "Payload too large")
METHOD_NOT_ALLOWED = _text(
    405, "Method not allowed", (b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
)
#: Never forwarded: TRACE (and IIS's TRACK) would echo the minted token back to the client, CONNECT
#: asks for a tunnel. Matched case-insensitively (some servers treat method names so).
_REFUSED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})
#: Methods that are none of those whatever their case (skips an ``upper()`` per request).
_USUAL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: A principal, its rate limit, whether it has a quota or credits, its connection cap, consumer id.
_Plan = tuple[PrincipalLike, Rate | None, bool, int, int]
#: Most principals whose _Plan is kept (then they are worked out again as requests come).
_PLANS_LIMIT = 10_000


class _NoKey(Exception):
    pass


class _UnknownKey(InvalidApiKey):
    """A key the key filter refused: no key like it exists, so it has no owner to count it for."""


class _StoreDown(Exception):
    pass


def _api_key_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The API key from the ``Authorization: Bearer <key>`` header.

    Raises:
        _NoKey: no ``Authorization`` header, or one with another scheme.
        InvalidApiKey: two headers, an empty or over-long or non-ASCII bearer value.
    """
    value: bytes | None = None
    for name, raw in headers:
        if name == _AUTHORIZATION or (len(name) == 13 and name.lower() == _AUTHORIZATION):
            if value is not None:
                raise InvalidApiKey("more than one Authorization header")
            value = raw
    return _bearer_key(value)


def _authorization_and_trace(
    headers: list[tuple[bytes, bytes]],
) -> tuple[bytes | None, bool, bool]:
    """For a gateway that traces, in one pass over the headers (the one :func:`_api_key_from`
    makes): the ``Authorization`` value (``None``: none), whether there were several, and whether
    the caller sent ``traceparent`` or ``tracestate`` (names are lower case in ASGI). Raises
    nothing: the request's trace begins before its key is judged (:func:`_traced_api_key`)."""
    value: bytes | None = None
    several = False
    traced = False
    for name, raw in headers:
        if name == _AUTHORIZATION or (len(name) == 13 and name.lower() == _AUTHORIZATION):
            if value is None:
                value = raw
            else:
                several = True
        elif name in _TRACE_HEADERS or (len(name) in (10, 11) and name.lower() in _TRACE_HEADERS):
            traced = True  # (in any case, as the key: not every ASGI server lowers names)
    return value, several, traced


def _traced_api_key(value: bytes | None, several: bool) -> str:
    """:func:`_api_key_from` for what :func:`_authorization_and_trace` found (same errors)."""
    if several:
        raise InvalidApiKey("more than one Authorization header")
    return _bearer_key(value)


def _bearer_key(value: bytes | None) -> str:
    """The API key of an ``Authorization`` value (errors as :func:`_api_key_from`)."""
    if value is None:
        raise _NoKey
    if len(value) > _MAX_KEY_HEADER:
        raise InvalidApiKey("Authorization header too long")
    match = _BEARER.fullmatch(value)
    if match is None:
        if (
            value[:7].lower() != b"bearer "
            and value.lower() != b"bearer"
            and _SCHEME.fullmatch(value)
        ):
            raise _NoKey
        raise InvalidApiKey("malformed Authorization header")
    return match.group(1).decode("ascii")


async def _respond(send: Send, response: tuple[int, list[tuple[bytes, bytes]], bytes]) -> int:
    status, headers, body = response
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return status


class GatewayApp:
    """The gateway as an ASGI 3 application.

    Args:
        settings: validated settings.
        api_keys: authenticates API keys (``ApiKeys``); if it has ``lookup_cached(key, now)``
            (no I/O; ``None`` on a miss) the event loop uses it first and only misses go to a thread.
        keyring: the signing keys (``Keyring``).
        watcher: factory ``(on_change) -> watcher`` started in the lifespan (``ChangeWatcher``);
            ``None`` for no cross-process change detection.
        clock: wall-clock seconds (token ``iat``/``exp``, key expiry); injectable for tests.
        on_close: called (in a thread) after shutdown, e.g. to close the store.
        access_log: where access lines go (default: the ``keyswap.access`` logger).
        rate_limiter: counts requests per consumer (``None``: no rate limiting at all); closed at
            shutdown.
        default_rate: the limit of consumers without their own (``None``: unlimited).
        store_calls: runs cache misses on a few threads, each awaited for a bounded time (default
            :class:`~keyswap.gateway.storecalls.StoreCalls`: 2 s, 8 threads); past it the key is
            answered from memory as in an outage (``api_keys.store_timed_out(key, now)``), else 503.
        websocket_limits: idle and lifetime bounds of relayed websockets
            (:mod:`keyswap.gateway.wsrelay`; served only when the server runs with websockets).
        changes: the store's change log (:class:`~keyswap.gateway.changefeed.ChangeFeed`): on a
            change, only what it names is invalidated (``None``: every change clears everything).
        secret_scanning: serves GitHub's leak reports under ``/__keyswap/secret-scanning/``
            (:mod:`keyswap.gateway.secretscanning`; ``None``: off, those paths are 404).
        quotas: counts requests against consumers' quotas and credits
            (:mod:`keyswap.gateway.quota`; ``None``: not enforced); closed at shutdown.
        meter: counts every request per consumer and key (:mod:`keyswap.gateway.meter`), started
            and flushed with the app (``None``: no usage metering).
        metrics: counts requests for Prometheus (:mod:`keyswap.gateway.metrics`; ``None``: nothing
            is counted).
        metrics_writer: writes ``metrics`` to the supervisor's directory (``--workers N``), started
            and stopped with the app.
        tracing: OpenTelemetry spans and ``traceparent`` propagation
            (:mod:`keyswap.gateway.tracing`; ``None``: off, no cost).
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        api_keys: ApiKeysLike,
        keyring: KeyringLike,
        watcher: Callable[[Callable[[], None]], WatcherLike] | None = None,
        clock: Callable[[], float] = time.time,
        on_close: Callable[[], None] | None = None,
        access_log: AccessLog | None = None,
        rate_limiter: RateLimiter | None = None,
        default_rate: Rate | None = None,
        store_calls: StoreCalls | None = None,
        websocket_limits: WebSocketLimits | None = None,
        changes: ChangeFeed | None = None,
        secret_scanning: SecretScanning | None = None,
        quotas: QuotaEnforcer | None = None,
        meter: Meter | None = None,
        metrics: GatewayMetrics | None = None,
        tracing: Tracing | None = None,
        metrics_writer: SnapshotWriter | None = None,
    ) -> None:
        self.settings = settings
        self.secret_scanning = secret_scanning
        self.quotas = quotas
        self.meter = meter
        self.metrics = metrics
        self.tracing = tracing
        self._metrics_writer = metrics_writer
        # a consumer with both: the rate limit and the quota in one Redis round trip
        self._rate_with_quota = quotas is not None and quotas.shares_redis_with(rate_limiter)
        self.websocket_limits = websocket_limits or WebSocketLimits()
        self.changes = changes
        self.store_calls = store_calls or StoreCalls()
        self.rate_limiter = rate_limiter
        self._default_rate = default_rate
        self._api_keys = api_keys
        self._lookup_cached: Callable[[str, float], PrincipalLike | None] | None = getattr(
            api_keys, "lookup_cached", None
        )
        self._keyring = keyring
        self._clock = clock
        self._watcher_factory = watcher
        self._watcher: WatcherLike | None = None
        self._on_close = on_close
        self._access = access_log or AccessLog()
        self.minter = TokenMinter(
            keyring.active,
            issuer=settings.issuer,
            audience=settings.audience,
            ttl=settings.token_ttl,
            clock=clock,
        )
        #: Signs tokens a request needs that are not cached yet (see :meth:`_mint_aside`).
        self._signer: Signer[PrincipalLike, MintedToken] = Signer(self.minter.token_for)
        #: Signs every per-request token (bound mode, Transaction Tokens): signatures made one
        #: after another on one thread keep the curve's tables in that core's caches, and the event
        #: loop's own code in its (bound ES256: 144 -> 131 µs of CPU a request; BENCHMARKS.md 12c).
        self._request_signer: Signer[_MintJob, str] = Signer(
            self._mint_job, name="keyswap-sign-req"
        )
        self.wellknown = WellKnown(
            settings.issuer,
            keyring.public_jwks,
            algorithm=settings.alg,
            max_age=settings.jwks_max_age,
        )
        self.proxy = UpstreamProxy(
            settings.upstream,
            timeout=settings.upstream_timeout,
            max_connections=settings.max_connections,
        )
        self._binds = settings.bind.enabled
        self._bind_match = settings.bind.match
        self._txn = settings.token_format == "txn-token"  # noqa: S105
        #: Requests in flight to the upstream, per consumer id (see ``max_connections_per_consumer``).
        self.in_flight: dict[int, int] = {}
        self._plans: dict[str, _Plan] = {}  # key id -> what _http needs of its principal (_plan)
        self._trust_forwarded = settings.trust_forwarded
        self._header_policy = settings.header_policy
        self._prepared = False
        #: Set once the start-up warm-up (key filter, recent keys, their tokens) is over.
        self.warmed = threading.Event()
        self._next_check: asyncio.Future[int | None] | None = None
        self._checking = False  # a revision read is running or scheduled
        self._last_check = float("-inf")  # loop time the last one started
        #: A SQLite store's revision read on the event loop (``Store.quick_revision``), set at
        #: start-up; ``None``: every revision read goes to a store thread.
        self._quick_revision: QuickRevision | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: What the last :meth:`on_change` invalidated (``None`` before the first change).
        self.last_changes: Changes | None = None
        self._prune_task: asyncio.Task[None] | None = None
        if metrics is not None:
            self._wire_metrics(metrics)

    def _wire_metrics(self, metrics: GatewayMetrics) -> None:
        """Values the components keep themselves, read at scrape time (nothing on the request path)."""
        api_keys = self._api_keys
        minter = self.minter
        if hasattr(api_keys, "store_failures"):
            metrics.sources["store_errors"] = lambda: int(getattr(api_keys, "store_failures", 0))
        if hasattr(api_keys, "fallbacks"):
            metrics.sources["store_fallbacks"] = lambda: int(getattr(api_keys, "fallbacks", 0))
        metrics.sources["tokens_minted"] = lambda: minter.minted
        in_flight = self.in_flight
        metrics.gauges["upstream_requests_in_flight"] = lambda: sum(list(in_flight.values()))
        keyring = self._keyring
        clock = self._clock

        def signing_key_age() -> float | None:
            records = getattr(keyring, "records", None)
            if not callable(records):
                return None
            for record in records():
                if getattr(record, "state", None) == "active":
                    since = getattr(record, "activated_at", None) or record.created_at
                    return max(0.0, clock() - float(since))
            return None

        metrics.gauges["signing_key_age"] = signing_key_age

    @property
    def api_keys(self) -> ApiKeysLike:
        """The API keys the app authenticates with."""
        return self._api_keys

    # -- set-up --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create signing keys on first start and render the JWKS (blocking; idempotent).

        The CLI calls it before the server starts, so configuration errors surface as one line.

        Raises:
            ConfigError: the keyring cannot provide a key for the configured algorithm.
        """
        if self._prepared:
            return
        self._keyring.ensure(self.settings.alg)
        active = self._keyring.active()
        if active.alg != self.settings.alg:
            logger.warning(
                "the active signing key is %s, not %s: --alg applies to keys created from now on "
                "(switch with 'keyswap signing-keys rotate --alg %s', then rotate again after 5 minutes)",
                active.alg,
                self.settings.alg,
                self.settings.alg,
            )
        self.wellknown.refresh()
        self._prepared = True

    def on_change(self) -> None:
        """React to a store change (called on the watcher's thread; reference swaps only).

        With a change feed, only what the change log names is invalidated: a key's cached lookup and
        minted token, a consumer's keys, the signing keys (reloaded, JWKS re-rendered, tokens flushed).
        Without one, or when the log cannot say, everything is.
        """
        changes = FULL if self.changes is None else self.changes.read()
        revision = None if self.changes is None else self.changes.revision
        self.last_changes = changes
        if not changes.full:
            changed = getattr(self._api_keys, "changed", None)
            invalidate = getattr(self._api_keys, "invalidate", None)
            if callable(changed) and revision is not None:
                changed(changes.key_ids, changes.consumer_ids, revision)
            elif callable(invalidate):
                invalidate(changes.key_ids, changes.consumer_ids)
            elif changes.key_ids or changes.consumer_ids:
                changes = FULL
            self.minter.forget(changes.key_ids)
            if not changes.full and not changes.signing:
                return
        if changes.full:
            clear = getattr(self._api_keys, "clear_cache", None)
            if callable(clear):
                clear()
            reload_filter = getattr(self._api_keys, "reload_filter_soon", None)
            if callable(reload_filter):
                reload_filter()
        try:
            self._keyring.reload()
            self.wellknown.refresh()
        except Exception as exc:  # keep serving the last good keys
            logger.error("reloading signing keys failed (%s)", type(exc).__name__)
        self.minter.flush()

    async def startup(self) -> None:
        """Lifespan start-up: keys, connection pool, change watcher, prune task."""
        if not self._prepared:
            await asyncio.to_thread(self.prepare)
        await self.proxy.start()
        if self.changes is not None:  # its baseline before the watcher's: nothing falls between
            await asyncio.to_thread(self.changes.start)
        if self._watcher_factory is not None:
            self._watcher = self._watcher_factory(self.on_change)
            self._watcher.start()
        quick = getattr(self._api_keys, "quick_revision", None)
        if callable(quick):
            self._quick_revision = quick()
        threading.Thread(target=self._warm_up, name="keyswap-warm-up", daemon=True).start()
        self._prune_task = asyncio.create_task(self._prune_loop())
        if self.meter is not None:
            self.meter.start()
        if self._metrics_writer is not None:
            self._metrics_writer.start()

    def _warm_up(self) -> None:
        """Off the request path, after start: load the key filter, then put the usable keys in the
        lookup cache (those used recently by any node first, by the store's last-used times) and
        mint their tokens, so that their first requests cost neither a lookup nor a signature.
        ``/__keyswap/ready`` answers 200 once this is done."""
        try:
            load = getattr(self._api_keys, "load_filter", None)
            if callable(load):
                load()
            warm = getattr(self._api_keys, "warm", None)
            if callable(warm):
                started = time.perf_counter()
                usable = warm(self._clock() - WARM_WINDOW, WARM_LIMIT)
                for principal in usable[: self.minter.max_entries]:
                    self.minter.token_for(principal)
                sizes = getattr(self._api_keys, "cache_sizes", (0, 0))
                logger.info(
                    "warm start: %d API keys cached, %d tokens minted (%.2f s)",
                    sizes[0],
                    min(len(usable), self.minter.max_entries),
                    time.perf_counter() - started,
                )
        except Exception as exc:  # a warm-up that fails leaves the gateway as cold as before
            logger.warning("warming the caches failed (%s)", type(exc).__name__)
        finally:
            self.warmed.set()

    def _confirm_revision(self) -> int:
        """The store's revision now; if this node has not applied it yet, apply it first (on the
        calling store thread), so that the key filter is as new as the store."""
        current: int = getattr(self._api_keys, "store_revision")()  # noqa: B009
        feed = self.changes
        if feed is not None and (feed.revision is None or feed.revision < current):
            observe = getattr(self._watcher, "observe", None)
            if callable(observe):
                observe(current)
        return current

    def _revision_check(self) -> asyncio.Future[int | None]:
        """A store revision read that starts after this call, shared by every caller until it
        starts. Reads start at most every ``CHECK_INTERVAL`` seconds (one at a time): a flood of
        unknown keys costs at most that many reads a second, each refusal waiting that long at most.
        """
        upcoming = self._next_check
        if upcoming is None:
            upcoming = self._next_check = asyncio.get_running_loop().create_future()
            if not self._checking:
                self._schedule_check()
        return upcoming

    def _schedule_check(self) -> None:
        self._checking = True
        loop = asyncio.get_running_loop()
        delay = self._last_check + CHECK_INTERVAL - loop.time()
        if delay > 0:
            loop.call_later(delay, self._start_check)
        else:
            self._start_check()

    def _start_check(self) -> None:
        upcoming, self._next_check = self._next_check, None
        if upcoming is None:
            self._checking = False
            return
        self._last_check = asyncio.get_running_loop().time()
        task = asyncio.ensure_future(self._check(upcoming))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, upcoming: asyncio.Future[int | None]) -> None:
        try:
            revision = await self.store_calls.run(self._confirm_revision)
        except StoreTimeout as exc:  # a hung store: every waiter answers as during an outage
            if not upcoming.done():
                upcoming.set_exception(exc)
        except Exception:  # the waiters look their keys up instead (outage rules apply there)
            if not upcoming.done():
                upcoming.set_result(None)
        else:
            if not upcoming.done():
                upcoming.set_result(revision)
        finally:
            self._checking = False
            if self._next_check is not None:
                self._schedule_check()

    async def _surely_unknown(self, key: str) -> bool:
        """True if the key filter says ``key`` does not exist and the store has not changed since
        (its revision read after the request arrived); False means: look it up.

        On SQLite the revision is read here, on the event loop, in a few microseconds and without
        waiting for any lock (:class:`~keyswap.store.sql.QuickRevision`); if that read fails, or
        the store has changed since the filter was brought up to date, or on PostgreSQL, the
        request waits for a read shared with the other refusals, on a store thread, which first
        applies any change this node has not applied yet.

        Raises:
            StoreTimeout: the store did not answer the revision read in time.
        """
        absent = getattr(self._api_keys, "absent", None)
        if absent is None:
            return False
        covered = absent(key)
        if covered is None:
            return False
        quick = self._quick_revision
        if quick is not None:
            try:
                if quick() <= covered:
                    return True
            except Exception:  # noqa: S110 - locked or unreadable: the usual read says
                pass
        current = await asyncio.shield(self._revision_check())
        if current is None:
            return False
        covered = absent(key)  # the filter may have moved on while the revision was read
        return covered is not None and current <= covered

    async def shutdown(self) -> None:
        """Lifespan shutdown: stop everything started in :meth:`startup`."""
        task, self._prune_task = self._prune_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await asyncio.to_thread(watcher.stop)
        await self.proxy.close()
        if self.meter is not None:  # requests have drained: everything counted is written
            await self.meter.close()
        self.store_calls.close()
        quick, self._quick_revision = self._quick_revision, None
        if quick is not None:
            quick.close()
        self._signer.close()
        self._request_signer.close()
        await asyncio.to_thread(self._access.close)
        if self.rate_limiter is not None:
            await self.rate_limiter.close()
        if self.quotas is not None:
            await self.quotas.close()
        if self._metrics_writer is not None:
            await asyncio.to_thread(self._metrics_writer.stop)
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.close)
        if self._on_close is not None:
            await asyncio.to_thread(self._on_close)

    async def _prune_loop(self) -> None:
        settings = self.settings
        while True:
            try:
                removed = await asyncio.to_thread(self._keyring.prune, self._clock())
                if removed:
                    logger.info("pruned %d retired signing key(s)", len(removed))
            except Exception as exc:
                logger.error("pruning signing keys failed (%s)", type(exc).__name__)
            await asyncio.sleep(settings.prune_interval)

    # -- ASGI ----------------------------------------------------------------------------------

    @property
    def http_handler(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """What the app does with an ``http`` scope: a server wrapper that tells scopes apart itself
        (:class:`keyswap.gateway.serve.DrainGuard`) calls it directly, one coroutine less a request
        than through :meth:`__call__`."""
        return self._http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    reason = exc.reason if isinstance(exc, KeyswapError) else type(exc).__name__
                    await send({"type": "lifespan.startup.failed", "message": reason})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        consumer: str | None = None
        key_id: str | None = None
        status = 500
        meter = self.meter
        exchange: Exchange | None = None
        refused_key: str | None = None  # a key answered 401 (counted for its owner if known)
        key: str | None = None
        metrics = self.metrics
        trace = None
        try:
            if raw_path.startswith(_RESERVED):  # health checks and JWKS fetches are not traced
                meter = None  # the gateway's own documents are not usage
                path = raw_path.decode("latin-1")
                if self.secret_scanning is not None and self.secret_scanning.handles(path):
                    status = await self.secret_scanning(scope, receive, send)
                    return
                if path == READY_PATH:
                    if method not in ("GET", "HEAD"):
                        status = await _respond(send, READY_METHODS)
                    else:
                        status = await _respond(send, READY if self.warmed.is_set() else WARMING)
                    return
                document = self.wellknown.lookup(method, path)
                status = await _respond(send, (document.status, document.headers, document.body))
                return
            authorization: bytes | None = None
            several = False
            if self.tracing is not None:  # one pass over the headers for the key and the trace
                authorization, several, traced = _authorization_and_trace(scope["headers"])
                trace = self.tracing.begin(scope, method, raw_path, traced)
            if method not in _USUAL_METHODS and method.upper() in _REFUSED_METHODS:
                status = await _respond(send, METHOD_NOT_ALLOWED)
                return
            try:
                if trace is None:
                    key = _api_key_from(scope["headers"])
                else:
                    key = _traced_api_key(authorization, several)
                principal = self._cached(key, self._clock())  # no coroutine for a cached key
                if principal is None:
                    if trace is None or not trace.recording:
                        principal = await self._authenticate(key, cached=False)
                    else:
                        looked_up = self._authenticate(key, cached=False)
                        principal = await trace.run("keyswap.key_lookup", looked_up)
                elif trace is not None and trace.recording:  # no span for work not done
                    trace.note("keyswap.key_cache", "hit")
            except _NoKey:
                status = await _respond(send, NO_API_KEY)
                return
            except InvalidApiKey as exc:
                refused_key = None if isinstance(exc, _UnknownKey) else key
                status = await _respond(send, INVALID_API_KEY)
                return
            except _StoreDown:
                status = await _respond(send, UNAVAILABLE)
                return
            consumer, key_id = principal.consumer, principal.key_id
            plan = self._plans.get(key_id)
            if plan is None or plan[0] is not principal:
                plan = self._plan(principal)
            _, rate, has_quota, cap, holder = plan
            limit_headers: list[tuple[bytes, bytes]] | None = None
            quotas = self.quotas
            spent: QuotaDecision | None = None
            if self.rate_limiter is not None and rate is not None:
                if has_quota and self._rate_with_quota:
                    assert quotas is not None
                    decision, spent = await quotas.check_with_rate(
                        principal,  # type: ignore[arg-type]
                        rate,
                        self.rate_limiter,  # type: ignore[arg-type]
                    )
                    has_quota = False  # done
                else:
                    decision = await self.rate_limiter.hit(holder, rate)
                if not decision.allowed:
                    if metrics is not None:
                        metrics.refusals["rate_limit"] += 1
                    status = await _respond(send, too_many_requests(decision))
                    return
                limit_headers = decision.headers()
            if has_quota:
                assert quotas is not None
                spent = await quotas.check(principal)  # type: ignore[arg-type]
            if spent is not None:
                if not spent.allowed:
                    if metrics is not None:
                        metrics.refusals["quota"] += 1
                    status = await _respond(send, quota_exceeded(spent))
                    return
                limit_headers = (limit_headers or []) + spent.headers()
            if limit_headers:
                send = with_limit_headers(send, limit_headers)
            try:
                url = self.proxy.target(raw_path, scope.get("query_string", b""))
            except BadTarget:
                status = await _respond(send, BAD_REQUEST)
                return
            rule = self._bind_match(method, raw_path) if self._binds else None
            bearer = b""  # `Bearer <token>` of the consumer's cached token, built once per token
            if rule is None and not self._txn:
                try:
                    minted = self.minter.reusable(principal)
                    if minted is None:  # signed on the signing thread
                        if trace is None or not trace.recording:
                            minted = await self._mint_aside(principal)
                        else:
                            minted = await trace.run("keyswap.mint", self._mint_aside(principal))
                    elif trace is not None and trace.recording:
                        trace.note("keyswap.token", "reused")
                    bearer = minted.header
                except (KeysUnavailable, ConfigError) as exc:
                    logger.error("cannot mint a token: %s", exc.reason)
                    status = await _respond(send, UNAVAILABLE)
                    return
            try:
                headers = forwarded_request_headers(
                    scope["headers"],
                    client=scope.get("client"),
                    scheme=scope.get("scheme", "http"),
                    trust_forwarded=self._trust_forwarded,
                    policy=self._header_policy,
                )
            except HeadersTooLarge:
                status = await _respond(send, HEADERS_TOO_LARGE)
                return
            preread: ReadBody | None = None
            if bearer:
                headers.set(_AUTHORIZATION, bearer)
            else:
                try:
                    preread = await self._per_request_token(
                        scope, receive, principal, rule, url, headers
                    )
                except BodyTooLarge:
                    status = await _respond(send, PAYLOAD_TOO_LARGE)
                    return
                except ClientLeft:
                    status = 499
                    return
                except (KeysUnavailable, ConfigError) as exc:
                    logger.error("cannot mint a token: %s", exc.reason)
                    status = await _respond(send, UNAVAILABLE)
                    return
            held = self.in_flight.get(holder, 0)
            if held >= cap:
                if metrics is not None:
                    metrics.refusals["concurrency"] += 1
                status = await _respond(send, TOO_MANY_CONNECTIONS)
                return
            self.in_flight[holder] = held + 1
            if meter is not None:
                exchange = Exchange()
            forwarding = time.perf_counter() if metrics is not None else 0.0
            try:
                if trace is None:
                    status = await self.proxy.forward(
                        scope, receive, send, url, headers, exchange, preread=preread
                    )
                elif not trace.recording:  # not sampled: the origin still gets a traceparent
                    trace.propagate(headers)
                    status = await self.proxy.forward(
                        scope, receive, send, url, headers, exchange, preread=preread
                    )
                else:
                    status = await trace.upstream(
                        lambda s, r, w, u, h: self.proxy.forward(
                            s, r, w, u, h, exchange, preread=preread
                        ),
                        scope,
                        receive,
                        send,
                        url,
                        headers,
                    )
            except UpstreamTimeout:
                if metrics is not None:
                    metrics.upstream_errors["timeout"] += 1
                status = await _respond(send, GATEWAY_TIMEOUT)
            except UpstreamError as exc:
                if metrics is not None:
                    metrics.upstream_errors[_upstream_error_kind(exc)] += 1
                status = await _respond(send, BAD_GATEWAY)
            except ClientGone:
                status = 499
            finally:
                left = self.in_flight[holder] - 1
                if left:
                    self.in_flight[holder] = left
                else:
                    del self.in_flight[holder]
                if metrics is not None:
                    metrics.observe_upstream(time.perf_counter() - forwarding)
        except asyncio.CancelledError:
            # Only a drain that timed out cancels a request: keyswap.gateway.serve.DrainGuard
            # answers it 503 (or just ends a response already streaming). Log that, not a 500.
            status = 503
            raise
        finally:
            self._access.log(method, raw_path, status, consumer, key_id, started)
            if meter is not None:
                if refused_key is not None:  # after the answer: a revoked or expired key's owner
                    consumer, key_id = self._refused_owner(refused_key)
                meter.record(consumer, key_id, status, exchange)
            if metrics is not None:
                metrics.observe(status, time.perf_counter() - started)
            if trace is not None and trace.recording:  # an unsampled request has no span to end
                trace.finish(status)

    async def _per_request_token(
        self,
        scope: Scope,
        receive: Receive,
        principal: PrincipalLike,
        rule: BindRule | None,
        target: bytes,
        headers: ForwardedHeaders,
    ) -> ReadBody | None:
        """Mint this request's own token (bound when ``rule`` says so, a Transaction Token in
        txn-token mode) and set it, and ``Content-Digest``, on ``headers``; returns the body read
        ahead of forwarding (``None``: nothing read).

        Raises:
            BodyTooLarge: a bound body over the limit on a route without the opt-out (413).
            ClientLeft: the client left while its body was read.
            KeysUnavailable, ConfigError: no signing key can sign.
        """
        settings = self.settings
        policy = settings.bind
        binding: dict[str, Any] = {}
        body: ReadBody | None = None
        headers.items = [(n, v) for n, v in headers.items if n != b"content-digest"]
        if rule is not None:
            if headers.has_body:
                body = await read_body(
                    receive,
                    declared=headers.content_length,
                    limit=policy.max_body,
                    unbound_ok=rule.unbound_body,
                )
            origin = self.proxy.origin
            query: bytes = scope.get("query_string", b"")
            path = target[: len(target) - len(query) - 1] if query else target
            binding = binding_claims(
                method=scope["method"],
                scheme=origin.scheme,
                authority=origin.host_header.decode("ascii"),
                path=path.decode("latin-1"),
                query=query,
                body=body,
                max_body=policy.max_body,
            )
            digest = binding.get("htd")
            if digest is not None and digest != UNBOUND_BODY:
                headers["content-digest"] = digest
        if self._txn:
            txn = str(uuid.uuid4())
            client = scope.get("client")
            requester = {"req_ip": client[0]} if client else {}
            job = _MintJob(principal, binding, policy.ttl, txn, settings.txn_purpose, requester)
            headers["txn-token"] = await self._request_signer.run(job)
            logger.info("txn %s for consumer %s", txn, principal.consumer)
        else:
            job = _MintJob(principal, binding, policy.ttl)
            headers["authorization"] = "Bearer " + await self._request_signer.run(job)
        return body

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A websocket handshake: the same checks as any request, refusals answered as plain HTTP
        (``websocket.http.response``), then relayed to the upstream (:mod:`keyswap.gateway.wsrelay`)."""
        started = time.perf_counter()
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        consumer: str | None = None
        key_id: str | None = None
        refused_key: str | None = None
        status = 500

        async def refuse(response: tuple[int, list[tuple[bytes, bytes]], bytes]) -> int:
            code, headers, body = response
            if "websocket.http.response" not in scope.get("extensions", {}):
                await send({"type": "websocket.close", "code": 1008})
                return code
            await send(
                {"type": "websocket.http.response.start", "status": code, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
            return code

        try:
            if raw_path.startswith(_RESERVED):  # the gateway's own documents are not websockets
                status = await refuse(BAD_REQUEST)
                return
            key: str | None = None
            try:
                key = _api_key_from(scope["headers"])
                principal = await self._authenticate(key)
            except _NoKey:
                status = await refuse(NO_API_KEY)
                return
            except InvalidApiKey as exc:
                refused_key = None if isinstance(exc, _UnknownKey) else key
                status = await refuse(INVALID_API_KEY)
                return
            except _StoreDown:
                status = await refuse(UNAVAILABLE)
                return
            consumer, key_id = principal.consumer, principal.key_id
            if self.rate_limiter is not None:
                rate = rate_for(getattr(principal, "rate_limit", None), self._default_rate)
                if rate is not None:
                    decision = await self.rate_limiter.hit(
                        getattr(principal, "consumer_id", 0), rate
                    )
                    if not decision.allowed:
                        if self.metrics is not None:
                            self.metrics.refusals["rate_limit"] += 1
                        status = await refuse(too_many_requests(decision))
                        return
            if self.quotas is not None and (
                getattr(principal, "quota", None) is not None
                or getattr(principal, "credits", None) is not None
            ):
                spent = await self.quotas.check(principal)  # type: ignore[arg-type]
                if spent is not None and not spent.allowed:
                    if self.metrics is not None:
                        self.metrics.refusals["quota"] += 1
                    status = await refuse(quota_exceeded(spent))
                    return
            try:
                target = self.proxy.target(raw_path, scope.get("query_string", b""))
                token = self.minter.token_for(principal).token
                headers = forwarded_request_headers(
                    scope["headers"],
                    client=scope.get("client"),
                    scheme="https" if scope.get("scheme") == "wss" else "http",
                    trust_forwarded=self.settings.trust_forwarded,
                    policy=self.settings.header_policy,
                )
            except BadTarget:
                status = await refuse(BAD_REQUEST)
                return
            except HeadersTooLarge:
                status = await refuse(HEADERS_TOO_LARGE)
                return
            except (KeysUnavailable, ConfigError) as exc:
                logger.error("cannot mint a token: %s", exc.reason)
                status = await refuse(UNAVAILABLE)
                return
            headers["authorization"] = "Bearer " + token
            holder: int = getattr(principal, "consumer_id", 0)
            held = self.in_flight.get(holder, 0)
            if held >= self._connection_cap(principal):
                status = await refuse(TOO_MANY_CONNECTIONS)
                return
            self.in_flight[holder] = held + 1
            try:
                status = await relay(
                    scope,
                    receive,
                    send,
                    upstream_ws_url(self.settings.upstream, target),
                    handshake_headers(headers.items),
                    self.websocket_limits,
                    open_timeout=self.settings.upstream_timeout,
                )
            finally:
                left = self.in_flight[holder] - 1
                if left:
                    self.in_flight[holder] = left
                else:
                    del self.in_flight[holder]
        finally:
            self._access.log("GET", raw_path, status, consumer, key_id, started)
            if self.meter is not None and not raw_path.startswith(_RESERVED):
                if refused_key is not None:  # after the answer: a revoked or expired key's owner
                    consumer, key_id = self._refused_owner(refused_key)
                self.meter.record(consumer, key_id, status, None)
            if self.metrics is not None:
                self.metrics.observe(status, time.perf_counter() - started)

    def _refused_owner(self, key: str) -> tuple[str | None, str | None]:
        """``(consumer, key id)`` of a refused key this node knows as revoked or expired (no I/O)."""
        lookup = getattr(self._api_keys, "refused_owner", None)
        owner: tuple[str, str] | None = lookup(key) if lookup is not None else None
        return (None, None) if owner is None else owner

    def _plan(self, principal: PrincipalLike) -> _Plan:
        """What the request path needs of ``principal``, worked out once per principal object (a
        cached lookup returns the same object; a changed consumer or key is a new one): its rate
        limit, whether it has a quota or credits, its cap on requests in flight, its consumer id."""
        plan: _Plan = (
            principal,
            rate_for(getattr(principal, "rate_limit", None), self._default_rate),
            self.quotas is not None
            and (
                getattr(principal, "quota", None) is not None
                or getattr(principal, "credits", None) is not None
            ),
            self._connection_cap(principal),
            getattr(principal, "consumer_id", 0),
        )
        plans = self._plans
        if len(plans) >= _PLANS_LIMIT:
            plans.clear()
        plans[principal.key_id] = plan
        return plan

    def _connection_cap(self, principal: PrincipalLike) -> int:
        """The consumer's own cap on requests in flight (``consumers.max_connections``), else the
        gateway's ``max_connections_per_consumer``."""
        own = getattr(principal, "max_connections", None)
        if isinstance(own, int) and own > 0:
            return own
        default = self.settings.max_connections_per_consumer
        assert default is not None  # set in GatewaySettings.__post_init__
        return default

    def _mint_job(self, job: _MintJob) -> str:
        """On the request signing thread: one request's own token."""
        token, _ = self.minter.mint_per_request(
            job.principal,
            job.binding,
            ttl=job.ttl,
            txn=job.txn,
            purpose=job.purpose,
            requester=job.requester,
        )
        return token

    async def _mint_aside(self, principal: PrincipalLike) -> MintedToken:
        """A new token for ``principal``, signed on the signing thread (signing releases the GIL):
        a key's first request, or its first after half the token's lifetime, does not hold the
        event loop for the signature."""
        return await self._signer.run(principal)

    def _cached(self, key: str, now: float) -> PrincipalLike | None:
        """The key's principal from the lookup cache (no I/O); ``None`` on a miss. Raises as
        :meth:`_authenticate` does."""
        lookup = self._lookup_cached
        if lookup is None:
            return None
        try:
            principal = lookup(key, now)
            if principal is not None and self.metrics is not None:
                self.metrics.key_cache_hits += 1
            return principal
        except InvalidApiKey:
            raise
        except StoreUnavailable:  # the outage itself is logged once, by the change watcher
            raise _StoreDown from None
        except Exception as exc:  # a store failure must not become a 500 nor leak the key
            if self.metrics is not None:
                self.metrics.store_errors += 1
            logger.error("API key lookup failed (%s)", type(exc).__name__)
            raise _StoreDown from None

    async def _authenticate(self, key: str, *, cached: bool = True) -> PrincipalLike:
        """The key's principal: from the lookup cache (unless ``cached`` is false: the caller
        asked it already), else from the store on a thread.

        Raises:
            InvalidApiKey: unknown, malformed, revoked or expired key.
            _StoreDown: the store is unavailable (or failed) for a key not known here.
        """
        now = self._clock()
        if cached:
            principal = self._cached(key, now)
            if principal is not None:
                return principal
        try:
            lookup = self._lookup_cached
            metrics = self.metrics
            if metrics is not None:
                metrics.key_cache_misses += 1
            try:
                if lookup is not None and await self._surely_unknown(key):
                    raise _UnknownKey("Invalid API key")
                return await self.store_calls.run(self._api_keys.authenticate, key, now)
            except StoreTimeout:  # a hung database: answer from memory as in an outage, or 503
                if metrics is not None:
                    metrics.store_errors += 1
                timed_out = getattr(self._api_keys, "store_timed_out", None)
                if timed_out is None:
                    raise
                answer: PrincipalLike = timed_out(key, now)
                return answer
        except InvalidApiKey:
            raise
        except StoreUnavailable:  # the outage itself is logged once, by the change watcher
            raise _StoreDown from None
        except Exception as exc:  # a store failure must not become a 500 nor leak the key
            if self.metrics is not None:
                self.metrics.store_errors += 1
            logger.error("API key lookup failed (%s)", type(exc).__name__)
            raise _StoreDown from None


def _upstream_error_kind(exc: UpstreamError) -> str:
    """``connect`` (unreachable) or ``protocol`` (anything else: a broken answer, a closed pool)."""
    return "connect" if isinstance(exc.__cause__, OSError) else "protocol"


def build_gateway(
    settings: GatewaySettings,
    *,
    db_url: str,
    secret_file: str | None = None,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    cluster: ClusterSettings | None = None,
    websocket_limits: WebSocketLimits | None = None,
    secret_scanning: SecretScanningSettings | None = None,
    usage_interval: float | None = DEFAULT_USAGE_INTERVAL,
    metrics: GatewayMetrics | None = None,
    metrics_dir: str | None = None,
    tracing: TracingSettings | Tracing | None = None,
) -> GatewayApp:
    """The gateway over the store at ``db_url``: API keys, keyring, change watcher, all wired.

    Opens the store and loads the server secret; the store is closed when the app shuts down (or here,
    if wiring fails). A SQLite database is created or upgraded on open; any other must be at the
    newest schema (``keyswap db upgrade``). Call :meth:`GatewayApp.prepare` before serving to create
    the signing keys on first start. ``cluster`` adds what several nodes need (change push, scheduled
    rotation, shared rate limits, outage grace; :mod:`keyswap.gateway.cluster`); the defaults apply
    without it. ``secret_scanning`` turns GitHub's leak reports on
    (:mod:`keyswap.gateway.secretscanning`).
    ``usage_interval``: seconds between writes of the usage meter
    (:mod:`keyswap.gateway.meter`; it also runs the usage rollup hourly); ``None``: no metering.
    without it. ``metrics`` counts for Prometheus (``metrics_dir``: also written there for the
    workers' supervisor); ``tracing`` turns OpenTelemetry on (:mod:`keyswap.gateway.tracing`).

    Raises:
        ConfigError: bad settings, no usable server secret, a database set up with another secret, or
            a database schema that is behind (or from a newer keyswap).
    """
    from keyswap.gateway.apikeys import ApiKeys
    from keyswap.gateway.cluster import build_cluster, build_rate_limiter
    from keyswap.gateway.keyring import Keyring
    from keyswap.gateway.quota import ThresholdNotifier, webhook_enqueuer
    from keyswap.gateway.secret import load_secret
    from keyswap.manage.context import audit_retention_from_env
    from keyswap.manage.signing import system_audit
    from keyswap.store import Store

    cluster = cluster or ClusterSettings()
    tracer: Tracing | None = None
    if tracing is not None:  # OpenTelemetry is imported only now
        from keyswap.gateway.tracing import Tracing as _Tracing
        from keyswap.gateway.tracing import build_tracing

        tracer = tracing if isinstance(tracing, _Tracing) else build_tracing(tracing)
    store = Store(db_url, timeout=cluster.db_timeout)
    try:
        secret = load_secret(db_url, secret_file=secret_file, env=env)
        # Every change reaches the node (push or poll, then the change log says what to invalidate),
        # so a cached lookup is trusted until a change names it; the TTL only bounds how long a lookup
        # survives if change detection itself were broken while the store answers.
        api_keys = ApiKeys(
            store,
            secret,
            prefix=settings.key_prefix,
            cache_ttl=CACHE_TTL,
            outage_grace=cluster.outage_grace,
            clock=clock,
        )
        keyring = Keyring(
            store,
            secret,
            token_ttl=settings.token_ttl,
            cache_margin=settings.jwks_max_age,
            clock=clock,
            audit=system_audit(store, clock=clock, retention=audit_retention_from_env()),
        )

        notifier = ThresholdNotifier(webhook_enqueuer(store))
        quotas = QuotaEnforcer(
            store,
            redis_url=cluster.redis_url,
            prefix=cluster.redis_prefix,
            clock=clock,
            on_threshold=notifier,
        )

        def tick() -> None:  # batched last-used writes, at most every 10 s; quota counts, 2 s
            api_keys.flush_last_used()
            quotas.tick()

        def watcher(on_change: Callable[[], None]) -> WatcherLike:
            return build_cluster(
                store,
                keyring,
                cluster,
                on_change=on_change,
                on_tick=tick,
                watch_interval=settings.watch_interval,
                clock=clock,
            )

        scanning = None
        if secret_scanning is not None:
            from keyswap.gateway.secretscanning import SecretScanning

            scanning = SecretScanning(
                secret_scanning, store=store, secret=secret, prefix=settings.key_prefix, clock=clock
            )

        def close() -> None:
            if scanning is not None:
                scanning.close()
            try:
                api_keys.flush_last_used(force=True)
            except Exception as exc:
                logger.warning("could not record last-used times (%s)", type(exc).__name__)
            notifier.close()
            store.close()

        meter = None
        if usage_interval is not None:
            from keyswap.store.usage import SqlUsageSink, rollup

            def roll_up(now: float) -> None:
                rollup(store, now=now)

            meter = Meter(
                SqlUsageSink(store), interval=usage_interval, clock=clock, maintenance=roll_up
            )

        return GatewayApp(
            settings,
            api_keys=api_keys,
            keyring=keyring,
            watcher=watcher,
            clock=clock,
            on_close=close,
            rate_limiter=build_rate_limiter(cluster, clock=clock),
            default_rate=cluster.rate_limit,
            store_calls=StoreCalls(cluster.db_timeout),
            websocket_limits=websocket_limits,
            changes=ChangeFeed(store),
            secret_scanning=scanning,
            quotas=quotas,
            meter=meter,
            metrics=metrics,
            tracing=tracer,
            metrics_writer=(
                None
                if metrics is None or metrics_dir is None
                else SnapshotWriter(metrics, metrics_dir)
            ),
        )
    except BaseException:
        store.close()
        if tracer is not None:
            tracer.close()
        raise
