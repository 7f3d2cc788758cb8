"""What every admin route works with: the store, the server secret, the keyring, clocks, caches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from keyswap.admin.auth import Caller, FailureThrottle, authenticate, check_scope
from keyswap.admin.idempotency import IdempotencyCache
from keyswap.admin.middleware import request_id_of
from keyswap.gateway.apikeys import DEFAULT_PREFIX
from keyswap.gateway.keyring import Keyring
from keyswap.gateway.secret import ServerSecret
from keyswap.manage.context import DEFAULT_AUDIT_RETENTION, Context
from keyswap.store.sql import Store

if TYPE_CHECKING:
    from keyswap.admin.oidc import OidcAuthenticator

__all__ = ["AdminState", "Authorized", "require"]


@dataclass
class AdminState:
    """The admin app's state. ``clock``: wall-clock epoch seconds (what changes are stamped with)."""

    store: Store
    secret: ServerSecret
    keyring: Keyring
    key_prefix: str = DEFAULT_PREFIX
    audit_retention: float = DEFAULT_AUDIT_RETENTION
    clock: Callable[[], float] = time.time
    throttle: FailureThrottle = field(default_factory=FailureThrottle)
    idempotency: IdempotencyCache = field(default_factory=IdempotencyCache)
    #: Serialises conditional writes (If-Match) so the check and the write are one step.
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    #: Verifies OIDC tokens from the identity provider; ``None``: admin tokens only.
    oidc: OidcAuthenticator | None = None
    #: The developer portal's public URL (``--portal-url``): sign-in links are made whole with it.
    portal_url: str | None = None
    #: ``--webhooks-allow-loopback``: webhook URLs may name a loopback address (local development).
    #: Off, a caller asking for ``allow_http_loopback`` gets a 422: the flag would let any holder of
    #: ``consumers:write`` make the dispatcher call services on the admin's own host.
    webhooks_allow_loopback: bool = False


@dataclass(frozen=True, slots=True)
class Authorized:
    """A request's authenticated caller, with what a change made for it needs."""

    state: AdminState
    caller: Caller
    request_id: str
    client: str | None

    def context(self) -> Context:
        """The service-layer context: the caller as the actor, with the request id and address."""
        s = self.state
        actor = self.caller.actor(self.request_id, self.client)
        return Context(s.store, actor, s.clock, s.audit_retention)


def state_of(request: Request) -> AdminState:
    """The app's :class:`AdminState`."""
    state: AdminState = request.app.state.admin
    return state


def require(scope: str) -> Callable[[Request], Authorized]:
    """A route dependency: authenticate the request and require ``scope`` (401/403/429)."""

    def dependency(request: Request) -> Authorized:
        state = state_of(request)
        client = request.client.host if request.client else None
        caller = authenticate(
            state.store,
            state.secret,
            state.throttle,
            request.headers.get("authorization"),
            client or "unknown",
            clock=state.clock,
            oidc=state.oidc,
        )
        check_scope(caller, scope)
        return Authorized(state, caller, request_id_of(request.scope), client)

    dependency.__name__ = f"require_{scope.replace(':', '_').replace('-', '_')}"
    return dependency
