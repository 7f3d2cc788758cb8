"""A real admin API for tests: the FastAPI app on uvicorn on 127.0.0.1, over SQLite or PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from keyswap.admin.app import build_admin_app
from keyswap.admin.auth import FailureThrottle
from keyswap.admin.metrics import AdminMetrics
from keyswap.admin.state import AdminState
from keyswap.gateway.keyring import Keyring
from keyswap.gateway.secret import ServerSecret
from keyswap.manage.actor import Actor
from keyswap.manage.context import Context
from keyswap.manage.scopes import ADMIN, MANAGEMENT_SCOPES
from keyswap.manage.tokens import NewAdminToken, create_admin_token
from keyswap.store import Store
from tests.support.asgi_server import ServerThread
from tests.support.cluster import postgres_schema
from tests.support.gateway_state import SECRET_TEXT, Clock


@dataclass
class AdminApi:
    url: str
    store: Store
    secret: ServerSecret
    state: AdminState
    throttle_clock: Clock
    #: scope -> a token holding only that scope (and "admin" -> an admin token).
    tokens: dict[str, str] = field(default_factory=dict)

    def token(
        self, name: str, scopes: tuple[str, ...], expires_in: float | None = None
    ) -> tuple[str, str]:
        """A new admin token: (token id, token), stamped by the admin's own clock (so a test that
        moves that clock past ``expires_in`` sees the token expired, however slow the set-up was)."""
        ctx = Context(self.store, Actor.cli("test"), self.state.clock)
        created = create_admin_token(ctx, self.secret, NewAdminToken(name, scopes, expires_in))
        return created.record.id, created.token

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = "admin",  # noqa: S107 - a scope name
        **kw: Any,
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {self.tokens.get(token, token)}")
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kw)


def _db_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL of ``kind``."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'keyswap.db'}"
    else:
        with postgres_schema() as url:
            yield url


@contextmanager
def running_admin(
    tmp_path: Path,
    kind: str = "sqlite",
    *,
    db_url: str | None = None,
    secret: ServerSecret | None = None,
    metrics: AdminMetrics | None = None,
    **state_options: Any,
) -> Iterator[AdminApi]:
    """Start the admin API over a fresh database of ``kind`` (``sqlite`` or ``postgres``), or the one
    at ``db_url`` (with ``secret``), with one admin token per management scope plus an ``admin`` one."""
    # the webhook tests deliver to receivers on 127.0.0.1 (tests/admin/test_routes_webhooks_attacks.py
    # checks that an admin without --webhooks-allow-loopback refuses it)
    state_options.setdefault("webhooks_allow_loopback", True)
    urls = iter([db_url]) if db_url is not None else _db_url(kind, tmp_path)
    for url in urls:
        store = Store(url, schema="upgrade")
        try:
            secret = secret or ServerSecret(SECRET_TEXT)
            throttle_clock = Clock(time.monotonic())
            state = AdminState(
                store,
                secret,
                Keyring(store, secret),
                throttle=FailureThrottle(clock=throttle_clock),
                **state_options,
            )
            server = ServerThread(build_admin_app(state, metrics=metrics)).start()
            api = AdminApi(server.url, store, secret, state, throttle_clock)
            for scope in (*MANAGEMENT_SCOPES, ADMIN):
                api.tokens[scope] = api.token(scope.replace(":", "-"), (scope,))[1]
            try:
                yield api
            finally:
                server.stop()
        finally:
            store.close()
