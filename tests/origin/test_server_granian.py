from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from keyswap.cli import main
from keyswap.errors import ConfigError
from keyswap.origin.server_granian import app_from_env, config_from_env, export_env
from keyswap.verifier.verify import IssuerConfig
from tests.support.asgi import call_http, free_port, run_lifespan
from tests.support.jwks_server import JWKSServer
from tests.support.keys import claims, jwks, rsa_key
from tests.support.keyswap_process import KeyswapProcess, running_keyswap

ISSUER = "https://gateway.test/__keyswap/issuer"
AUDIENCE = "https://api.test"
BASE = ("--jwks-url", "http://127.0.0.1:9/jwks.json", "--issuer", ISSUER)


@pytest.fixture(autouse=True)
def _no_keyswap_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KEYSWAP_"):
            monkeypatch.delenv(name)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stop_with_sigterm(origin: KeyswapProcess) -> str:
    """SIGTERM ``origin``, require it to exit 0 within 10 s, and return its log."""
    origin.process.send_signal(signal.SIGTERM)
    try:
        code = origin.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"granian did not stop on SIGTERM:\n{origin.stop()}") from None
    log = origin.stop()
    assert code == 0, log
    return log


# -- the real `keyswap origin --server granian` process ------------------------------------------


@pytest.mark.slow
def test_granian_answers_a_valid_token_with_its_claims_and_no_token_with_401_then_stops_cleanly(
    jwks_server: JWKSServer,
) -> None:
    key = rsa_key("granian-rsa")
    jwks_server.serve(jwks(key))
    port = free_port()
    args = [
        "origin",
        *("--jwks-url", jwks_server.url, "--issuer", ISSUER, "--audience", AUDIENCE),
        *("--algorithms", "RS256", "--port", str(port), "--server", "granian"),
        *("--log-level", "debug"),
    ]
    token_claims = claims(iss=ISSUER, aud=AUDIENCE, plan="gold")
    token = key.sign(token_claims)
    with running_keyswap(args, port=port) as origin:
        ok = httpx.get(origin.url + "/any/path?x=1", headers=bearer(token), timeout=5)
        assert ok.status_code == 200
        assert ok.headers["content-type"] == "application/json"
        assert ok.json() == token_claims

        anonymous = httpx.get(origin.url + "/any/path", timeout=5)
        assert anonymous.status_code == 401
        assert anonymous.text == "No token provided"
        assert anonymous.headers["www-authenticate"] == 'Bearer realm="keyswap"'

        log = stop_with_sigterm(origin)
    assert "Starting granian" in log
    # The verifier lived in the ASGI lifespan: started before serving, closed at shutdown.
    assert "keyswap.origin: verifier started" in log
    assert "keyswap.origin: verifier closed" in log
    assert log.count("keyswap origin on") == 1
    assert token not in log


@pytest.mark.slow
def test_granian_chosen_by_environment_answers_503_with_retry_after_while_keys_are_unavailable(
    jwks_server: JWKSServer,
) -> None:
    key = rsa_key("granian-down")
    jwks_server.serve(jwks(key), status=503)
    port = free_port()
    env = {
        "KEYSWAP_SERVER": "granian",
        "KEYSWAP_JWKS_URL": jwks_server.url,
        "KEYSWAP_ISSUER": ISSUER,
        "KEYSWAP_PORT": str(port),
    }
    with running_keyswap(["origin"], port=port, env=env) as origin:
        token = key.sign(claims(iss=ISSUER, aud=None))
        down = httpx.get(origin.url + "/", headers=bearer(token), timeout=5)
        assert down.status_code == 503
        assert int(down.headers["retry-after"]) >= 1
        assert down.text == "Signing keys temporarily unavailable"
        log = stop_with_sigterm(origin)
    assert "Starting granian" in log


# -- choosing the server -------------------------------------------------------------------------


def test_an_unknown_server_is_a_one_line_error() -> None:
    result = CliRunner().invoke(main, ["origin", *BASE, "--server", "nope"])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: Invalid value for '--server': 'nope' is not one of")


def test_an_unknown_server_from_the_environment_names_its_variable() -> None:
    result = CliRunner().invoke(main, ["origin", *BASE], env={"KEYSWAP_SERVER": "hypercorn"})
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith("(from KEYSWAP_SERVER)")


def test_help_lists_the_server_choice() -> None:
    result = CliRunner().invoke(main, ["origin", "--help"])
    assert result.exit_code == 0
    assert "--server [uvicorn|granian]" in result.output


@pytest.mark.slow
def test_granian_not_installed_is_a_one_line_error_with_status_2() -> None:
    # Failure injection: a None entry in sys.modules makes `granian` unimportable in that process.
    code = "import sys; sys.modules['granian'] = None; from keyswap.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "origin", *BASE, "--server", "granian"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("KEYSWAP_")},
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: --server granian needs granian, which is not installed "
        "(pip install 'keyswap[server]')"
    ]


# -- the factory's configuration through KEYSWAP_* -----------------------------------------------


def test_exported_settings_read_back_to_the_same_configuration() -> None:
    config = IssuerConfig(
        issuer=ISSUER,
        jwks_url="https://gw.test/jwks.json",
        audience=AUDIENCE,
        algorithms=("ES256", "EdDSA"),
        leeway=2.5,
        jwks_cache_ttl=60,
        jwks_cooldown=1.25,
    )
    environ: dict[str, str] = {}
    export_env(config, "api", environ)
    assert config_from_env(environ) == (config, "api")


@pytest.mark.parametrize(
    "config",
    [
        IssuerConfig(
            issuer="https://id.example.com/realms/shop",
            discover=True,
            audience=AUDIENCE,
            profile="rfc9068",
            required_claims=("sub", "tenant"),
        ),
        IssuerConfig(issuer=ISSUER, jwks_url="https://gw.test/jwks.json", required_claims=("exp",)),
    ],
)
def test_discovery_profile_and_required_claims_read_back(config: IssuerConfig) -> None:
    environ = {"KEYSWAP_JWKS_URL": "https://stale.test/jwks"}
    export_env(config, "api", environ)
    assert config_from_env(environ) == (config, "api")


def test_exporting_without_an_audience_removes_a_stale_audience_variable() -> None:
    config = IssuerConfig(issuer=ISSUER, jwks_url="https://gw.test/jwks.json")
    environ = {"KEYSWAP_AUDIENCE": "https://stale.test"}
    export_env(config, "keyswap", environ)
    assert "KEYSWAP_AUDIENCE" not in environ
    assert config_from_env(environ)[0].audience is None


def test_only_the_required_variables_give_the_command_defaults() -> None:
    config, realm = config_from_env(
        {"KEYSWAP_JWKS_URL": "https://gw.test/jwks.json", "KEYSWAP_ISSUER": ISSUER}
    )
    assert config.algorithms == ("RS256", "PS256", "ES256", "EdDSA")
    assert (config.leeway, config.jwks_cache_ttl, config.jwks_cooldown) == (30.0, 300.0, 10.0)
    assert (config.audience, realm) == (None, "keyswap")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "KEYSWAP_JWKS_URL and KEYSWAP_ISSUER must be set"),
        ({"KEYSWAP_JWKS_URL": "https://gw.test/j"}, "KEYSWAP_ISSUER must be set"),
        (
            {"KEYSWAP_JWKS_URL": "https://gw.test/j", "KEYSWAP_ISSUER": "x", "KEYSWAP_LEEWAY": "a"},
            "KEYSWAP_LEEWAY must be a number of seconds",
        ),
        (
            {
                "KEYSWAP_JWKS_URL": "https://gw.test/j",
                "KEYSWAP_ISSUER": "x",
                "KEYSWAP_JWKS_COOLDOWN": "nan",
            },
            "KEYSWAP_JWKS_COOLDOWN must be a finite number",
        ),
        (
            {
                "KEYSWAP_JWKS_URL": "https://gw.test/j",
                "KEYSWAP_ISSUER": "x",
                "KEYSWAP_LEEWAY": "999",
            },
            "leeway must be between 0 and 300",
        ),
        (
            {
                "KEYSWAP_JWKS_URL": "https://gw.test/j",
                "KEYSWAP_ISSUER": "x",
                "KEYSWAP_ALGORITHMS": "HS256",
            },
            "algorithms must be a non-empty subset",
        ),
        ({"KEYSWAP_JWKS_URL": "file:///etc/passwd", "KEYSWAP_ISSUER": "x"}, "http"),
        ({"KEYSWAP_ISSUER": "https://id.test", "KEYSWAP_DISCOVER": "maybe"}, "true or false"),
        (
            {"KEYSWAP_ISSUER": "https://i.test", "KEYSWAP_DISCOVER": "1", "KEYSWAP_JWKS_URL": "x"},
            "set KEYSWAP_JWKS_URL or KEYSWAP_DISCOVER=true, not both",
        ),
        ({"KEYSWAP_ISSUER": "https://id.test"}, "KEYSWAP_JWKS_URL must be set \\(or"),
        (
            {
                "KEYSWAP_JWKS_URL": "https://gw.test/j",
                "KEYSWAP_ISSUER": "x",
                "KEYSWAP_PROFILE": "x",
            },
            "profile must be one of rfc9068",
        ),
    ],
)
def test_bad_variables_raise_config_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_env(environ)


async def test_the_factory_builds_the_protected_app_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYSWAP_JWKS_URL", "http://127.0.0.1:9/jwks.json")
    monkeypatch.setenv("KEYSWAP_ISSUER", ISSUER)
    monkeypatch.setenv("KEYSWAP_REALM", "orders")
    app = app_from_env()
    sent = await call_http(app)
    assert (sent.status, sent.body) == (401, b"No token provided")
    assert sent.header("www-authenticate") == 'Bearer realm="orders"'
    lifespan = [m["type"] for m in await run_lifespan(app)]  # starts, then closes the verifier
    assert lifespan == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_the_factory_refuses_a_missing_issuer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSWAP_JWKS_URL", "https://gw.test/jwks.json")
    with pytest.raises(ConfigError, match="KEYSWAP_ISSUER must be set"):
        app_from_env()
