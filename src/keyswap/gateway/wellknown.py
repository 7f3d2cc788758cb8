"""The gateway's issuer documents: JWKS and OpenID discovery, served without an API key.

Paths (on the gateway, whatever its public URL)::

    /__keyswap/issuer/.well-known/jwks.json               application/jwk-set+json
    /__keyswap/issuer/.well-known/openid-configuration    application/json

Both answer ``GET`` and ``HEAD`` with ``Cache-Control: public, max-age=300`` (:data:`DEFAULT_MAX_AGE`):
a verifier caching the JWKS for that long still sees the next signing key before it is used, because the
keyring publishes the next key one rotation ahead. Bodies are rendered once and swapped atomically on
:meth:`WellKnown.refresh` (after a rotation), so serving them costs no work per request.

The JWKS never carries private parameters: whatever the keyring hands over is filtered to the public
members of each key type (:func:`public_jwk`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from keyswap.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_AGE",
    "ISSUER_PATH",
    "JWKS_PATH",
    "OPENID_CONFIGURATION_PATH",
    "RESERVED_PREFIX",
    "Document",
    "WellKnown",
    "issuer_for",
    "openid_configuration",
    "public_jwk",
]

#: Everything under this path prefix belongs to the gateway and is never proxied.
RESERVED_PREFIX = "/__keyswap/"
ISSUER_PATH = "/__keyswap/issuer"
JWKS_PATH = ISSUER_PATH + "/.well-known/jwks.json"
OPENID_CONFIGURATION_PATH = ISSUER_PATH + "/.well-known/openid-configuration"
#: Seconds a JWKS / discovery document may be cached.
DEFAULT_MAX_AGE = 300

_PUBLIC_MEMBERS = {
    "RSA": ("n", "e"),
    "EC": ("crv", "x", "y"),
    "OKP": ("crv", "x"),
}
_COMMON_MEMBERS = ("kid", "use", "alg", "key_ops")


def issuer_for(public_url: str) -> str:
    """The issuer (``iss``) for a gateway reachable at ``public_url``.

    Raises:
        ConfigError: ``public_url`` is not an absolute ``http``/``https`` URL without query or fragment.
    """
    url = public_url.rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest or rest.startswith("/"):
        raise ConfigError(f"public URL must be an absolute http(s) URL, got {public_url!r}")
    if "?" in rest or "#" in rest:
        raise ConfigError(f"public URL must not have a query or fragment, got {public_url!r}")
    return url + ISSUER_PATH


def public_jwk(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The public members of ``jwk`` (drops ``d``, ``p``, ``q``, ``k`` and anything unknown).

    Raises:
        ConfigError: ``jwk`` has no ``kid`` or an unsupported ``kty`` (``oct`` is never published).
    """
    kty = jwk.get("kty")
    members = _PUBLIC_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None or not isinstance(jwk.get("kid"), str):
        raise ConfigError(f"cannot publish a JWK with kty {kty!r}")
    out: dict[str, Any] = {"kty": kty}
    for name in (*_COMMON_MEMBERS, *members):
        if name in jwk:
            out[name] = jwk[name]
    out.setdefault("use", "sig")
    return out


def openid_configuration(issuer: str, algorithms: Iterable[str]) -> dict[str, Any]:
    """The discovery document for ``issuer``: where the JWKS is and which algorithms sign tokens."""
    return {
        "issuer": issuer,
        "jwks_uri": issuer + "/.well-known/jwks.json",
        "id_token_signing_alg_values_supported": list(algorithms),
        "subject_types_supported": ["public"],
        "claims_supported": [
            "iss",
            "sub",
            "aud",
            "iat",
            "exp",
            "jti",
            "key_id",
            "metadata",
            "scope",
        ],
    }


@dataclass(frozen=True, slots=True)
class Document:
    """A rendered response: status, ASGI headers, body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def _render(document: Any, content_type: bytes, max_age: int) -> Document:
    body = json.dumps(document, separators=(",", ":")).encode()
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", f"public, max-age={max_age}".encode()),
        (b"access-control-allow-origin", b"*"),
    ]
    return Document(200, headers, body)


_NOT_FOUND = Document(
    404,
    [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"9")],
    b"Not found",
)
_METHOD_NOT_ALLOWED = Document(
    405,
    [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"18"),
        (b"allow", b"GET, HEAD"),
    ],
    b"Method not allowed",
)
_HEALTH = Document(
    200,
    [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"2"),
        (b"cache-control", b"no-store"),
    ],
    b"ok",
)


class WellKnown:
    """Serves the gateway's own paths under ``/__keyswap/``.

    Args:
        issuer: the issuer URL (see :func:`issuer_for`).
        jwks: returns the keyring's public JWKS (``Keyring.public_jwks``).
        algorithm: the algorithm listed in the discovery document while no key is published (otherwise
            the published keys' algorithms are listed, the first key's first).
        max_age: ``Cache-Control`` max-age in seconds.
    """

    def __init__(
        self,
        issuer: str,
        jwks: Callable[[], Mapping[str, Any]],
        *,
        algorithm: str,
        max_age: int = DEFAULT_MAX_AGE,
    ) -> None:
        if max_age < 0:
            raise ConfigError(f"max_age must not be negative, got {max_age!r}")
        self._issuer = issuer
        self._jwks = jwks
        self._algorithm = algorithm
        self._max_age = max_age
        self._documents: dict[str, Document] = {}

    def refresh(self) -> None:
        """Re-render both documents from the keyring (thread-safe: swaps the table)."""
        keys: list[dict[str, Any]] = []
        for jwk in self._jwks().get("keys", []):
            try:
                keys.append(public_jwk(jwk))
            except ConfigError:  # never publish what is not a public signature key
                continue
        # The keyring lists the active key first, so its algorithm leads.
        algorithms = list(dict.fromkeys(k["alg"] for k in keys if isinstance(k.get("alg"), str)))
        algorithms = algorithms or [self._algorithm]
        self._documents = {
            JWKS_PATH: _render({"keys": keys}, b"application/jwk-set+json", self._max_age),
            OPENID_CONFIGURATION_PATH: _render(
                openid_configuration(self._issuer, algorithms),
                b"application/json",
                self._max_age,
            ),
            "/__keyswap/health": _HEALTH,
        }

    def lookup(self, method: str, path: str) -> Document:
        """The response for a request under :data:`RESERVED_PREFIX` (404 for unknown paths)."""
        document = self._documents.get(path)
        if document is None:
            return _NOT_FOUND
        if method not in ("GET", "HEAD"):
            return _METHOD_NOT_ALLOWED
        return document
