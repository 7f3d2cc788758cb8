"""Management scopes: what an admin token (or an OIDC token) may do through the admin API."""

from __future__ import annotations

from collections.abc import Iterable

from keyswap.errors import InsufficientScope, InvalidInput

__all__ = ["ADMIN", "MANAGEMENT_SCOPES", "has_scope", "parse_management_scopes", "require_scope"]

#: Every scope but ``admin``, which grants all of them.
MANAGEMENT_SCOPES = (
    "consumers:read",
    "consumers:write",
    "keys:read",
    "keys:write",
    "signing-keys:read",
    "signing-keys:write",
    "audit:read",
    "usage:read",
)
ADMIN = "admin"
_KNOWN = frozenset((*MANAGEMENT_SCOPES, ADMIN))


def parse_management_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """``scopes`` without duplicates (first kept), if each is a management scope; at least one.

    Raises:
        InvalidInput: an unknown scope, or none.
    """
    result: list[str] = []
    for scope in scopes:
        if scope not in _KNOWN:
            shown = repr(scope)[:72]
            raise InvalidInput(
                f"unknown admin scope {shown}: use {', '.join(MANAGEMENT_SCOPES)} or {ADMIN}"
            )
        if scope not in result:
            result.append(scope)
    if not result:
        raise InvalidInput("an admin token needs at least one scope")
    return tuple(result)


def has_scope(granted: Iterable[str], needed: str) -> bool:
    """True if ``granted`` includes ``needed``, or ``admin``. A ``:write`` scope does not imply
    ``:read``: grant both."""
    held = set(granted)
    return ADMIN in held or needed in held


def require_scope(granted: Iterable[str], needed: str) -> None:
    """Refuse unless ``granted`` includes ``needed`` (or ``admin``).

    Raises:
        InsufficientScope: naming the missing scope (403).
    """
    if not has_scope(granted, needed):
        raise InsufficientScope(f"this needs the scope {needed}", scope=needed)
