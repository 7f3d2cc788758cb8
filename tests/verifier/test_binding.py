"""The binding claims as both sides compute them (keyswap.verifier.binding)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from keyswap.errors import ConfigError, RequestMismatch, UnboundToken
from keyswap.verifier.binding import (
    UNBOUND_BODY,
    PublicBase,
    canonical_htu,
    check_body,
    check_request,
    content_digest,
    is_bound,
    query_hash,
)


class TestCanonicalHtu:
    def test_scheme_and_host_are_lower_cased_and_the_default_port_dropped(self) -> None:
        assert (
            canonical_htu("HTTPS", "API.Example.COM:443", "/a/B") == "https://api.example.com/a/B"
        )
        assert canonical_htu("http", "example.com:80", "/") == "http://example.com/"

    def test_another_port_is_kept(self) -> None:
        assert canonical_htu("http", "127.0.0.1:8080", "/x") == "http://127.0.0.1:8080/x"

    def test_an_ipv6_literal_keeps_its_brackets(self) -> None:
        assert canonical_htu("http", "[::1]:80", "/x") == "http://[::1]/x"
        assert canonical_htu("http", "[::1]:81", "/x") == "http://[::1]:81/x"

    def test_the_path_is_kept_byte_for_byte_and_an_empty_one_is_slash(self) -> None:
        assert canonical_htu("http", "h", "/a%2Fb/%7e") == "http://h/a%2Fb/%7e"
        assert canonical_htu("http", "h", "") == "http://h/"


def test_query_hash_is_base64url_sha256_of_the_raw_query() -> None:
    digest = hashlib.sha256(b"a=1&b=%20").digest()
    assert query_hash(b"a=1&b=%20") == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_content_digest_is_the_rfc9530_sha256_value() -> None:
    # RFC 9530 Appendix D: {"hello": "world"} with a trailing newline.
    body = b'{"hello": "world"}\n'
    assert content_digest(body) == "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"


def bound(**extra: object) -> dict[str, object]:
    claims: dict[str, object] = {"htm": "POST", "htu": "http://h/items", "jti": "j1"}
    claims.update(extra)
    return claims


class TestCheckRequest:
    def test_the_request_it_was_minted_for_passes(self) -> None:
        check_request(
            bound(htq=query_hash(b"a=1")), method="POST", htu="http://h/items", query=b"a=1"
        )

    @pytest.mark.parametrize(
        ("method", "htu", "query"),
        [
            ("PUT", "http://h/items", b"a=1"),
            ("POST", "http://h/items/2", b"a=1"),
            ("POST", "http://other/items", b"a=1"),
            ("POST", "http://h/items", b"a=2"),
            ("POST", "http://h/items", b""),
        ],
    )
    def test_any_other_request_is_refused(self, method: str, htu: str, query: bytes) -> None:
        with pytest.raises(RequestMismatch) as caught:
            check_request(bound(htq=query_hash(b"a=1")), method=method, htu=htu, query=query)
        assert caught.value.detail  # says which part, for the logs
        assert "bound to this request" in caught.value.reason  # the generic text the client sees

    def test_a_query_the_token_does_not_bind_is_refused(self) -> None:
        with pytest.raises(RequestMismatch):
            check_request(bound(), method="POST", htu="http://h/items", query=b"admin=1")

    def test_a_token_without_binding_claims_is_unbound(self) -> None:
        with pytest.raises(UnboundToken):
            check_request({"jti": "x"}, method="GET", htu="http://h/", query=b"")
        assert not is_bound({"jti": "x"})
        assert is_bound(bound())


class TestCheckBody:
    def test_the_digested_body_passes_and_any_change_is_refused(self) -> None:
        claims = bound(htd=content_digest(b"hello"))
        check_body(claims, b"hello")
        for other in (b"hellO", b"hello ", b""):
            with pytest.raises(RequestMismatch):
                check_body(claims, other)

    def test_a_body_the_token_does_not_bind_is_refused(self) -> None:
        with pytest.raises(RequestMismatch):
            check_body(bound(), b"smuggled")
        check_body(bound(), b"")

    def test_an_unbound_body_is_accepted_as_the_token_says(self) -> None:
        check_body(bound(htd=UNBOUND_BODY), b"anything")


class TestPublicBase:
    def test_the_stated_url_replaces_scheme_host_and_adds_its_path(self) -> None:
        base = PublicBase("HTTPS://Edge.Example:443/api/")
        scope = {"raw_path": b"/items", "path": "/items", "headers": [(b"host", b"internal:9")]}
        assert base.htu(scope) == "https://edge.example/api/items"

    def test_without_a_url_the_request_host_and_scheme_are_used(self) -> None:
        scope = {
            "scheme": "http",
            "path": "/x",
            "headers": [(b"host", b"127.0.0.1:8000")],
        }
        assert PublicBase().htu(scope) == "http://127.0.0.1:8000/x"

    @pytest.mark.parametrize(
        ("scheme", "host", "path"),
        [
            ("HTTP", b"Origin.Test:80", b"/A/b"),
            ("https", b"origin.test:443", b""),
            ("http", b"[::1]:8080", b"/%2e%2E/x"),
            ("http", b"h:0080", b"/x"),
        ],
    )
    def test_the_remembered_host_gives_canonical_htu_every_time(
        self, scheme: str, host: bytes, path: bytes
    ) -> None:
        base = PublicBase()
        scope = {"scheme": scheme, "path": "", "raw_path": path, "headers": [(b"host", host)]}
        expected = canonical_htu(scheme, host.decode(), path.decode())
        assert base.htu(scope) == expected
        assert base.htu(scope) == expected  # the second time from the remembered base

    def test_remembered_hosts_are_bounded(self) -> None:
        base = PublicBase()
        for i in range(200):
            scope = {"scheme": "http", "path": "/", "headers": [(b"host", f"h{i}".encode())]}
            assert base.htu(scope) == f"http://h{i}/"
        assert len(base._bases) <= 64

    @pytest.mark.parametrize(
        "url", ["ftp://h", "http://h/?q=1", "http://u:p@h", "http:///nohost", "http://h:x"]
    )
    def test_a_bad_public_url_is_a_config_error(self, url: str) -> None:
        with pytest.raises(ConfigError):
            PublicBase(url)
