"""Discovery: the JWKS URL read from the issuer's metadata document (OpenID Connect, RFC 8414).

Against the project's real JWKS server on 127.0.0.1, made to serve metadata documents on their paths
(tests/verifier/test_oidc_provider.py does the same against a real OpenID provider when Node is there).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from keyswap.errors import ConfigError, JWKSFetchError, KeysUnavailable
from keyswap.verifier.discovery import (
    Discovery,
    check_discovery_issuer,
    jwks_uri_from_metadata,
    metadata_urls,
)
from keyswap.verifier.fetch import JWKSFetcher
from keyswap.verifier.metrics import Metrics
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.jwks_server import Behaviour, JWKSServer
from tests.support.keys import claims, jwks, rsa_key

AUD = "https://api.test"
KEY = rsa_key("disc-k1")
OPENID = "/.well-known/openid-configuration"
OAUTH = "/.well-known/oauth-authorization-server"
JWKS_PATH = "/.well-known/jwks.json"


def metadata(server: JWKSServer, issuer: str, **extra: Any) -> Behaviour:
    return Behaviour(document={"issuer": issuer, "jwks_uri": server.url, **extra})


@pytest.fixture
def provider(jwks_server: JWKSServer) -> JWKSServer:
    """The server publishes KEY and a metadata document naming its base URL as the issuer."""
    jwks_server.serve(jwks(KEY))
    jwks_server.paths[OPENID] = metadata(jwks_server, jwks_server.base)
    return jwks_server


def discovering(issuer: str, **options: Any) -> Verifier:
    return Verifier(IssuerConfig(issuer, discover=True, audience=AUD, **options))


def token(issuer: str) -> str:
    return KEY.sign(claims(iss=issuer, aud=AUD))


def test_the_jwks_url_is_read_from_the_openid_configuration(provider: JWKSServer) -> None:
    with discovering(provider.base) as verifier:
        assert verifier.verify_sync(token(provider.base))["iss"] == provider.base
        assert verifier.keyset(provider.base).url == provider.url
    assert (provider.count(OPENID), provider.count()) == (1, 1)


async def test_the_async_path_discovers_too(provider: JWKSServer) -> None:
    with discovering(provider.base) as verifier:
        assert (await verifier.verify(token(provider.base)))["iss"] == provider.base


def test_rfc8414_metadata_is_found_by_path_insertion(jwks_server: JWKSServer) -> None:
    issuer = jwks_server.base + "/tenant-a"
    jwks_server.serve(jwks(KEY))
    jwks_server.paths["/tenant-a" + OPENID] = Behaviour(status=404)
    jwks_server.paths[OAUTH + "/tenant-a"] = metadata(jwks_server, issuer)
    with discovering(issuer) as verifier:
        assert verifier.verify_sync(token(issuer))["iss"] == issuer
    assert jwks_server.count("/tenant-a" + OPENID) == 1  # OpenID Connect first
    assert jwks_server.count(OAUTH + "/tenant-a") == 1


@pytest.mark.parametrize(
    "named",
    [
        "{base}/",  # a trailing slash is another issuer
        "{base}/other",
        "HTTP://127.0.0.1",
        None,
        ["{base}"],
    ],
)
def test_a_document_naming_another_issuer_is_refused(
    provider: JWKSServer, caplog: pytest.LogCaptureFixture, named: Any
) -> None:
    if isinstance(named, str):
        named = named.format(base=provider.base)
    elif isinstance(named, list):
        named = [provider.base]
    provider.paths[OPENID] = Behaviour(document={"issuer": named, "jwks_uri": provider.url})
    metrics = Metrics()
    caplog.set_level(logging.DEBUG, "keyswap")
    verifier = Verifier(
        IssuerConfig(provider.base, discover=True, audience=AUD),
        metrics=metrics,
        fetcher=JWKSFetcher(timeout=2),
    )
    with verifier, pytest.raises(KeysUnavailable) as caught:
        verifier.verify_sync(token(provider.base))
    assert caught.value.status == 503
    assert caught.value.retry_after >= 1
    assert provider.count() == 0  # the JWKS it names is never fetched
    name = verifier.keyset(provider.base).name
    assert metrics.get("jwks_fetch_failures", issuer=name, reason="issuer_mismatch") >= 1
    assert "must match exactly" in caplog.text


def test_metadata_that_is_not_found_anywhere_is_a_clear_failure(jwks_server: JWKSServer) -> None:
    jwks_server.serve({"error": "nope"}, status=404)
    discovery = Discovery(jwks_server.base, fetcher=JWKSFetcher(timeout=2))
    with pytest.raises(JWKSFetchError) as caught:
        discovery.jwks_url()
    assert caught.value.kind == "discovery"
    assert caught.value.reason == (
        f"no metadata for issuer {jwks_server.base}: OpenID metadata fetch from "
        f"{jwks_server.base}{OPENID}: HTTP 404; OAuth metadata fetch from {jwks_server.base}{OAUTH}"
        ": HTTP 404"
    )


def test_an_unreachable_provider_is_not_asked_twice(jwks_server: JWKSServer) -> None:
    jwks_server.paths[OPENID] = Behaviour(body=b"<html>login</html>", content_type="text/html")
    discovery = Discovery(jwks_server.base, fetcher=JWKSFetcher(timeout=2))
    with pytest.raises(JWKSFetchError, match=r"OpenID metadata fetch .* HTML page") as caught:
        discovery.jwks_url()
    assert caught.value.kind == "not_json"
    assert jwks_server.count(OAUTH) == 0  # only a non-2xx status sends it to the RFC 8414 path


def test_the_found_jwks_uri_is_kept_until_a_jwks_fetch_fails(provider: JWKSServer) -> None:
    with discovering(provider.base) as verifier:
        keyset = verifier.keyset(provider.base)
        keyset.refresh_sync()
        keyset.refresh_sync()
        assert provider.count(OPENID) == 1  # cached: key set refreshes do not re-read it
        provider.behaviour = Behaviour(status=500)
        with pytest.raises(JWKSFetchError):
            keyset.refresh_sync()
        provider.serve(jwks(KEY))
        keyset.refresh_sync()
        assert provider.count(OPENID) == 2  # after the failure, read again


def test_a_moved_jwks_uri_is_followed(provider: JWKSServer) -> None:
    with discovering(provider.base) as verifier:
        keyset = verifier.keyset(provider.base)
        keyset.refresh_sync()
        provider.serve({"error": "moved"}, status=404)  # the old path is gone...
        provider.paths["/v2/keys"] = Behaviour(document=jwks(KEY))
        provider.paths[OPENID] = Behaviour(  # ...and the metadata names the new one
            document={"issuer": provider.base, "jwks_uri": provider.base + "/v2/keys"}
        )
        with pytest.raises(JWKSFetchError):
            keyset.refresh_sync()
        keyset.refresh_sync()
        assert keyset.url == provider.base + "/v2/keys"
        assert verifier.verify_sync(token(provider.base))["iss"] == provider.base


def test_a_failed_rediscovery_keeps_the_last_jwks_uri(
    provider: JWKSServer, caplog: pytest.LogCaptureFixture
) -> None:
    with discovering(provider.base) as verifier:
        keyset = verifier.keyset(provider.base)
        keyset.refresh_sync()
        provider.behaviour = Behaviour(status=500)
        with pytest.raises(JWKSFetchError):
            keyset.refresh_sync()
        provider.serve(jwks(KEY))
        provider.paths[OPENID] = Behaviour(status=503)
        with caplog.at_level(logging.WARNING, "keyswap.verifier.discovery"):
            keyset.refresh_sync()  # the metadata is down, the JWKS is not
        assert "keeping jwks_uri" in caplog.text
        assert keyset.url == provider.url


def test_discovery_at_a_cold_start_recovers_by_itself(jwks_server: JWKSServer) -> None:
    jwks_server.serve(jwks(KEY))
    jwks_server.paths[OPENID] = Behaviour(status=503)  # the provider is still starting
    with discovering(jwks_server.base) as verifier:
        with pytest.raises(KeysUnavailable) as caught:
            verifier.verify_sync(token(jwks_server.base))
        assert caught.value.retry_after >= 1
        jwks_server.paths[OPENID] = metadata(jwks_server, jwks_server.base)
        keyset = verifier.keyset(jwks_server.base)
        deadline = time.monotonic() + 10  # background retries come every 0.5-1 s while cold
        while not keyset.status().usable and time.monotonic() < deadline:
            time.sleep(0.05)
        assert verifier.verify_sync(token(jwks_server.base))["iss"] == jwks_server.base


# -- the rules, one function at a time -------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "urls"),
    [
        (
            "https://login.example.com",
            (
                "https://login.example.com/.well-known/openid-configuration",
                "https://login.example.com/.well-known/oauth-authorization-server",
            ),
        ),
        (
            "https://login.example.com/",
            (
                "https://login.example.com/.well-known/openid-configuration",
                "https://login.example.com/.well-known/oauth-authorization-server",
            ),
        ),
        (
            "https://kc.example.com/realms/shop",
            (
                "https://kc.example.com/realms/shop/.well-known/openid-configuration",
                "https://kc.example.com/.well-known/oauth-authorization-server/realms/shop",
            ),
        ),
        (
            "https://a.example:8443/t/v2.0/",
            (
                "https://a.example:8443/t/v2.0/.well-known/openid-configuration",
                "https://a.example:8443/.well-known/oauth-authorization-server/t/v2.0",
            ),
        ),
        (
            "http://[::1]:9000/x",
            (
                "http://[::1]:9000/x/.well-known/openid-configuration",
                "http://[::1]:9000/.well-known/oauth-authorization-server/x",
            ),
        ),
    ],
)
def test_metadata_urls(issuer: str, urls: tuple[str, str]) -> None:
    assert metadata_urls(issuer) == urls


@pytest.mark.parametrize(
    "issuer",
    ["https://id.example.com", "http://127.0.0.1:8080", "http://localhost", "http://[::1]"],
)
def test_issuers_usable_for_discovery(issuer: str) -> None:
    check_discovery_issuer(issuer)
    IssuerConfig(issuer, discover=True)


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        ("http://id.example.com", "https:// issuer \\(http only on loopback\\)"),
        ("http://10.0.0.1", "http only on loopback"),
        ("issuer.test", "needs an https:// issuer URL"),
        ("ftp://id.example.com", "needs an https:// issuer URL"),
        ("https://id.example.com/?tenant=1", "without query or fragment"),
        ("https://id.example.com/#x", "without query or fragment"),
    ],
)
def test_issuers_refused_for_discovery(issuer: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IssuerConfig(issuer, discover=True)


def test_a_jwks_url_or_discovery_not_both_nor_neither() -> None:
    with pytest.raises(ConfigError, match="not both"):
        IssuerConfig("https://id.example.com", "https://id.example.com/jwks", discover=True)
    with pytest.raises(ConfigError, match="jwks_url is required \\(or discover=True"):
        IssuerConfig("https://id.example.com")


@pytest.mark.parametrize(
    ("issuer", "jwks_uri"),
    [
        ("https://id.example.com", "https://id.example.com/keys"),
        ("https://id.example.com", "https://keys.example.net/jwks"),  # another host: its choice
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/jwks"),
        ("http://localhost:8080", "http://127.0.0.1:9/jwks"),
    ],
)
def test_jwks_uris_accepted(issuer: str, jwks_uri: str) -> None:
    document = {"issuer": issuer, "jwks_uri": jwks_uri}
    assert jwks_uri_from_metadata(document, issuer, issuer + OPENID) == jwks_uri


@pytest.mark.parametrize(
    ("issuer", "document", "kind"),
    [
        ("https://id.example.com", {"jwks_uri": "http://id.example.com/keys"}, "bad_jwks_uri"),
        ("http://127.0.0.1", {"jwks_uri": "http://keys.example.net/jwks"}, "bad_jwks_uri"),
        ("https://id.example.com", {"jwks_uri": "file:///etc/passwd"}, "bad_jwks_uri"),
        ("https://id.example.com", {"jwks_uri": "/keys"}, "bad_jwks_uri"),
        ("https://id.example.com", {"jwks_uri": 7}, "bad_jwks_uri"),
        ("https://id.example.com", {}, "bad_jwks_uri"),
        ("https://id.example.com", {"issuer": "https://evil.example"}, "issuer_mismatch"),
    ],
)
def test_jwks_uris_refused(issuer: str, document: dict[str, Any], kind: str) -> None:
    document = {"issuer": issuer} | document
    with pytest.raises(JWKSFetchError) as caught:
        jwks_uri_from_metadata(document, issuer, issuer + OPENID)
    assert caught.value.kind == kind


@pytest.mark.parametrize("document", [[], "x", None])
def test_a_document_that_is_not_an_object_is_refused(document: Any) -> None:
    with pytest.raises(JWKSFetchError, match="not a JSON object"):
        jwks_uri_from_metadata(document, "https://id.example.com", "https://id.example.com")


def test_an_error_quotes_at_most_a_little_of_what_the_provider_sent() -> None:
    document = {"issuer": "x" * 10_000, "jwks_uri": "https://id.example.com/k"}
    with pytest.raises(JWKSFetchError) as caught:
        jwks_uri_from_metadata(document, "https://id.example.com", "https://id.example.com")
    assert len(caught.value.reason) < 400
