"""A real gateway for tests: uvicorn in a thread, a SQLite file, a consumer and a key ready to use."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyswap.gateway.apikeys import ApiKeys
from keyswap.gateway.app import GatewayApp, GatewaySettings, build_gateway
from keyswap.gateway.cluster import ClusterSettings
from keyswap.gateway.secret import load_secret
from keyswap.gateway.secretscanning import SecretScanningSettings
from keyswap.serverproto import http_protocol
from keyswap.store import Store
from tests.support.asgi_server import ServerThread, bound_socket
from tests.support.gateway_state import Clock
from tests.support.upstream import RecordingUpstream


@dataclass
class Gateway:
    app: GatewayApp
    server: ServerThread
    admin: ApiKeys  # over a second Store on the same file: what another process would do
    admin_store: Store
    db_url: str
    db_path: Path
    key: str
    key_id: str
    clock: Clock

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def get(self, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key if key is None else key}"}
        return httpx.get(self.url + path, headers=headers, timeout=10, **kw)


def token_seen_by(upstream: RecordingUpstream) -> str:
    """The bearer token the upstream received last."""
    return upstream.last.header("authorization")[0].removeprefix("Bearer ")


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took (fails after ``timeout``)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started


@contextmanager
def running_gateway(
    tmp_path: Path,
    upstream_url: str,
    *,
    real_clock: bool = False,
    cluster: ClusterSettings | None = None,
    server_options: dict[str, Any] | None = None,
    secret_scanning: SecretScanningSettings | None = None,
    usage_interval: float | None = 10.0,
    gateway_options: dict[str, Any] | None = None,
    **settings: Any,
) -> Iterator[Gateway]:
    """Start a gateway in front of ``upstream_url`` with consumer ``acme`` ({"plan": "free"}) and a key.

    The gateway's clock is a :class:`Clock` tests move by hand (it starts at the real time), unless
    ``real_clock`` (for expiry set by another process at its real "now"). ``server_options``: extra uvicorn
    config (e.g. ``http=`` a protocol class); ``gateway_options``: extra ``build_gateway`` arguments
    (``metrics=``, ``tracing=``).
    """
    db_path = tmp_path / "keyswap.db"
    db_url = f"sqlite:///{db_path}"
    clock = Clock(time.time())
    sock = bound_socket()
    port = sock.getsockname()[1]
    options: dict[str, Any] = {"alg": "ES256", "watch_interval": 0.1}
    options.update(settings)
    config = GatewaySettings(upstream_url, f"http://127.0.0.1:{port}", **options)
    app = build_gateway(
        config,
        db_url=db_url,
        env={},
        clock=time.time if real_clock else clock,
        cluster=cluster,
        secret_scanning=secret_scanning,
        usage_interval=usage_interval,
        **(gateway_options or {}),
    )
    admin_store = Store(db_url)
    try:
        admin = ApiKeys(admin_store, load_secret(db_url, env={}), cache_size=0)
        admin_store.create_consumer("acme", {"plan": "free"})
        record, key = admin.create("acme")
        server_config: dict[str, Any] = {"http": http_protocol(), **(server_options or {})}
        server = ServerThread(app, sock=sock, **server_config).start()
        try:
            yield Gateway(app, server, admin, admin_store, db_url, db_path, key, record.id, clock)
        finally:
            server.stop()
    finally:
        admin_store.close()
