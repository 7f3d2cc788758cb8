"""The examples' scope routes, end to end: client -> a running keyswap gateway -> the example app.

The gateway mints each key's scopes as the `scope` claim; the example (verifying against the JWKS the
gateway serves) grants `GET /orders` to `orders:read` and `POST /orders` to `orders:write`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from tests.examples.test_examples import load
from tests.support.asgi_server import ServerThread, bound_socket
from tests.support.running_gateway import Gateway, eventually, running_gateway


@contextmanager
def asgi_example(name: str, env: Callable[[], None]) -> Iterator[tuple[str, Callable[[], Any]]]:
    """Yields the example's URL (known before it loads) and a starter to call once ``env`` can run."""
    sock = bound_socket()
    holder: dict[str, Any] = {}

    def start() -> None:
        env()
        module = load(name)
        holder["module"] = module
        holder["server"] = ServerThread(module.app, sock=sock).start()

    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", start
    finally:
        if "server" in holder:
            holder["server"].stop()
        else:
            sock.close()
        if "module" in holder:
            holder["module"].verifier.close()


@contextmanager
def wsgi_example(name: str, env: Callable[[], None]) -> Iterator[tuple[str, Callable[[], Any]]]:
    holder: dict[str, ModuleType] = {}

    def dispatch(environ: Any, start_response: Any) -> Any:
        return holder["module"].app(environ, start_response)

    server = make_server("127.0.0.1", 0, dispatch, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)

    def start() -> None:
        env()
        holder["module"] = load(name)
        thread.start()

    try:
        yield f"http://127.0.0.1:{server.server_port}", start
    finally:
        if thread.is_alive():
            server.shutdown()
        server.server_close()
        if "module" in holder:
            holder["module"].app.extensions["keyswap"].guard.verifier.close()


def call(gateway: Gateway, method: str, key: str) -> httpx.Response:
    return httpx.request(
        method, gateway.url + "/orders", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


@pytest.mark.parametrize(
    ("name", "serve"),
    [("fastapi_app", asgi_example), ("starlette_app", asgi_example), ("flask_app", wsgi_example)],
)
def test_scope_routes_work_through_a_running_gateway(
    name: str, serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder: dict[str, Gateway] = {}

    def env() -> None:
        settings = holder["gateway"].app.settings
        monkeypatch.setenv("KEYSWAP_ISSUER", settings.issuer)
        monkeypatch.setenv("KEYSWAP_JWKS_URL", settings.issuer + "/.well-known/jwks.json")
        monkeypatch.setenv("KEYSWAP_AUDIENCE", settings.audience)

    with (
        serve(name, env) as (origin_url, start_origin),
        running_gateway(tmp_path, origin_url, alg="RS256") as gateway,  # the examples accept RS256
    ):
        holder["gateway"] = gateway
        start_origin()
        store, admin = gateway.admin_store, gateway.admin
        store.set_consumer_scopes("acme", ["orders:read", "orders:write"])
        _, reader = admin.create("acme", scopes=["orders:read"])
        _, writer = admin.create("acme")  # the consumer's scopes
        store.create_consumer("nobody")
        _, unscoped = admin.create("nobody")

        read = call(gateway, "GET", reader)
        assert read.status_code == 200, read.text
        assert read.json() == {"orders": [], "consumer": "acme"}
        denied = call(gateway, "POST", reader)
        assert denied.status_code == 403
        assert 'scope="orders:write"' in denied.headers["www-authenticate"]
        assert call(gateway, "POST", writer).status_code == 201
        assert call(gateway, "GET", writer).status_code == 200
        assert call(gateway, "GET", unscoped).status_code == 403

        # Narrowing the consumer reaches the running gateway (its change watcher): the keys lose the scope.
        store.set_consumer_scopes("acme", ["orders:write"])
        eventually(
            lambda: (
                call(gateway, "GET", reader).status_code == 403
                and call(gateway, "GET", writer).status_code == 403
            )
        )
        assert call(gateway, "POST", writer).status_code == 201
