from __future__ import annotations

import json
from typing import Any

import pytest

from keyswap.errors import ConfigError
from keyswap.gateway.wellknown import (
    JWKS_PATH,
    OPENID_CONFIGURATION_PATH,
    WellKnown,
    issuer_for,
    public_jwk,
)
from tests.support.keys import ec_key, ed_key, rsa_key

ISSUER = "http://127.0.0.1:8080/__keyswap/issuer"


class Jwks:
    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys

    def __call__(self) -> dict[str, Any]:
        return {"keys": self.keys}


def _private_rsa_jwk() -> dict[str, Any]:
    jwk = rsa_key("r1").public_jwk()
    jwk.update({"d": "secret-d", "p": "secret-p", "q": "secret-q", "dp": "x", "dq": "y", "qi": "z"})
    return jwk


@pytest.mark.parametrize(
    ("public_url", "issuer"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/__keyswap/issuer"),
        ("https://api.example.com/", "https://api.example.com/__keyswap/issuer"),
        ("https://example.com/edge", "https://example.com/edge/__keyswap/issuer"),
    ],
)
def test_issuer_is_the_public_url_plus_the_issuer_path(public_url: str, issuer: str) -> None:
    assert issuer_for(public_url) == issuer


@pytest.mark.parametrize(
    "public_url",
    ["", "127.0.0.1:8080", "ftp://x", "http://", "http:///x", "http://h/?q=1", "http://h#f"],
)
def test_a_public_url_that_is_not_absolute_http_is_a_config_error(public_url: str) -> None:
    with pytest.raises(ConfigError):
        issuer_for(public_url)


def test_public_jwk_drops_every_private_member() -> None:
    out = public_jwk(_private_rsa_jwk())
    assert set(out) == {"kty", "kid", "use", "alg", "n", "e"}


def test_a_symmetric_key_is_never_published() -> None:
    with pytest.raises(ConfigError):
        public_jwk({"kty": "oct", "kid": "s", "k": "c2VjcmV0"})


def test_jwks_document_lists_public_keys_with_cache_headers() -> None:
    keys = [
        _private_rsa_jwk(),
        {"kty": "oct", "kid": "s", "k": "c2VjcmV0"},
        rsa_key("r2", slot=1).public_jwk(),
    ]
    wellknown = WellKnown(ISSUER, Jwks(keys), algorithm="RS256", max_age=300)
    wellknown.refresh()

    doc = wellknown.lookup("GET", JWKS_PATH)

    headers = dict(doc.headers)
    assert doc.status == 200
    assert headers[b"content-type"] == b"application/jwk-set+json"
    assert headers[b"cache-control"] == b"public, max-age=300"
    assert int(headers[b"content-length"]) == len(doc.body)
    published = json.loads(doc.body)["keys"]
    assert [k["kid"] for k in published] == ["r1", "r2"]
    assert b"secret" not in doc.body


def test_openid_configuration_names_issuer_jwks_uri_and_algorithms() -> None:
    keys = [ec_key("e1").public_jwk(), ed_key("d1").public_jwk()]
    wellknown = WellKnown(ISSUER, Jwks(keys), algorithm="ES256")
    wellknown.refresh()

    doc = json.loads(wellknown.lookup("GET", OPENID_CONFIGURATION_PATH).body)

    assert doc["issuer"] == ISSUER
    assert doc["jwks_uri"] == ISSUER + "/.well-known/jwks.json"
    assert doc["id_token_signing_alg_values_supported"] == ["ES256", "EdDSA"]


def test_refresh_picks_up_a_rotated_key_set() -> None:
    jwks = Jwks([ec_key("old").public_jwk()])
    wellknown = WellKnown(ISSUER, jwks, algorithm="ES256")
    wellknown.refresh()
    jwks.keys = [ec_key("old").public_jwk(), ec_key("new").public_jwk()]

    assert b'"new"' not in wellknown.lookup("GET", JWKS_PATH).body
    wellknown.refresh()
    assert b'"new"' in wellknown.lookup("GET", JWKS_PATH).body


def test_unknown_reserved_paths_are_404_and_other_methods_405() -> None:
    wellknown = WellKnown(ISSUER, Jwks([]), algorithm="ES256")
    wellknown.refresh()
    assert wellknown.lookup("GET", "/__keyswap/issuer/other").status == 404
    assert wellknown.lookup("GET", JWKS_PATH + "/").status == 404
    assert wellknown.lookup("POST", JWKS_PATH).status == 405
    assert wellknown.lookup("HEAD", JWKS_PATH).status == 200
    assert wellknown.lookup("GET", "/__keyswap/health").body == b"ok"
