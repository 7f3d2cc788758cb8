"""Request binding: the claims that tie a token to one HTTP request, computed the same way on both sides.

A request-bound token (``keyswap gateway --bind-request``, see ``docs/request-binding.md``) carries:

==========  ===========================================================================================
claim       value
==========  ===========================================================================================
``htm``     the request method, exactly as sent (RFC 9449 §4.2)
``htu``     the URL the origin is meant to see, without query and fragment (RFC 9449 §4.2/4.3):
            :func:`canonical_htu` -- scheme and host lower-case, default port left out, the raw path
            byte for byte (no percent-decoding, no dot-segment removal: the gateway refuses those)
``htq``     only when the request has a query string: ``base64url(SHA-256(raw query bytes))``
            (:func:`query_hash`), so the query is bound without being copied into the token
``htd``     only when the request has a body: its RFC 9530 ``Content-Digest`` value with ``sha-256``
            (``sha-256=:<base64>:``, :func:`content_digest`), or the literal :data:`UNBOUND_BODY`
            when the body was forwarded without being hashed (a route marked ``unbound-body``; like
            SigV4's ``UNSIGNED-PAYLOAD``)
``jti``     unique per token; the verifier accepts it once (:mod:`keyswap.verifier.replay`)
==========  ===========================================================================================

This module is pure (no I/O, no clock) and shared: the gateway imports it to mint, the verifier to
check; the verifier never imports the gateway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from keyswap.errors import ConfigError, RequestMismatch, UnboundToken

__all__ = [
    "BINDING_CLAIMS",
    "DIGEST_ALGORITHM",
    "UNBOUND_BODY",
    "PublicBase",
    "canonical_htu",
    "check_request",
    "content_digest",
    "is_bound",
    "query_hash",
]

#: The claims every bound token has (``htq`` / ``htd`` only when there is a query / a body).
BINDING_CLAIMS = ("htm", "htu", "jti")
#: The RFC 9530 algorithm keyswap uses (the only one it sends and accepts).
DIGEST_ALGORITHM = "sha-256"
#: ``htd`` of a body forwarded without a digest (the route opted out; the token says so).
UNBOUND_BODY = "unbound"

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Most distinct (scheme, Host) pairs :meth:`PublicBase.htu` remembers (then it starts afresh).
_MAX_BASES = 64


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def canonical_htu(scheme: str, authority: str, path: str) -> str:
    """``scheme://authority/path`` normalised as RFC 9449 §4.3 asks (RFC 3986 §6.2.2-6.2.3).

    Scheme and host are lower-cased and the scheme's default port is left out; the path is kept
    byte for byte (an empty path becomes ``/``). Query and fragment are never part of ``htu``.
    """
    scheme = scheme.lower()
    host, port = authority.lower(), ""
    if host.startswith("["):  # IPv6 literal
        end = host.find("]")
        if end != -1 and host[end + 1 : end + 2] == ":":
            host, port = host[: end + 1], host[end + 2 :]
    elif ":" in host:
        host, _, port = host.rpartition(":")
    if port and port.isdigit() and int(port) == _DEFAULT_PORTS.get(scheme):
        port = ""
    elif port:
        port = str(int(port)) if port.isdigit() else port
    return f"{scheme}://{host}{':' + port if port else ''}{path or '/'}"


def query_hash(query: bytes) -> str:
    """``htq``: base64url (no padding) of SHA-256 over the raw query string (without the ``?``)."""
    return _b64url(hashlib.sha256(query).digest())


def content_digest(body: bytes) -> str:
    """The RFC 9530 ``Content-Digest`` value of ``body`` with ``sha-256``: ``sha-256=:<base64>:``."""
    return f"{DIGEST_ALGORITHM}=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def is_bound(claims: Mapping[str, Any]) -> bool:
    """True when ``claims`` carry the binding claims (``htm``, ``htu``, ``jti``)."""
    return all(name in claims for name in BINDING_CLAIMS)


class PublicBase:
    """How the origin computes the ``htu`` it expects: from a stated public base URL, or from the request.

    Args:
        url: the public base URL clients' requests reach the origin by *as the gateway sees it*
            (normally the gateway's ``--upstream``), e.g. ``https://api.internal:8443`` or with a path
            prefix a proxy in between strips (``https://edge.example/api``). ``None``: the request's
            own scheme and ``Host`` header (right when nothing between gateway and origin rewrites
            them).

    Raises:
        ConfigError: ``url`` is not an absolute ``http(s)`` URL without query, fragment or credentials.
    """

    __slots__ = ("_authority", "_base", "_bases", "_prefix", "_scheme", "url")

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self._scheme = ""
        self._authority = ""
        self._prefix = ""
        self._base = ""
        # Without a stated URL: (scheme, Host) -> the canonical ``scheme://host[:port]`` (the path
        # is appended verbatim), so canonical_htu runs once per distinct Host, not per request.
        self._bases: dict[tuple[str, str], str] = {}
        if url is None:
            return
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"public URL is not a valid URL: {url!r}") from None
        if (
            parts.scheme.lower() not in _DEFAULT_PORTS
            or not parts.hostname
            or parts.query
            or parts.fragment
            or parts.username is not None
            or not url.isascii()
        ):
            raise ConfigError(
                "public URL must be an absolute http(s) URL without query, fragment or "
                f"credentials: {url!r}"
            )
        self._scheme = parts.scheme.lower()
        self._authority = parts.netloc.lower()
        self._prefix = parts.path.rstrip("/")
        # canonical_htu of (scheme, authority, prefix + path) is this base + path: computed once.
        base = canonical_htu(self._scheme, self._authority, self._prefix or "/")
        self._base = base if self._prefix else base[:-1]

    def htu(self, scope: Mapping[str, Any]) -> str:
        """The ``htu`` an ASGI ``http`` request must have been bound to."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = raw_path.decode("latin-1") or "/"
        if self.url is not None:
            return self._base + path
        authority = ""
        for name, value in scope.get("headers", ()):
            if name == b"host":
                authority = value.decode("latin-1")
                break
        if not authority:
            server = scope.get("server")
            if server:
                authority = f"{server[0]}:{server[1]}" if server[1] is not None else server[0]
        scheme: str = scope.get("scheme", "http")
        base = self._bases.get((scheme, authority))
        if base is None:
            # canonical_htu(scheme, authority, path) == canonical_htu(scheme, authority, "/")[:-1]
            # + path: the path is kept byte for byte at the end.
            base = canonical_htu(scheme, authority, "/")[:-1]
            if len(self._bases) >= _MAX_BASES:  # Host is the client's to choose: bounded
                self._bases.clear()
            self._bases[(scheme, authority)] = base
        return base + path


def check_request(claims: Mapping[str, Any], *, method: str, htu: str, query: bytes) -> None:
    """Check the method, URL and query claims of a bound token against the request (not the body).

    Raises:
        UnboundToken: a binding claim is missing or not a string.
        RequestMismatch: the request is not the one the token was minted for; ``detail`` says which
            part differs (for logs only).
    """
    htm, token_htu = claims.get("htm"), claims.get("htu")
    if type(htm) is not str or type(token_htu) is not str or type(claims.get("jti")) is not str:
        raise UnboundToken("the token is not bound to a request")
    if htm != method:
        raise RequestMismatch(detail=f"method {method!r} but the token is for {htm!r}")
    if token_htu != htu:
        raise RequestMismatch(detail=f"url {htu!r} but the token is for {token_htu!r}")
    htq = claims.get("htq")
    if query:
        if type(htq) is not str or not hmac.compare_digest(htq, query_hash(query)):
            raise RequestMismatch(detail="the query string differs from the token's htq")
    elif htq is not None:
        raise RequestMismatch(detail="the token binds a query string the request does not have")


def check_body(claims: Mapping[str, Any], body: bytes) -> None:
    """Check a (whole) request body against the token's ``htd``.

    Raises:
        RequestMismatch: the digest differs, or a body arrived that the token does not bind, or
            ``htd`` names a body but none arrived.
    """
    htd = claims.get("htd")
    if htd == UNBOUND_BODY:
        return
    if not body:
        if htd is not None:
            raise RequestMismatch(detail="the token binds a body but the request has none")
        return
    if type(htd) is not str:
        raise RequestMismatch(detail="the request has a body the token does not bind")
    if not hmac.compare_digest(htd, content_digest(body)):
        raise RequestMismatch(detail="the body digest differs from the token's htd")
