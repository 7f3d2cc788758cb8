"""Which requests the gateway binds, and reading their bodies ahead (keyswap.gateway.binding)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from keyswap.errors import ConfigError
from keyswap.gateway.binding import (
    BindPolicy,
    BindRule,
    BodyTooLarge,
    ClientLeft,
    ReadBody,
    binding_claims,
    parse_bind_route,
    read_body,
)
from keyswap.verifier.binding import UNBOUND_BODY, content_digest, query_hash


class TestParseBindRoute:
    def test_method_and_prefix(self) -> None:
        assert parse_bind_route("POST:/pay") == BindRule(frozenset({"POST"}), "/pay")

    def test_any_method_several_methods_and_the_body_opt_out(self) -> None:
        assert parse_bind_route("*:/upload/:unbound-body") == BindRule(None, "/upload", True)
        assert parse_bind_route("get,Head:/") == BindRule(frozenset({"GET", "HEAD"}), "/")

    @pytest.mark.parametrize(
        "text", ["POST", "POST:pay", ":/pay", "PO ST:/x", "GET:/a:b", "GET:/a:unbound", "GET:/ x"]
    )
    def test_anything_else_is_a_config_error(self, text: str) -> None:
        with pytest.raises(ConfigError):
            parse_bind_route(text)


class TestPolicy:
    def test_nothing_is_bound_by_default(self) -> None:
        policy = BindPolicy()
        assert not policy.enabled
        assert policy.match("GET", b"/x") is None

    def test_bind_all_binds_every_request(self) -> None:
        rule = BindPolicy(bind_all=True).match("PATCH", b"/any/where")
        assert rule is not None
        assert not rule.unbound_body

    def test_prefixes_match_whole_segments_and_the_longest_wins(self) -> None:
        policy = BindPolicy(
            (parse_bind_route("*:/api"), parse_bind_route("POST:/api/upload:unbound-body"))
        )
        assert policy.match("GET", b"/apix") is None
        assert policy.match("GET", b"/api") is not None
        upload = policy.match("POST", b"/api/upload/1")
        assert upload is not None
        assert upload.unbound_body
        other = policy.match("PUT", b"/api/upload/1")
        assert other is not None
        assert not other.unbound_body

    def test_a_route_opt_out_applies_under_bind_all(self) -> None:
        policy = BindPolicy((parse_bind_route("POST:/upload:unbound-body"),), bind_all=True)
        upload = policy.match("POST", b"/upload")
        assert upload is not None
        assert upload.unbound_body

    @pytest.mark.parametrize(("max_body", "ttl"), [(-1, 30), (1 << 31, 30), (10, 0), (10, 3601)])
    def test_bad_limits_are_config_errors(self, max_body: int, ttl: int) -> None:
        with pytest.raises(ConfigError):
            BindPolicy(max_body=max_body, ttl=ttl)


def messages(*parts: bytes, disconnect: bool = False) -> Any:
    queue: list[dict[str, Any]] = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    if disconnect:
        queue[-1] = {"type": "http.disconnect"}

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


def read(parts: Iterable[bytes], **kw: Any) -> ReadBody:
    return asyncio.run(read_body(messages(*parts), **kw))


class TestReadBody:
    def test_a_body_within_the_limit_is_read_whole(self) -> None:
        got = read([b"ab", b"cd"], declared=None, limit=4, unbound_ok=False)
        assert got == ReadBody(b"abcd", True)

    def test_over_the_limit_it_is_refused(self) -> None:
        with pytest.raises(BodyTooLarge):
            read([b"ab", b"cde"], declared=None, limit=4, unbound_ok=False)

    def test_a_declared_length_over_the_limit_is_refused_before_reading(self) -> None:
        async def never() -> dict[str, Any]:
            raise AssertionError("read")

        with pytest.raises(BodyTooLarge):
            asyncio.run(read_body(never, declared=5, limit=4, unbound_ok=False))
        got = asyncio.run(read_body(never, declared=5, limit=4, unbound_ok=True))
        assert got == ReadBody(b"", False)

    def test_with_the_opt_out_what_was_read_comes_back_incomplete(self) -> None:
        got = read([b"abc", b"de", b"f"], declared=None, limit=4, unbound_ok=True)
        assert got == ReadBody(b"abcde", False)

    def test_a_client_leaving_is_reported(self) -> None:
        with pytest.raises(ClientLeft):
            asyncio.run(
                read_body(
                    messages(b"ab", b"", disconnect=True), declared=None, limit=4, unbound_ok=False
                )
            )


class TestClaims:
    def base(self, **kw: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "method": "POST",
            "scheme": "http",
            "authority": "origin:80",
            "path": "/p",
            "query": b"",
            "body": None,
            "max_body": 10,
        }
        args.update(kw)
        return binding_claims(**args)

    def test_method_and_url_always(self) -> None:
        assert self.base() == {"htm": "POST", "htu": "http://origin/p"}

    def test_query_hash_and_digest_when_present(self) -> None:
        claims = self.base(query=b"a=1", body=ReadBody(b"hi", True))
        assert claims["htq"] == query_hash(b"a=1")
        assert claims["htd"] == content_digest(b"hi")

    def test_an_empty_body_is_no_body(self) -> None:
        assert "htd" not in self.base(body=ReadBody(b"", True))

    def test_an_incomplete_body_is_marked_unbound(self) -> None:
        assert self.base(body=ReadBody(b"x" * 11, False))["htd"] == UNBOUND_BODY


class TestCommandLine:
    """Bad binding flags are one ``Error:`` line and exit status 2, before anything is served."""

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (("--bind-route", "POST"), "bind route must be METHOD:/prefix"),
            (("--bind-route", "GET:/a:unbound"), "bind route must be METHOD:/prefix"),
            (("--bind-ttl", "0"), "--bind-ttl"),
            (("--bind-max-body", "-1"), "--bind-max-body"),
            (("--token-format", "paseto"), "--token-format"),
        ],
    )
    def test_a_bad_binding_flag_is_a_usage_error(
        self, tmp_path: Any, args: tuple[str, ...], expected: str
    ) -> None:
        import os

        from click.testing import CliRunner

        from keyswap.gateway.cli import gateway as gateway_command

        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSWAP_")}
        result = CliRunner().invoke(
            gateway_command,
            ["--upstream", "http://127.0.0.1:9", "--db", str(tmp_path / "k.db"), *args],
            env=env,
        )
        assert result.exit_code == 2, result.output
        assert expected in result.output
        assert not (tmp_path / "k.db").exists()


def test_bound_mode_creates_es256_keys_when_no_alg_is_given(tmp_path: Any) -> None:
    """ES256 signs and verifies faster than EdDSA and RS256 together (BENCHMARKS.md section 12)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    from keyswap.gateway.binding import BOUND_DEFAULT_ALG
    from keyswap.gateway.wellknown import JWKS_PATH
    from tests.support.asgi_server import free_port
    from tests.support.running_gateway import eventually

    assert BOUND_DEFAULT_ALG == "ES256"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSWAP_")}
    argv = [str(Path(sys.executable).with_name("keyswap")), "gateway", "--bind-request"]
    argv += ["--upstream", f"http://127.0.0.1:{free_port()}", "--port", str(port)]
    argv += ["--db", str(tmp_path / "k.db")]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}{JWKS_PATH}"
    try:

        def serving() -> bool:
            try:
                return httpx.get(url).status_code == 200
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()
                return False

        eventually(serving, timeout=20)
        assert {k["alg"] for k in httpx.get(url).json()["keys"]} == {"ES256"}
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
