"""The keyswap error tree.

Every error keyswap raises on a request path derives from :class:`KeyswapError` and carries a wire
``code`` (what a client sees, RFC 6750 style where it applies) and an HTTP ``status``. Middleware turns
them into responses; nothing reaches the server as a 500.

::

    KeyswapError                          code                 status
    ├── ConfigError                       config_error         500 (raised at start-up, never per request)
    ├── InvalidInput                      invalid_input        400  management input (CLI, admin): name, JSON, duration
    │   ├── NotFound                      not_found            404  unknown consumer / key id
    │   ├── AlreadyExists                 already_exists       409  duplicate consumer name
    │   └── Conflict                      conflict             409  refused in the current state (e.g. a rotation too soon)
    ├── AuthError
    │   ├── MissingToken                  (no error attribute) 401
    │   ├── InvalidToken                  invalid_token        401
    │   │   ├── MalformedToken            invalid_token        401  structure, base64url, JSON, size
    │   │   ├── UnsupportedAlgorithm      invalid_token        401  alg not allowed / key does not fit alg
    │   │   ├── UnknownKey                invalid_token        401  no usable key has that kid
    │   │   ├── BadSignature              invalid_token        401
    │   │   ├── ExpiredToken              invalid_token        401
    │   │   ├── TokenNotYetValid          invalid_token        401  nbf / iat in the future
    │   │   ├── InvalidIssuer             invalid_token        401
    │   │   ├── InvalidAudience           invalid_token        401
    │   │   ├── InvalidClaim              invalid_token        401  missing or ill-typed claim
    │   │   ├── UnboundToken              invalid_token        401  bound issuer, token not request-bound
    │   │   ├── RequestMismatch           invalid_token        401  method/URL/query/body differ (detail: logs)
    │   │   └── ReplayedToken             invalid_token        401  a bound token's jti seen before
    │   ├── InsufficientScope             insufficient_scope   403
    │   └── InvalidApiKey                 invalid_api_key      401  (gateway: every cause looks the same)
    ├── KeysUnavailable                   temporarily_unavailable 503 (+ Retry-After)
    ├── StoreUnavailable                  temporarily_unavailable 503 (+ Retry-After)  key store unreachable
    ├── ReplayCacheUnavailable            temporarily_unavailable 503 (+ Retry-After)  replay cache down / full
    ├── PayloadTooLarge                   payload_too_large    413  bound request body over the limit
    ├── JWKSFetchError                    jwks_fetch_failed    503  (internal: a fetch failed)
    ├── RateLimited                       rate_limited         429 (+ Retry-After)
    │   └── QuotaExceeded                 quota_exceeded       429  quota or credits spent (gateway)
    └── UpstreamError                     bad_gateway          502
        └── UpstreamTimeout               gateway_timeout      504

``reason`` is a short, developer-facing description. It never contains the token or any secret; the
middleware sanitises it again (RFC 6750 §3 character set) before it reaches ``error_description``.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "AuthError",
    "BadSignature",
    "ConfigError",
    "Conflict",
    "ExpiredToken",
    "InsufficientScope",
    "InvalidApiKey",
    "InvalidAudience",
    "InvalidClaim",
    "InvalidInput",
    "InvalidIssuer",
    "InvalidToken",
    "InvalidTokenType",
    "JWKSFetchError",
    "KeysUnavailable",
    "KeyswapError",
    "MalformedToken",
    "MissingToken",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "ReplayCacheUnavailable",
    "ReplayedToken",
    "RequestMismatch",
    "StoreUnavailable",
    "TokenNotYetValid",
    "UnboundToken",
    "UnknownKey",
    "UnsupportedAlgorithm",
    "UpstreamError",
    "UpstreamTimeout",
]


class KeyswapError(Exception):
    """Root of every keyswap error. ``code`` is the wire code, ``status`` the HTTP status."""

    code: str = "keyswap_error"
    status: int = 500
    #: Metric / log label for the cause; subclasses set a stable snake_case name.
    label: str = "error"

    def __init__(self, reason: str = "") -> None:
        self.reason = reason or self.__class__.__doc__ or self.code
        super().__init__(self.reason)


class ConfigError(KeyswapError):
    """The configuration is invalid. Raised at start-up with a clear message."""

    code = "config_error"
    label = "config"


class InvalidInput(KeyswapError, ValueError):
    """Management input was rejected (consumer name, metadata, duration, ...)."""

    code = "invalid_input"
    status = 400
    label = "invalid_input"


class NotFound(InvalidInput):
    """The named consumer or key does not exist."""

    code = "not_found"
    status = 404
    label = "not_found"


class AlreadyExists(InvalidInput):
    """Something with that name already exists."""

    code = "already_exists"
    status = 409
    label = "already_exists"


class Conflict(InvalidInput):
    """The change is refused in the current state (e.g. a signing-key rotation too soon after the last)."""

    code = "conflict"
    status = 409
    label = "conflict"


class AuthError(KeyswapError):
    """The request is not authenticated or not authorised."""

    code = "invalid_request"
    status = 401
    label = "auth"


class MissingToken(AuthError):
    """No bearer token was provided."""

    code = ""
    label = "missing_token"


class InvalidToken(AuthError):
    """The token is invalid."""

    code = "invalid_token"
    label = "invalid_token"


class MalformedToken(InvalidToken):
    """The token is malformed."""

    label = "malformed"


class UnsupportedAlgorithm(InvalidToken):
    """The token's algorithm is not allowed, or does not fit the key."""

    label = "algorithm"


class UnknownKey(InvalidToken):
    """No usable key matches the token's kid."""

    label = "unknown_kid"


class BadSignature(InvalidToken):
    """The signature does not verify."""

    label = "signature"


class ExpiredToken(InvalidToken):
    """The token has expired."""

    label = "expired"


class TokenNotYetValid(InvalidToken):
    """The token is not valid yet."""

    label = "not_yet_valid"


class InvalidIssuer(InvalidToken):
    """The token's issuer is not accepted."""

    label = "issuer"


class InvalidAudience(InvalidToken):
    """The token's audience is not accepted."""

    label = "audience"


class InvalidTokenType(InvalidToken):
    """The token's ``typ`` header is not the one the issuer's profile requires (RFC 9068 ``at+jwt``)."""

    label = "token_type"


class InvalidClaim(InvalidToken):
    """A claim is missing or has the wrong type."""

    label = "claim"


class UnboundToken(InvalidToken):
    """The issuer requires request-bound tokens and this one is not bound (no ``htm``/``htu``/``jti``)."""

    label = "unbound"


class RequestMismatch(InvalidToken):
    """The request is not the one the token was bound to (method, URL, query or body differ).

    ``reason`` is the generic text sent to the client; ``detail`` names the differing part and goes
    to the logs only.
    """

    label = "request_mismatch"

    def __init__(self, reason: str = "", *, detail: str = "") -> None:
        super().__init__(reason or "the token is not bound to this request")
        self.detail = detail


class ReplayedToken(InvalidToken):
    """A request-bound token was presented a second time."""

    label = "replayed"


class InsufficientScope(AuthError):
    """The token lacks a required scope."""

    code = "insufficient_scope"
    status = 403
    label = "insufficient_scope"

    def __init__(self, reason: str = "", *, scope: str = "") -> None:
        super().__init__(reason)
        self.scope = scope


class InvalidApiKey(AuthError):
    """Invalid API key."""

    code = "invalid_api_key"
    label = "invalid_api_key"


class KeysUnavailable(KeyswapError):
    """No usable signing keys are available right now."""

    code = "temporarily_unavailable"
    status = 503
    label = "keys_unavailable"

    def __init__(self, reason: str = "", *, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = max(1, int(retry_after))


class ReplayCacheUnavailable(KeyswapError):
    """The shared replay cache cannot be reached (or the local one is full): bound tokens are refused."""

    code = "temporarily_unavailable"
    status = 503
    label = "replay_cache_unavailable"

    def __init__(self, reason: str = "", *, retry_after: int = 2) -> None:
        super().__init__(reason)
        self.retry_after = max(1, int(retry_after))


class PayloadTooLarge(KeyswapError):
    """The request body is larger than the bound-request limit."""

    code = "payload_too_large"
    status = 413
    label = "payload_too_large"


class StoreUnavailable(KeyswapError):
    """The key store cannot be reached right now; the key is not one this node already knows."""

    code = "temporarily_unavailable"
    status = 503
    label = "store_unavailable"

    def __init__(self, reason: str = "", *, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = max(1, int(retry_after))


class JWKSFetchError(KeyswapError):
    """A JWKS fetch failed (network, status, size, content).

    ``kind`` is a stable snake_case cause for metrics and logs (``timeout``, ``status``, ``too_large``,
    ``not_json``, ``redirect``, ``network``, ``not_jwks``, ...).
    """

    code = "jwks_fetch_failed"
    status = 503
    label = "jwks_fetch"

    def __init__(self, reason: str = "", *, kind: str = "not_jwks") -> None:
        super().__init__(reason)
        self.kind = kind


class RateLimited(KeyswapError):
    """Too many requests."""

    code = "rate_limited"
    status = 429
    label = "rate_limited"

    def __init__(self, reason: str = "", *, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.retry_after = max(1, int(retry_after))


class QuotaExceeded(RateLimited):
    """A consumer's request quota or credits are spent (``Retry-After``: until the refill)."""

    code = "quota_exceeded"
    label = "quota_exceeded"


class UpstreamError(KeyswapError):
    """The upstream could not be reached."""

    code = "bad_gateway"
    status = 502
    label = "upstream"


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""

    code = "gateway_timeout"
    status = 504
    label = "upstream_timeout"
