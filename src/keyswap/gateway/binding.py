"""Which requests get a request-bound token, and the claims that bind it (``--bind-request``).

Configuration (repeatable flags, no file): ``--bind-request`` binds every request;
``--bind-route METHOD:/prefix[:unbound-body]`` binds the requests whose method matches (``*`` for any,
or a comma list such as ``GET,HEAD``) and whose raw path starts with ``/prefix`` (segment-wise:
``/api`` matches ``/api`` and ``/api/x``, not ``/apix``). The most specific (longest prefix) matching
rule decides; with ``--bind-request`` there is an implicit ``*:/`` rule below all others.
``:unbound-body`` marks a route whose bodies above ``--bind-max-body`` are forwarded unhashed (the
token says ``htd: "unbound"``) instead of being refused with 413.

The claims themselves are computed with :mod:`keyswap.verifier.binding` so gateway and verifier can
never disagree on them.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from keyswap.errors import ConfigError
from keyswap.verifier.binding import (
    UNBOUND_BODY,
    canonical_htu,
    content_digest,
    query_hash,
)

__all__ = [
    "BOUND_DEFAULT_ALG",
    "DEFAULT_BIND_MAX_BODY",
    "DEFAULT_BIND_TTL",
    "TOKEN_FORMATS",
    "BindPolicy",
    "BindRule",
    "BodyTooLarge",
    "ClientLeft",
    "ReadBody",
    "binding_claims",
    "describe",
    "parse_bind_route",
    "read_body",
]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

#: Largest body hashed before it is forwarded (bytes).
DEFAULT_BIND_MAX_BODY = 1 << 20
#: Lifetime of per-request tokens (seconds).
DEFAULT_BIND_TTL = 30
#: ``--alg`` default when tokens are signed per request (chosen from bench/binding_bench.py numbers:
#: see BENCHMARKS.md "Request binding").
BOUND_DEFAULT_ALG = "ES256"
#: ``--token-format`` values.
TOKEN_FORMATS = ("jwt", "txn-token")
_UNBOUND_FLAG = "unbound-body"


@dataclass(frozen=True, slots=True)
class BindRule:
    """One bound route: methods (``None``: any), a raw path prefix, and the large-body opt-out."""

    methods: frozenset[str] | None
    prefix: str
    unbound_body: bool = False

    def matches(self, method: str, path: str) -> bool:
        """True when ``method`` and ``path`` fall under this rule."""
        if self.methods is not None and method not in self.methods:
            return False
        prefix = self.prefix
        if prefix == "/":
            return True
        return path == prefix or path.startswith(prefix + "/")


def parse_bind_route(text: str) -> BindRule:
    """Parse ``METHOD:/prefix[:unbound-body]`` (``*`` or ``GET,POST`` as METHOD).

    Raises:
        ConfigError: not of that form.
    """
    bad = ConfigError(
        f"bind route must be METHOD:/prefix or METHOD:/prefix:{_UNBOUND_FLAG}, got {text!r}"
    )
    method, sep, rest = text.strip().partition(":")
    if not sep or not rest.startswith("/"):
        raise bad
    unbound = False
    if rest.endswith(":" + _UNBOUND_FLAG):
        rest, unbound = rest[: -len(_UNBOUND_FLAG) - 1], True
    if ":" in rest or any(c.isspace() or not c.isprintable() for c in rest) or not rest.isascii():
        raise bad
    prefix = rest.rstrip("/") or "/"
    methods: frozenset[str] | None
    if method.strip() == "*":
        methods = None
    else:
        names = [m.strip().upper() for m in method.split(",") if m.strip()]
        if not names or not all(n.isalpha() for n in names):
            raise bad
        methods = frozenset(names)
    return BindRule(methods, prefix, unbound)


@dataclass(frozen=True, slots=True)
class BindPolicy:
    """Which requests are bound, and how (built once from the flags).

    Attributes:
        rules: the bound routes (``--bind-route``); the most specific match decides.
        bind_all: ``--bind-request``: every request is bound (an implicit ``*:/`` rule).
        max_body: largest body hashed before forwarding, bytes (``--bind-max-body``).
        ttl: lifetime of per-request tokens, seconds (``--bind-ttl``).
    """

    rules: tuple[BindRule, ...] = ()
    bind_all: bool = False
    max_body: int = DEFAULT_BIND_MAX_BODY
    ttl: int = DEFAULT_BIND_TTL
    _ordered: tuple[BindRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_body, int) or not 0 <= self.max_body <= 1 << 30:
            raise ConfigError(f"bind max body must be 0..1 GiB bytes, got {self.max_body!r}")
        if not isinstance(self.ttl, int) or not 1 <= self.ttl <= 3600:
            raise ConfigError(f"bound token TTL must be 1-3600 whole seconds, got {self.ttl!r}")
        ordered = sorted(self.rules, key=lambda r: (len(r.prefix), r.methods is not None))
        if self.bind_all:
            ordered.insert(0, BindRule(None, "/"))
        object.__setattr__(self, "_ordered", tuple(reversed(ordered)))

    @property
    def rules_in_order(self) -> tuple[BindRule, ...]:
        """Every rule, the most specific first (the implicit ``*:/`` of ``bind_all`` last)."""
        return self._ordered

    @property
    def enabled(self) -> bool:
        """True when some request can be bound."""
        return bool(self._ordered)

    def match(self, method: str, raw_path: bytes) -> BindRule | None:
        """The rule binding this request, or ``None`` (the request gets the usual cached token)."""
        path = raw_path.decode("latin-1")
        for rule in self._ordered:
            if rule.matches(method, path):
                return rule
        return None


class BodyTooLarge(Exception):
    """The body is over the limit and the route does not allow it unbound (answered 413)."""


class ClientLeft(Exception):
    """The client disconnected while its body was being read."""


@dataclass(slots=True)
class ReadBody:
    """What :func:`read_body` read: the bytes, and whether that is the whole body."""

    data: bytes
    complete: bool


async def read_body(
    receive: Receive, *, declared: int | None, limit: int, unbound_ok: bool
) -> ReadBody:
    """Read a request body of at most ``limit`` bytes before it is forwarded.

    A body declared (``Content-Length``) or found to be larger is refused (:class:`BodyTooLarge`)
    unless ``unbound_ok``: then what was read so far comes back with ``complete=False`` and the rest
    is streamed after it.

    Raises:
        BodyTooLarge: over ``limit`` on a route without the opt-out.
        ClientLeft: the client disconnected first.
    """
    if declared is not None and declared > limit:
        if unbound_ok:
            return ReadBody(b"", False)
        raise BodyTooLarge
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeft
        chunk: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if chunk:
            parts.append(chunk)
            size += len(chunk)
        if size > limit:
            if not unbound_ok:
                raise BodyTooLarge
            return ReadBody(b"".join(parts), not more)
        if not more:
            return ReadBody(b"".join(parts), True)


@functools.lru_cache(maxsize=64)
def _origin(scheme: str, authority: str) -> str:
    """``canonical_htu`` without its path (the gateway's origin: the same for every request)."""
    return canonical_htu(scheme, authority, "/")[:-1]


def binding_claims(
    *,
    method: str,
    scheme: str,
    authority: str,
    path: str,
    query: bytes,
    body: ReadBody | None,
    max_body: int,
) -> dict[str, Any]:
    """``htm``, ``htu``, and when they apply ``htq`` and ``htd`` for one request.

    ``body`` is ``None`` for a request without a body; a body over ``max_body`` (or not read whole) is
    marked :data:`~keyswap.verifier.binding.UNBOUND_BODY`.
    """
    claims: dict[str, Any] = {
        "htm": method,
        "htu": _origin(scheme, authority) + (path or "/"),
    }
    if query:
        claims["htq"] = query_hash(query)
    if body is not None:
        if not body.complete or len(body.data) > max_body:
            claims["htd"] = UNBOUND_BODY
        elif body.data:
            claims["htd"] = content_digest(body.data)
    return claims


def describe(rules: Iterable[BindRule]) -> list[str]:
    """Human-readable rules (start-up log)."""
    out = []
    for rule in rules:
        methods = "*" if rule.methods is None else ",".join(sorted(rule.methods))
        out.append(f"{methods}:{rule.prefix}" + (":unbound-body" if rule.unbound_body else ""))
    return out
