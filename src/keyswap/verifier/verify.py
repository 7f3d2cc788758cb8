"""The :class:`Verifier`: issuer registry -> key set -> signature -> claims, sync and async, one token cache.

Order of the checks for a token that is not in the token cache (each step raises an
:class:`~keyswap.errors.InvalidToken` subclass, or :class:`~keyswap.errors.KeysUnavailable`):

1. size cap, ASCII, three strict base64url segments, header and payload strict JSON objects;
2. ``alg`` in the union of the issuers' allow-lists; ``kid`` a string; no forbidden header parameter;
3. the exact ``iss`` of the (still unverified) payload selects the issuer; an unknown issuer is rejected
   here, before any I/O; ``alg`` must be in *that* issuer's allow-list; under the RFC 9068 profile
   the header's ``typ`` must be ``at+jwt`` (or ``application/at+jwt``, any case);
4. the claims (``exp``/``nbf``/``iat`` with the issuer's leeway, ``aud``, required claims), so an expired
   or misdirected token never causes a JWKS fetch;
5. the issuer's key set gives the key for ``kid`` (may fetch the JWKS, rate-limited by the key set);
6. the signature, with the key bound to its algorithm family.

A verified token is cached (by a hash of the token, see :func:`~keyswap.verifier.tokencache.token_key`)
until its ``exp`` + leeway; a hit costs a hash and a dict lookup and never repeats the signature check.
When a key set drops a kid, its ``on_keys_removed`` callback purges every cached token of that issuer
signed with it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from keyswap.errors import (
    ConfigError,
    InvalidClaim,
    InvalidIssuer,
    InvalidToken,
    InvalidTokenType,
    JWKSFetchError,
    KeysUnavailable,
    KeyswapError,
    MalformedToken,
    UnboundToken,
    UnsupportedAlgorithm,
)
from keyswap.verifier.claims import validate_claims
from keyswap.verifier.discovery import Discovery, check_discovery_issuer
from keyswap.verifier.fetch import JWKSFetcher, check_jwks_url
from keyswap.verifier.jwk import VerificationKey
from keyswap.verifier.jws import (
    DEFAULT_MAX_TOKEN_SIZE,
    SUPPORTED_ALGORITHMS,
    ParsedToken,
    parse_ascii,
    verify_signature,
)
from keyswap.verifier.keyset import KeySet
from keyswap.verifier.metrics import Metrics
from keyswap.verifier.tokencache import (
    CHECK_LENGTH,
    DEFAULT_TOKEN_CACHE_SIZE,
    CachedToken,
    TokenCache,
)

__all__ = [
    "DEFAULT_BIND_MAX_BODY",
    "PROFILES",
    "RFC9068_CLAIMS",
    "TXN_TOKEN_CLAIMS",
    "TXN_TOKEN_TYPE",
    "IssuerConfig",
    "Verifier",
]

logger = logging.getLogger("keyswap.verifier")
_new_tuple: Any = tuple.__new__

#: Largest clock-skew allowance accepted in configuration, in seconds.
MAX_LEEWAY = 300.0

#: Token profiles an issuer can require (``IssuerConfig.profile``).
PROFILES = ("rfc9068", "txn-token")
#: The claims a Transaction Token carries (draft-ietf-oauth-transaction-tokens-10 §4.3).
TXN_TOKEN_CLAIMS = ("iat", "aud", "exp", "txn", "sub")
#: ``typ`` of a Transaction Token (draft-ietf-oauth-transaction-tokens-10 §4.2).
TXN_TOKEN_TYPE = "txntoken+jwt"  # noqa: S105 - a media type
#: Default body limit of a bound issuer (``IssuerConfig.bind_max_body``), bytes.
DEFAULT_BIND_MAX_BODY = 1 << 20
#: The claims RFC 9068 §2.2 makes required in a JWT access token.
RFC9068_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")
#: ``typ`` values of an RFC 9068 access token (RFC 7515 §4.1.9: case-insensitive, the
#: ``application/`` prefix may be omitted).
_AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted issuer: where its keys are and what its tokens must look like.

    Attributes:
        issuer: the exact ``iss`` value (no normalisation: trailing slashes and case matter).
        jwks_url: ``http(s)`` URL of the issuer's JWKS; ``None`` with ``discover=True``.
        audience: required ``aud`` (exact string, or an element of an ``aud`` list); ``None`` does not
            check the audience (not recommended when several services share an issuer).
        algorithms: allowed ``alg`` values, a subset of ``RS256``, ``PS256``, ``ES256``, ``EdDSA``.
        leeway: clock-skew allowance in seconds for ``exp``/``nbf``/``iat`` (0 to 300).
        required_claims: claims that must be present (``exp`` always is).
        jwks_cache_ttl: JWKS freshness when the response has no ``Cache-Control: max-age`` (>= 1 s).
        jwks_cooldown: minimum seconds between refetches caused by unknown kids (>= 1 s).
        jwks_max_stale: how long the last good key set keeps serving while the JWKS cannot be fetched.
        discover: find the JWKS URL in the issuer's metadata document (OpenID Connect Discovery, then
            RFC 8414; see :mod:`keyswap.verifier.discovery`) instead of ``jwks_url``. The issuer must
            then be an ``https`` URL (``http`` only on loopback).
        profile: ``"rfc9068"`` requires JWT access tokens as RFC 9068 defines them: header ``typ``
            ``at+jwt`` (``application/at+jwt`` too, any case), the claims of :data:`RFC9068_CLAIMS`
            (added to ``required_claims``; ``client_id`` a non-empty string) and an ``audience``.
            ``"txn-token"`` requires Transaction Tokens (draft-ietf-oauth-transaction-tokens-10):
            header ``typ`` ``txntoken+jwt`` and the claims of :data:`TXN_TOKEN_CLAIMS`.
            ``None`` (the default) ignores ``typ``.
        bind_request: require request-bound tokens (``docs/request-binding.md``): ``htm``, ``htu``
            and ``jti`` must be present (else :class:`~keyswap.errors.UnboundToken`), the lifetime
            ``exp - iat`` at most ``bind_max_lifetime``; such tokens are never put in the token cache.
            The request itself is checked by the ASGI middleware (method, URL, query, body, replay).
        bind_max_body: largest body (bytes) read and digested for a bound request; larger: 413.
        bind_max_lifetime: longest lifetime (seconds) of a bound token (bounds the replay cache).

    Raises:
        ConfigError: any value out of range (checked at construction).
    """

    issuer: str
    jwks_url: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ("RS256",)
    leeway: float = 30
    required_claims: tuple[str, ...] = ("sub",)
    jwks_cache_ttl: float = 300
    jwks_cooldown: float = 10
    jwks_max_stale: float = 3600
    discover: bool = False
    profile: str | None = None
    bind_request: bool = False
    bind_max_body: int = DEFAULT_BIND_MAX_BODY
    bind_max_lifetime: float = 300

    def __post_init__(self) -> None:
        if type(self.bind_request) is not bool:
            raise ConfigError("bind_request must be True or False")
        if type(self.bind_max_body) is not int or not 0 <= self.bind_max_body <= 1 << 30:
            raise ConfigError("bind_max_body must be a whole number of bytes in 0..1 GiB")
        if not (
            isinstance(self.bind_max_lifetime, int | float) and 1 <= self.bind_max_lifetime <= 3600
        ):
            raise ConfigError("bind_max_lifetime must be between 1 and 3600 seconds")
        if type(self.issuer) is not str or not self.issuer:
            raise ConfigError("issuer must be a non-empty string")
        if type(self.discover) is not bool:
            raise ConfigError("discover must be True or False")
        if self.discover:
            if self.jwks_url is not None:
                raise ConfigError("give a jwks_url or discover=True, not both")
            check_discovery_issuer(self.issuer)
        elif self.jwks_url is None:
            raise ConfigError("jwks_url is required (or discover=True to read it from the issuer)")
        else:
            check_jwks_url(self.jwks_url)
        if self.profile is not None and self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)} or None")
        if self.profile == "rfc9068" and self.audience is None:
            raise ConfigError(
                "profile rfc9068 needs an audience (RFC 9068 §4: aud must be checked)"
            )
        if self.audience is not None and (type(self.audience) is not str or not self.audience):
            raise ConfigError("audience must be a non-empty string or None")
        algorithms: object = self.algorithms  # a list or one string are accepted too
        if isinstance(algorithms, str):
            object.__setattr__(self, "algorithms", (algorithms,))
        else:
            object.__setattr__(self, "algorithms", tuple(self.algorithms))
        unknown = [a for a in self.algorithms if a not in SUPPORTED_ALGORITHMS]
        if unknown or not self.algorithms:
            raise ConfigError(
                f"algorithms must be a non-empty subset of {sorted(SUPPORTED_ALGORITHMS)}, "
                f"got {list(self.algorithms)!r}"
            )
        object.__setattr__(self, "required_claims", tuple(self.required_claims))
        if not all(type(c) is str and c for c in self.required_claims):
            raise ConfigError("required_claims must be non-empty strings")
        if not (isinstance(self.leeway, int | float) and 0 <= self.leeway <= MAX_LEEWAY):
            raise ConfigError(f"leeway must be between 0 and {MAX_LEEWAY:g} seconds")
        for name, low in (("jwks_cache_ttl", 1), ("jwks_cooldown", 1), ("jwks_max_stale", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= low):
                raise ConfigError(f"{name} must be a finite number >= {low}")


def _shape_error(token: object, max_size: int) -> MalformedToken:
    if type(token) is not str:
        return MalformedToken("token is not a string")
    if len(token) > max_size:
        return MalformedToken("token too large")
    return MalformedToken("token is not ASCII")


class _Issuer:
    """Per-issuer state prepared once: the config, its key set and the values the hot path reads."""

    __slots__ = (
        "algorithms",
        "at_jwt",
        "audience",
        "bound",
        "config",
        "keyset",
        "leeway",
        "max_lifetime",
        "name",
        "required",
        "txn",
    )

    def __init__(self, config: IssuerConfig, keyset: KeySet) -> None:
        self.config = config
        self.name = config.issuer
        self.keyset = keyset
        self.algorithms = frozenset(config.algorithms)
        self.audience = config.audience
        self.leeway = float(config.leeway)
        self.at_jwt = config.profile == "rfc9068"
        self.required = config.required_claims
        self.txn = config.profile == "txn-token"
        self.bound = config.bind_request
        self.max_lifetime = float(config.bind_max_lifetime)
        if self.at_jwt:
            self.required = tuple(dict.fromkeys(config.required_claims + RFC9068_CLAIMS))
        if self.txn:
            self.required = tuple(dict.fromkeys(config.required_claims + TXN_TOKEN_CLAIMS))


class Verifier:
    """Verify compact JWS tokens from one or more configured issuers.

    ``verify`` (async, for ASGI) and ``verify_sync`` (for WSGI and scripts, never touches asyncio) run
    the same checks (see the module docstring) and share one token cache. Each issuer gets its own
    :class:`~keyswap.verifier.keyset.KeySet`; all share ``fetcher`` (one is created when omitted).

    Call :meth:`start` at application start-up to fetch the key sets in the background, :meth:`close`
    at shutdown (or use the verifier as a context manager).

    Metrics (``metrics``): ``verifications``, ``rejections`` [``reason``], ``token_cache_hits``,
    ``token_cache_misses``, plus the key sets' own counters.

    Raises:
        ConfigError: no issuer, the same issuer twice, or a bad ``max_token_size`` / cache size.
    """

    def __init__(
        self,
        issuers: IssuerConfig | Sequence[IssuerConfig],
        *,
        clock: Callable[[], float] = time.time,
        max_token_size: int = DEFAULT_MAX_TOKEN_SIZE,
        token_cache_size: int = DEFAULT_TOKEN_CACHE_SIZE,
        metrics: Metrics | None = None,
        fetcher: JWKSFetcher | None = None,
    ) -> None:
        configs = [issuers] if isinstance(issuers, IssuerConfig) else list(issuers)
        if not configs:
            raise ConfigError("at least one issuer is required")
        if not all(isinstance(c, IssuerConfig) for c in configs):
            raise ConfigError("issuers must be IssuerConfig instances")
        names = [c.issuer for c in configs]
        if len(set(names)) != len(names):
            raise ConfigError("each issuer may be configured only once")
        if not (isinstance(max_token_size, int) and max_token_size >= 64):
            raise ConfigError("max_token_size must be an integer >= 64")
        if not (isinstance(token_cache_size, int) and token_cache_size >= 0):
            raise ConfigError("token_cache_size must be an integer >= 0")

        self.metrics = metrics if metrics is not None else Metrics()
        self._clock = clock
        self._max_size = max_token_size
        self._cache = TokenCache(token_cache_size)
        self._own_fetcher = fetcher is None
        self._fetcher = fetcher if fetcher is not None else JWKSFetcher()
        self._issuers: dict[str, _Issuer] = {}
        try:
            for config in configs:
                self._issuers[config.issuer] = _Issuer(config, self._make_keyset(config))
        except BaseException:
            self.close()
            raise
        self._algorithms = frozenset().union(*(i.algorithms for i in self._issuers.values()))
        # Bound tokens are never cached: when every issuer binds requests, a lookup can never hit.
        self._use_cache = token_cache_size > 0 and not all(i.bound for i in self._issuers.values())
        self._inc = self.metrics.inc
        # Lock-free counters for the per-token events (see Metrics.counter).
        self._count_hit = self.metrics.counter("token_cache_hits")
        self._count_miss = self.metrics.counter("token_cache_misses")
        self._count_ok = self.metrics.counter("verifications")

    def _make_keyset(self, config: IssuerConfig) -> KeySet:
        def on_keys_removed(kids: set[str]) -> None:
            self._cache.purge(config.issuer, kids)

        discovery = None
        if config.discover:
            discovery = Discovery(config.issuer, fetcher=self._fetcher)
        return KeySet(
            config.jwks_url,
            discovery=discovery,
            fetcher=self._fetcher,
            default_ttl=config.jwks_cache_ttl,
            cooldown=config.jwks_cooldown,
            max_stale=config.jwks_max_stale,
            metrics=self.metrics,
            on_keys_removed=on_keys_removed,
        )

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def issuers(self) -> tuple[IssuerConfig, ...]:
        """The configured issuers, in configuration order."""
        return tuple(i.config for i in self._issuers.values())

    def keyset(self, issuer: str) -> KeySet:
        """The key set of ``issuer`` (exact string).

        Raises:
            KeyError: ``issuer`` is not configured.
        """
        return self._issuers[issuer].keyset

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock the verifier checks ``exp``/``nbf``/``iat`` with."""
        return self._clock

    def issuer_config(self, issuer: object) -> IssuerConfig | None:
        """The configuration of ``issuer`` (an ``iss`` value), ``None`` when it is not configured."""
        found = self._issuers.get(issuer) if type(issuer) is str else None
        return found.config if found is not None else None

    @property
    def binds_requests(self) -> bool:
        """True when some issuer requires request-bound tokens (``bind_request=True``)."""
        return any(i.bound for i in self._issuers.values())

    @property
    def caches_tokens(self) -> bool:
        """False when :meth:`cached` can never hit: the token cache is off (size 0) or every issuer
        binds requests (bound tokens are never cached), so callers may skip the lookup."""
        return self._use_cache

    def start(self) -> None:
        """Start every key set's background fetch (non-blocking)."""
        for issuer in self._issuers.values():
            issuer.keyset.start()

    def close(self) -> None:
        """Stop the key sets, drop the token cache and close the fetcher if this verifier made it."""
        for issuer in self._issuers.values():
            issuer.keyset.close()
        self._cache.clear()
        if self._own_fetcher:
            self._fetcher.close()

    def __enter__(self) -> Verifier:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Verifier:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- verification -------------------------------------------------------------------------------

    def cached(self, token: str) -> dict[str, Any] | None:
        """A copy of the claims of ``token`` if it is in the token cache and valid now, else ``None``.

        The cheap first step of a verification, for callers on a hot path (the ASGI middleware): no
        parsing, no I/O, no coroutine, never raises. A hit counts as a verification, as in
        :meth:`verify`; ``None`` says nothing about the token (unseen, expired, evicted, or not a
        token at all): call :meth:`verify` or :meth:`verify_sync` then, for the claims or the reason.
        """
        if type(token) is not str or len(token) > self._max_size:
            return None
        entry = self._cache.get(token, self._clock())
        if entry is None:
            return None
        self._count_hit()
        self._count_ok()
        if entry.nested:
            return _copy_claims(entry.claims, entry.nested)
        return dict(entry.claims)

    def verify_sync(self, token: str) -> dict[str, Any]:
        """Verify ``token`` and return a copy of its claims (blocking; may fetch the JWKS).

        Raises:
            InvalidToken: a subclass naming the cause (401).
            KeysUnavailable: no usable key set could be obtained (503).
        """
        try:
            if type(token) is not str or len(token) > self._max_size or not token.isascii():
                raise _shape_error(token, self._max_size)
            if self._use_cache:
                claims = self.cached(token)
                if claims is not None:
                    return claims
            parsed, issuer, window = self._pre_key(token, self._clock())
            key = issuer.keyset.get_key_sync(parsed.kid)
            return self._finish(token, parsed, issuer, window, key)
        except (InvalidToken, KeysUnavailable) as err:
            self._reject(err)
            raise
        except JWKSFetchError as err:
            unavailable = KeysUnavailable("signing keys could not be fetched")
            self._reject(unavailable)
            raise unavailable from err

    async def verify(self, token: str) -> dict[str, Any]:
        """Verify ``token`` and return a copy of its claims (the key set's I/O never blocks the loop).

        Raises:
            InvalidToken: a subclass naming the cause (401).
            KeysUnavailable: no usable key set could be obtained (503).
        """
        try:
            if type(token) is not str or len(token) > self._max_size or not token.isascii():
                raise _shape_error(token, self._max_size)
            if self._use_cache:
                claims = self.cached(token)
                if claims is not None:
                    return claims
            parsed, issuer, window = self._pre_key(token, self._clock())
            # A fresh key set that has the kid answers without a coroutine (the usual case).
            key = issuer.keyset.fresh_key(parsed.kid)
            if key is None:
                key = await issuer.keyset.get_key(parsed.kid)
            return self._finish(token, parsed, issuer, window, key)
        except (InvalidToken, KeysUnavailable) as err:
            self._reject(err)
            raise
        except JWKSFetchError as err:
            unavailable = KeysUnavailable("signing keys could not be fetched")
            self._reject(unavailable)
            raise unavailable from err

    def _pre_key(self, token: str, now: float) -> tuple[ParsedToken, _Issuer, tuple[float, float]]:
        self._count_miss()
        parsed = parse_ascii(token.encode("ascii"), self._algorithms)
        iss = parsed.claims.get("iss")
        issuer = self._issuers.get(iss) if type(iss) is str else None
        if issuer is None:
            raise InvalidIssuer("issuer not accepted")
        if parsed.alg not in issuer.algorithms:
            raise UnsupportedAlgorithm("algorithm not allowed for this issuer")
        if issuer.at_jwt:
            _check_at_jwt(parsed)
        elif issuer.txn:
            _check_txn_token(parsed)
        window = validate_claims(
            parsed.claims,
            issuer=issuer.name,
            audience=issuer.audience,
            leeway=issuer.leeway,
            required=issuer.required,
            now=now,
        )
        if issuer.bound:  # after validate_claims: exp and iat are then in-range numbers if present
            _check_bound(parsed.claims, issuer.max_lifetime)
        return parsed, issuer, window

    def _finish(
        self,
        token: str,
        parsed: ParsedToken,
        issuer: _Issuer,
        window: tuple[float, float],
        key: VerificationKey,
    ) -> dict[str, Any]:
        verify_signature(key, parsed.alg, parsed.signing_input, parsed.signature)
        claims = parsed.claims
        self._count_ok()
        if issuer.bound:
            # A bound token is for one request: never cached, so the freshly parsed claims are
            # nobody else's and go to the caller as they are (no copy).
            return claims
        nested = _nested_names(claims) if parsed.nested else ()
        # tuple.__new__ directly: the named tuple's own __new__ is a Python-level call
        entry = _new_tuple(
            CachedToken,
            (claims, *window, issuer.name, parsed.kid, nested, token[-CHECK_LENGTH:]),
        )
        self._cache.put(token, entry)
        # The key set installs a new set *before* calling on_keys_removed, so if the kid left
        # while this token was being verified, either the purge saw the entry or this check does.
        if not issuer.keyset.has_kid(parsed.kid):
            self._cache.discard(token)
        return _copy_claims(claims, nested) if nested else dict(claims)

    def _reject(self, err: KeyswapError) -> None:
        self._inc("rejections", reason=err.label)
        logger.debug("token rejected: %s (%r)", err.label, err.reason)


def _check_at_jwt(parsed: ParsedToken) -> None:
    """The RFC 9068 checks beyond the required claims: the ``typ`` header and ``client_id``."""
    typ = parsed.header.get("typ")
    if type(typ) is not str or typ.lower() not in _AT_JWT_TYPES:
        if typ is None:
            raise InvalidTokenType("typ header missing, expected at+jwt")
        raise InvalidTokenType("typ header is not at+jwt")
    client_id = parsed.claims.get("client_id")
    if client_id is not None and (type(client_id) is not str or not client_id):
        raise InvalidClaim("claim 'client_id' must be a non-empty string")


def _check_txn_token(parsed: ParsedToken) -> None:
    """The Transaction Token ``typ`` (draft-ietf-oauth-transaction-tokens-10 §4.2)."""
    typ = parsed.header.get("typ")
    if type(typ) is not str or typ.lower() not in (TXN_TOKEN_TYPE, "application/" + TXN_TOKEN_TYPE):
        raise InvalidTokenType("typ header is not txntoken+jwt")
    if type(parsed.claims.get("txn")) is not str:
        raise InvalidClaim("claim 'txn' must be a string")


def _check_bound(claims: dict[str, Any], max_lifetime: float) -> None:
    """A bound issuer's token must carry the binding claims and live at most ``max_lifetime``.

    Runs after :func:`~keyswap.verifier.claims.validate_claims`, which has made sure ``exp`` (and
    ``iat`` when present) are finite JSON numbers within float range (not ``bool``).
    """
    get = claims.get
    if type(get("htm")) is not str or type(get("htu")) is not str or type(get("jti")) is not str:
        raise UnboundToken("the token is not bound to a request")
    iat = get("iat")
    if iat is None or not 0 < claims["exp"] - iat <= max_lifetime:
        raise InvalidClaim("a bound token needs iat and a short lifetime (exp - iat)")


def _json_copy(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists and immutable scalars), faster than copy.deepcopy."""
    if type(value) is dict:
        return {k: _json_copy(v) for k, v in value.items()}
    if type(value) is list:
        return [_json_copy(v) for v in value]
    return value


def _nested_names(claims: dict[str, Any]) -> tuple[str, ...]:
    return tuple([k for k, v in claims.items() if type(v) is dict or type(v) is list])


def _copy_claims(claims: dict[str, Any], nested: tuple[str, ...]) -> dict[str, Any]:
    """The caller's own copy of cached claims: nested objects and arrays are copied too."""
    out = dict(claims)
    for name in nested:
        out[name] = _json_copy(out[name])
    return out
