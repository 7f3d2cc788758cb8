"""Who calls the admin API: ``Authorization: Bearer ksadm_...`` admin tokens with scopes.

:func:`authenticate` turns a request's bearer credential into a :class:`Caller`; :func:`check_scope`
refuses a caller without the scope a route needs (403 naming it). Every cause of a refused credential
(missing, malformed, unknown, revoked, expired) is one 401 with ``WWW-Authenticate: Bearer``.
Failed attempts are counted per client address (:class:`FailureThrottle`): past the limit the
address gets 429 with ``Retry-After`` until its window ends, so the API is no guessing channel.

With OIDC configured (:mod:`keyswap.admin.oidc`), a bearer credential that is not an admin token
(``ksadm_...``) but has the shape of a JWT goes to the identity provider's verifier instead: a
refused one is the same 401 (counted by the throttle), a valid one a :class:`Caller` of kind ``oidc``
whose scopes come from the token's claims.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keyswap.admin.problems import ApiProblem
from keyswap.errors import AuthError, KeysUnavailable
from keyswap.gateway.secret import ServerSecret
from keyswap.manage.actor import Actor
from keyswap.manage.context import Context
from keyswap.manage.scopes import has_scope
from keyswap.manage.tokens import ADMIN_TOKEN_PREFIX, authenticate_admin_token
from keyswap.store.sql import Store

if TYPE_CHECKING:
    from keyswap.admin.oidc import OidcAuthenticator

__all__ = ["Caller", "FailureThrottle", "authenticate", "check_scope"]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: ``kind`` (``token`` or ``oidc``), a stable ``id`` (the admin token's
    id, or the OIDC subject), the ``name`` audit events show as the actor (the token's name, or the
    subject), and the scopes it holds."""

    kind: str
    id: str
    name: str
    scopes: tuple[str, ...]

    def actor(self, request_id: str | None, client: str | None) -> Actor:
        """The audit actor of a change this caller makes."""
        if self.kind == "oidc":
            return Actor.oidc(self.name, request_id=request_id, client=client)
        return Actor.admin_token(self.name, request_id=request_id, client=client)


class FailureThrottle:
    """Counts failed authentications per client address in fixed windows.

    After ``limit`` failures within ``window`` seconds the address is refused (429) until the window
    ends. At most ``max_addresses`` are tracked (the oldest windows are dropped first). ``clock``:
    monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        limit: int = 10,
        window: float = 60.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._max = max_addresses
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or ``None`` if it may now."""
        now = self._clock()
        with self._lock:
            entry = self._counts.get(address)
            if entry is None:
                return None
            started, count = entry
            if now - started >= self.window:
                del self._counts[address]
                return None
            if count < self.limit:
                return None
            return max(1, int(started + self.window - now + 0.999))

    def failed(self, address: str) -> None:
        """Count one failed attempt from ``address``."""
        now = self._clock()
        with self._lock:
            started, count = self._counts.get(address, (now, 0))
            if now - started >= self.window:
                started, count = now, 0
            self._counts.pop(address, None)
            self._counts[address] = (started, count + 1)  # re-inserted: newest last
            while len(self._counts) > self._max:
                del self._counts[next(iter(self._counts))]


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def _looks_like_jwt(credential: str) -> bool:
    """A compact JWS shape: three non-empty dot-separated parts."""
    parts = credential.split(".")
    return len(parts) == 3 and all(parts)


def _oidc_caller(
    oidc: OidcAuthenticator, token: str, throttle: FailureThrottle, address: str
) -> Caller:
    try:
        return oidc.caller(token)
    except AuthError:
        throttle.failed(address)
        raise ApiProblem(
            401,
            "invalid OIDC token",
            kind="invalid-token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None
    except KeysUnavailable:
        raise ApiProblem(
            503,
            "the identity provider's signing keys are unavailable; try again later",
            kind="oidc-keys-unavailable",
            headers={"Retry-After": "5"},
        ) from None


def authenticate(
    store: Store,
    secret: ServerSecret,
    throttle: FailureThrottle,
    authorization: str | None,
    address: str,
    *,
    clock: Callable[[], float] = time.time,
    oidc: OidcAuthenticator | None = None,
) -> Caller:
    """The caller a request's ``Authorization`` header names.

    An admin token (``ksadm_...``) is checked against the store; with ``oidc``, any other credential
    shaped like a JWT is verified as an OIDC token (without ``oidc`` it is an invalid admin token).

    Raises:
        ApiProblem: 429 (``Retry-After``) while ``address`` is throttled; 401 for a missing or
            refused credential (counted against ``address``); 503 when the identity provider's keys
            cannot be fetched.
    """
    wait = throttle.retry_after(address)
    if wait is not None:
        raise ApiProblem(
            429,
            "too many failed authentication attempts from this address; try again later",
            kind="authentication-throttled",
            headers={"Retry-After": str(wait)},
        )
    token = _bearer(authorization)
    if token is None:
        throttle.failed(address)
        wanted = (
            "an admin token or OIDC token is required (Authorization: Bearer ksadm_... or a JWT)"
            if oidc is not None
            else "an admin token is required (Authorization: Bearer ksadm_...)"
        )
        raise ApiProblem(401, wanted, headers=_CHALLENGE)
    if (
        oidc is not None
        and not token.startswith(ADMIN_TOKEN_PREFIX + "_")
        and _looks_like_jwt(token)
    ):
        return _oidc_caller(oidc, token, throttle, address)
    ctx = Context(store, Actor.system("admin-auth"), clock)
    try:
        principal = authenticate_admin_token(ctx, secret, token)
    except AuthError:
        throttle.failed(address)
        raise ApiProblem(
            401,
            "invalid admin token",
            kind="invalid-token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None
    return Caller("token", principal.token_id, principal.name, principal.scopes)


def check_scope(caller: Caller, scope: str) -> None:
    """Refuse ``caller`` unless it holds ``scope`` (or ``admin``).

    Raises:
        ApiProblem: 403 naming the missing scope.
    """
    if not has_scope(caller.scopes, scope):
        raise ApiProblem(
            403,
            f"this needs the scope {scope}",
            kind="insufficient-scope",
            scope=scope,
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        )
