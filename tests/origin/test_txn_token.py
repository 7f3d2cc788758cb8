"""Transaction Tokens (gateway --token-format txn-token, origin --token-format txn-token), end to end.

Gateway -> origin directly here (no proxy in between), so the origin computes the bound URL from the
request's own Host header, the default when no public URL is stated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from keyswap.gateway.binding import BindPolicy
from keyswap.gateway.wellknown import JWKS_PATH
from keyswap.origin.app import create_app
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.asgi_server import ServerThread, bound_socket
from tests.support.running_gateway import Gateway, running_gateway


@dataclass
class Pair:
    gateway: Gateway
    origin: ServerThread

    def call(self, method: str, path: str, **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.gateway.key}"}
        return httpx.request(method, self.gateway.url + path, headers=headers, timeout=10, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    sock = bound_socket()
    origin_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with running_gateway(
        tmp_path_factory.mktemp("txn"),
        origin_url,
        real_clock=True,
        alg="EdDSA",
        token_format="txn-token",
        bind=BindPolicy(bind_all=True),
        txn_purpose="orders",
    ) as gateway:
        config = IssuerConfig(
            issuer=gateway.app.settings.issuer,
            jwks_url=gateway.url + JWKS_PATH,
            algorithms=("EdDSA",),
            audience=gateway.app.settings.audience,
            profile="txn-token",
            bind_request=True,
        )
        verifier = Verifier(config)
        origin = ServerThread(create_app(verifier, token_header="txn-token"), sock=sock).start()
        try:
            yield Pair(gateway, origin)
        finally:
            origin.stop()


def test_the_origin_gets_a_bound_transaction_token_in_the_txn_token_header(pair: Pair) -> None:
    response = pair.call("POST", "/orders?x=1", content=b"{}")
    assert response.status_code == 200, response.text
    claims = response.json()
    assert claims["txn"]
    assert claims["purp"] == "orders"
    assert claims["sub"] == "acme"
    assert claims["aud"] == pair.gateway.app.settings.audience
    assert claims["tctx"]["consumer"] == "acme"
    assert claims["tctx"]["key_id"] == pair.gateway.key_id
    assert claims["tctx"]["metadata"] == {"plan": "free"}
    assert claims["rctx"] == {"req_ip": "127.0.0.1"}
    assert claims["htm"] == "POST"
    assert claims["htu"] == pair.origin.url + "/orders"
    assert claims["exp"] - claims["iat"] == 30


def test_each_request_is_its_own_transaction(pair: Pair) -> None:
    first = pair.call("GET", "/a").json()
    second = pair.call("GET", "/a").json()
    assert first["txn"] != second["txn"]
    assert first["jti"] != second["jti"]


def test_a_bearer_token_is_not_a_transaction_token(pair: Pair) -> None:
    gateway = pair.gateway
    principal = gateway.admin.authenticate(gateway.key, gateway.clock())
    token = gateway.app.minter.token_for(principal).token
    bearer = httpx.get(
        pair.origin.url + "/a", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert bearer.status_code == 401  # no Txn-Token header at all
    assert "error=" not in bearer.headers["www-authenticate"]
    wrong_typ = httpx.get(pair.origin.url + "/a", headers={"Txn-Token": token}, timeout=10)
    assert wrong_typ.status_code == 401
    assert 'error="invalid_token"' in wrong_typ.headers["www-authenticate"]


def test_a_transaction_token_replayed_is_refused(pair: Pair) -> None:
    gateway = pair.gateway
    principal = gateway.admin.authenticate(gateway.key, gateway.clock())
    token, _ = gateway.app.minter.mint_per_request(
        principal,
        {"htm": "GET", "htu": pair.origin.url + "/r"},
        ttl=30,
        txn="t-replay",
    )
    first = httpx.get(pair.origin.url + "/r", headers={"Txn-Token": token}, timeout=10)
    assert first.status_code == 200, first.text
    again = httpx.get(pair.origin.url + "/r", headers={"Txn-Token": token}, timeout=10)
    assert again.status_code == 401


def test_the_gateway_logs_the_transaction_id(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="keyswap.gateway"):
        txn = pair.call("GET", "/logged").json()["txn"]
    assert any(txn in record.getMessage() for record in caplog.records)
    assert not any(pair.gateway.key in record.getMessage() for record in caplog.records)


def test_a_wsgi_app_reads_the_transaction_token_from_its_header(pair: Pair) -> None:
    import threading

    from werkzeug.serving import make_server

    from keyswap.verifier.wsgi import WSGIAuthMiddleware, get_claims

    def echo(environ: dict[str, object], start_response: object) -> list[bytes]:
        claims = get_claims(environ) or {}
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [str(claims.get("txn")).encode()]

    gateway = pair.gateway
    config = IssuerConfig(
        issuer=gateway.app.settings.issuer,
        jwks_url=gateway.url + JWKS_PATH,
        algorithms=("EdDSA",),
        audience=gateway.app.settings.audience,
        profile="txn-token",
        bind_request=True,
    )
    verifier = Verifier(config)
    server = make_server(
        "127.0.0.1", 0, WSGIAuthMiddleware(echo, verifier=verifier, token_header="txn-token")
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        principal = gateway.admin.authenticate(gateway.key, gateway.clock())
        token, _ = gateway.app.minter.mint_per_request(
            principal, {"htm": "GET", "htu": base + "/w"}, ttl=30, txn="t-wsgi"
        )
        bearer = httpx.get(base + "/w", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert bearer.status_code == 401
        ok = httpx.get(base + "/w", headers={"Txn-Token": token}, timeout=10)
        assert ok.status_code == 200, ok.text
        assert ok.text == "t-wsgi"
        again = httpx.get(base + "/w", headers={"Txn-Token": token}, timeout=10)
        assert again.status_code == 401
    finally:
        server.shutdown()
        thread.join(5)
        verifier.close()
