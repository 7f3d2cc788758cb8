"""Claims -> permissions: one normaliser for every shape scopes and roles come in.

Tokens carry what a caller may do in several ways, depending on who issued them:

- ``scope``: an RFC 8693 / RFC 9068 space-separated string (``"read write"``);
- ``scp``: a string (Okta) or an array (Azure AD, Envoy Gateway);
- ``roles``: an array (Azure AD app roles) or a single string;
- nested claims: Keycloak's ``realm_access.roles``, the keyswap gateway's ``metadata.plan``, Auth0's
  namespaced ``https://example.com/roles``.

:func:`permissions_from_claims` reads all the configured claims and returns one ``frozenset[str]``.
Strings are split on the space character (0x20) only, as RFC 6749 §3.3 separates scopes (a tab, NBSP,
``\x1c``-``\x1f`` or ``\u2028`` is part of a scope, never a separator); arrays contribute each string
element; anything else (numbers, booleans, objects, ``null``) is ignored, so a malformed claim can deny
access but never crash a request.
Every framework adapter uses it, so a route's ``scopes=[...]`` means the same thing everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keyswap.errors import InsufficientScope

__all__ = [
    "DEFAULT_PERMISSION_CLAIMS",
    "ClaimPath",
    "TokenClaims",
    "check_scopes",
    "missing_scopes",
    "normalise_paths",
    "permissions_from_claims",
    "read_claim",
    "validate_scopes",
]

#: A claim location: a dotted string (``"realm_access.roles"``) or an explicit tuple of keys
#: (``("https://example.com/claims", "roles")``) for keys that contain dots themselves.
ClaimPath = str | tuple[str, ...]

#: The claims read when nothing else is configured.
DEFAULT_PERMISSION_CLAIMS: tuple[ClaimPath, ...] = ("scope", "scp", "roles")

# Hard caps: a token is already size-limited, these keep the work per request small and predictable.
_MAX_DEPTH = 16
_MAX_ITEMS = 1024
# RFC 6749 §3.3 scope-token: no space, no '"', no '\\' (so it can sit in a quoted header parameter).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# The only scope separator (RFC 6749 §3.3).
_SP = " "


def _split_path(path: ClaimPath) -> tuple[str, ...]:
    keys = path if isinstance(path, tuple) else tuple(path.split("."))
    if not keys or len(keys) > _MAX_DEPTH or any(not isinstance(k, str) or not k for k in keys):
        raise ValueError(f"invalid claim path: {path!r}")
    return keys


def normalise_paths(paths: Iterable[ClaimPath]) -> tuple[ClaimPath, ...]:
    """Validate claim paths eagerly (at configuration time), keeping their order.

    Raises:
        ValueError: a path is empty, has an empty segment, or is not a string / tuple of strings.
    """
    if isinstance(paths, str):
        paths = (paths,)
    result = tuple(paths)
    for path in result:
        if not isinstance(path, str | tuple):
            raise ValueError(f"invalid claim path: {path!r}")
        _split_path(path)
    return result


def read_claim(claims: Mapping[str, Any], path: ClaimPath) -> Any:
    """Return the value at ``path`` in ``claims``, or ``None`` when any step is missing.

    A string path is first looked up as one literal key (so ``"https://example.com/roles"`` works),
    then as a dotted path.
    """
    if isinstance(path, str) and path in claims:
        return claims[path]
    node: Any = claims
    for key in _split_path(path):
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
        if node is None:
            return None
    return node


def _values(value: Any) -> Iterable[str]:
    # RFC 6749 §3.3: scope = scope-token *( SP scope-token ). str.split() with no argument would
    # also split on NBSP, \x1c-\x1f, \u2028 ..., turning "reports:read\u00a0admin" into "admin".
    if isinstance(value, str):
        return (part for part in value.split(_SP) if part)
    if isinstance(value, list | tuple):
        return (
            item.strip(_SP)
            for item in value[:_MAX_ITEMS]
            if isinstance(item, str) and item.strip(_SP)
        )
    return ()


def permissions_from_claims(
    claims: Mapping[str, Any] | None,
    paths: Iterable[ClaimPath] = DEFAULT_PERMISSION_CLAIMS,
) -> frozenset[str]:
    """Collect the permissions granted by ``claims`` from every claim in ``paths``.

    ``"scope": "a b"``, ``"scp": ["a", "b"]``, ``"roles": "a"`` and nested paths such as
    ``"realm_access.roles"`` all normalise the same way. A string value is split on spaces (0x20)
    only. Values that are neither a string nor an array of strings are ignored; non-string array
    elements are skipped. ``paths`` given as one bare string (``"scope"``) is one claim path.
    """
    if not isinstance(claims, Mapping):
        return frozenset()
    if isinstance(paths, str):
        paths = (paths,)
    found: set[str] = set()
    for path in paths:
        found.update(_values(read_claim(claims, path)))
        if len(found) > _MAX_ITEMS:
            break
    return frozenset(found)


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Check required scopes at configuration time: RFC 6749 §3.3 scope tokens, no duplicates.

    Raises:
        ValueError: a scope is not a string, is empty, or contains a space, ``"`` or ``\\``.
    """
    if isinstance(scopes, str):
        scopes = (scopes,)
    result: list[str] = []
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
            raise ValueError(f"invalid scope (RFC 6749 scope-token): {scope!r}")
        if scope not in result:
            result.append(scope)
    return tuple(result)


def missing_scopes(granted: Iterable[str], required: Iterable[str]) -> tuple[str, ...]:
    """The required scopes that ``granted`` lacks, in the order they were required.

    ``required`` given as one bare string is one scope (never its characters).
    """
    if isinstance(required, str):
        required = (required,)
    have = granted if isinstance(granted, frozenset | set) else frozenset(granted)
    return tuple(dict.fromkeys(s for s in required if s not in have))


def check_scopes(
    claims: Mapping[str, Any] | None,
    required: Sequence[str] | Iterable[str],
    paths: Iterable[ClaimPath] = DEFAULT_PERMISSION_CLAIMS,
) -> frozenset[str]:
    """Require every scope in ``required``; return the caller's permissions.

    Raises:
        InsufficientScope: at least one scope is missing. Its ``scope`` attribute lists *all* the
            required scopes (space-separated), as RFC 6750 §3 asks for the ``scope`` parameter.

    ``required`` given as one bare string is one scope.
    """
    required = (required,) if isinstance(required, str) else tuple(required)
    granted = permissions_from_claims(claims, paths)
    if missing_scopes(granted, required):
        raise InsufficientScope("The token lacks a required scope", scope=" ".join(required))
    return granted


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """Verified claims as a small typed object (the FastAPI dependency returns one).

    ``aud`` is always a tuple (a string ``aud`` becomes a 1-tuple); ``scopes`` is the normalised
    permission set; ``raw`` is the complete claims dict, untouched.
    """

    sub: str
    iss: str
    aud: tuple[str, ...]
    exp: int | None
    iat: int | None
    scopes: frozenset[str]
    raw: Mapping[str, Any]

    @classmethod
    def from_claims(
        cls, claims: Mapping[str, Any], paths: Iterable[ClaimPath] = DEFAULT_PERMISSION_CLAIMS
    ) -> TokenClaims:
        """Build from a verified claims dict, reading scopes from ``paths``."""
        aud = claims.get("aud")
        if isinstance(aud, str):
            audiences: tuple[str, ...] = (aud,)
        elif isinstance(aud, list):
            audiences = tuple(a for a in aud if isinstance(a, str))
        else:
            audiences = ()
        return cls(
            sub=_str(claims.get("sub")),
            iss=_str(claims.get("iss")),
            aud=audiences,
            exp=_int(claims.get("exp")),
            iat=_int(claims.get("iat")),
            scopes=permissions_from_claims(claims, paths),
            raw=claims,
        )

    def has_scopes(self, *scopes: str) -> bool:
        """``True`` when every scope in ``scopes`` is granted."""
        return not missing_scopes(self.scopes, scopes)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)
