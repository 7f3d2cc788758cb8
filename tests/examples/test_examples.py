"""Each example in examples/ run against a real JWKS server, configured by the documented env vars."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.jwks_server import JWKSServer
from tests.support.keys import claims, ec_key, ed_key, jwks, rsa_key
from tests.verifier.adapter_cases import AUDIENCE, ISSUER, KEY, bearer, make_verifier, token

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def env(jwks_server: JWKSServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    make_verifier(jwks_server).close()  # the server now serves the test key
    values = {
        "KEYSWAP_ISSUER": ISSUER,
        "KEYSWAP_JWKS_URL": jwks_server.url,
        "KEYSWAP_AUDIENCE": AUDIENCE,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def load(name: str) -> ModuleType:
    """Import examples/<name>.py afresh (it reads the environment at import)."""
    spec = importlib.util.spec_from_file_location(
        f"keyswap_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def auth(value: str | None = None) -> dict[str, str]:
    return {} if value is None else {"Authorization": value}


def check_asgi_example(module: ModuleType) -> None:
    from fastapi.testclient import TestClient

    try:
        with TestClient(module.app) as client:
            ok = client.get("/claims", headers=auth(bearer(token(sub="ex-1"))))
            assert ok.status_code == 200
            assert ok.json()["sub"] == "ex-1"
            assert ok.json()["iss"] == ISSUER
            missing = client.get("/claims")
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == 'Bearer realm="keyswap"'
            assert client.get("/claims", headers=auth(bearer("junk"))).status_code == 401
            denied = client.get("/orders", headers=auth(bearer(token())))
            assert denied.status_code == 403
            assert 'scope="orders:read"' in denied.headers["www-authenticate"]
            granted = client.get("/orders", headers=auth(bearer(token(scope="orders:read"))))
            assert granted.json() == {"orders": [], "consumer": "consumer-1"}
            assert client.get("/health").status_code == 200
    finally:
        module.verifier.close()


def test_fastapi_example_serves_claims_and_enforces_scopes(env: dict[str, str]) -> None:
    check_asgi_example(load("fastapi_app"))


def test_fastapi_example_shows_the_bearer_scheme_in_openapi(env: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    module = load("fastapi_app")
    try:
        with TestClient(module.app) as client:
            schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    finally:
        module.verifier.close()
    assert schemes["keyswapBearer"]["scheme"] == "bearer"


def test_starlette_example_serves_claims_and_enforces_scopes(env: dict[str, str]) -> None:
    check_asgi_example(load("starlette_app"))


def test_flask_example_serves_claims_and_enforces_scopes(env: dict[str, str]) -> None:
    module = load("flask_app")
    client = module.app.test_client()
    try:
        ok = client.get("/claims", headers=auth(bearer(token(sub="ex-2"))))
        assert ok.status_code == 200
        assert ok.json["sub"] == "ex-2"
        assert client.get("/claims").status_code == 401
        assert client.get("/orders", headers=auth(bearer(token()))).status_code == 403
        granted = client.get("/orders", headers=auth(bearer(token(scp=["orders:read"]))))
        assert granted.json == {"orders": [], "consumer": "consumer-1"}
        assert client.get("/health").status_code == 200
    finally:
        module.app.extensions["keyswap"].guard.verifier.close()


def test_wsgi_example_serves_claims(env: dict[str, str]) -> None:
    from werkzeug.test import Client

    module = load("wsgi_app")
    client = Client(module.application)
    try:
        ok = client.get("/anything", headers=auth(bearer(token(sub="ex-3"))))
        assert ok.status_code == 200
        assert ok.json is not None
        assert ok.json["sub"] == "ex-3"
        missing = client.get("/anything")
        assert missing.status_code == 401
        assert missing.data == b"No token provided"
        assert client.get("/health").status_code == 200
    finally:
        module.verifier.close()


_DJANGO_DRIVER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import django_app
    from django.test import Client

    client = Client()
    results = {}
    for name, path, authorization in json.loads(sys.argv[2]):
        headers = {"Authorization": authorization} if authorization else {}
        response = client.get(path, headers=headers)
        results[name] = {
            "status": response.status_code,
            "body": response.content.decode(),
            "www": response.headers.get("WWW-Authenticate"),
        }
    print(json.dumps(results))
    """
)


@pytest.fixture
def django_results(env: dict[str, str]) -> dict[str, Any]:
    requests = [
        ("claims", "/claims", bearer(token(sub="ex-4"))),
        ("missing", "/claims", None),
        ("invalid", "/claims", bearer("junk")),
        ("health", "/health", None),
        ("drf_denied", "/api/orders", bearer(token())),
        ("drf_ok", "/api/orders", bearer(token(sub="ex-5", scope="orders:read"))),
        ("drf_missing", "/api/orders", None),
    ]
    done = subprocess.run(
        [sys.executable, "-c", _DJANGO_DRIVER, str(EXAMPLES), json.dumps(requests)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_django_example_serves_claims_and_drf_enforces_scopes(
    django_results: dict[str, Any],
) -> None:
    r = django_results
    assert r["claims"]["status"] == 200
    assert json.loads(r["claims"]["body"])["sub"] == "ex-4"
    assert r["missing"]["status"] == 401
    assert r["missing"]["body"] == "No token provided"
    assert r["invalid"]["status"] == 401
    assert r["invalid"]["www"].startswith('Bearer realm="keyswap", error="invalid_token"')
    assert r["health"]["status"] == 200
    assert r["drf_denied"]["status"] == 403
    assert 'scope="orders:read"' in r["drf_denied"]["www"]
    assert r["drf_ok"]["status"] == 200
    assert json.loads(r["drf_ok"]["body"]) == {"orders": [], "consumer": "ex-5"}
    assert r["drf_missing"]["status"] == 401


# -- the examples read `keyswap origin`'s settings: every algorithm by default ---------------------

EC_KEY = ec_key("example-ec")
ED_KEY = ed_key("example-ed")
PS_KEY = rsa_key("example-ps", alg="PS256", slot=2)


def signed(alg: str, **claim_overrides: Any) -> str:
    key = {"ES256": EC_KEY, "EdDSA": ED_KEY, "PS256": PS_KEY, "RS256": KEY}[alg]
    return key.sign(claims(iss=ISSUER, aud=AUDIENCE, **claim_overrides))


@pytest.fixture
def every_alg_env(env: dict[str, str], jwks_server: JWKSServer) -> dict[str, str]:
    jwks_server.serve(jwks(KEY, EC_KEY, ED_KEY, PS_KEY))
    return env


def _claims_of(name: str, authorization: str) -> tuple[int, Any]:
    module = load(name)
    headers = {"Authorization": authorization}
    if name == "flask_app":
        client = module.app.test_client()
        try:
            response = client.get("/claims", headers=headers)
            return response.status_code, response.json
        finally:
            module.app.extensions["keyswap"].guard.verifier.close()
    if name == "wsgi_app":
        from werkzeug.test import Client

        try:
            answer = Client(module.application).get("/claims", headers=headers)
            return answer.status_code, answer.json
        finally:
            module.verifier.close()
    from fastapi.testclient import TestClient

    try:
        with TestClient(module.app) as asgi_client:
            reply = asgi_client.get("/claims", headers=headers)
            return reply.status_code, reply.json() if reply.status_code == 200 else None
    finally:
        module.verifier.close()


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
@pytest.mark.parametrize("name", ["fastapi_app", "starlette_app", "flask_app", "wsgi_app"])
def test_examples_accept_every_algorithm_by_default(
    every_alg_env: dict[str, str], name: str, alg: str
) -> None:
    status, body = _claims_of(name, bearer(signed(alg, sub=f"{alg}-1")))
    assert status == 200
    assert body["sub"] == f"{alg}-1"


@pytest.mark.parametrize("name", ["fastapi_app", "flask_app"])
def test_examples_read_the_algorithm_allow_list(
    every_alg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("KEYSWAP_ALGORITHMS", "ES256")
    assert _claims_of(name, bearer(signed("ES256")))[0] == 200
    assert _claims_of(name, bearer(signed("RS256")))[0] == 401


def test_examples_read_the_rfc9068_profile(
    every_alg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSWAP_PROFILE", "rfc9068")
    plain_jwt = signed("ES256", client_id="svc", jti="j1")  # typ JWT
    assert _claims_of("fastapi_app", bearer(plain_jwt))[0] == 401
    access_token = EC_KEY.sign(
        claims(iss=ISSUER, aud=AUDIENCE, client_id="svc", jti="j1"), header={"typ": "at+jwt"}
    )
    assert _claims_of("fastapi_app", bearer(access_token))[0] == 200


def test_django_example_accepts_es256(every_alg_env: dict[str, str]) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _DJANGO_DRIVER,
            str(EXAMPLES),
            json.dumps([("es", "/claims", bearer(signed("ES256", sub="dj-es")))]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **every_alg_env},
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])["es"]
    assert (result["status"], json.loads(result["body"])["sub"]) == (200, "dj-es")
