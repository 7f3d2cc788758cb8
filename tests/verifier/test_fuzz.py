"""Property-based fuzzing: whatever arrives as a token, the verifier raises an InvalidToken, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyswap.errors import InvalidToken, JWKSFetchError
from keyswap.verifier.jwk import parse_jwks
from keyswap.verifier.jws import SUPPORTED_ALGORITHMS, b64url_decode, parse_compact
from keyswap.verifier.verify import IssuerConfig, Verifier
from tests.support.jwks_server import running_jwks_server
from tests.support.keys import TestKey as SigningKey
from tests.support.keys import b64u, claims, ec_key, ed_key, jwks, rsa_key

NOW = 1_700_000_000.0
ISS = "https://issuer.test"
AUD = "https://api.test"
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

KEYS = [rsa_key("rsa-1"), ec_key("ec-1"), ed_key("ed-1")]


@pytest.fixture(scope="module")
def verifier() -> Iterator[Verifier]:
    with running_jwks_server() as server:
        server.serve(jwks(*KEYS))
        config = IssuerConfig(
            ISS,
            server.url,
            audience=AUD,
            algorithms=tuple(SUPPORTED_ALGORITHMS),
            jwks_cooldown=3600,  # unknown kids never refetch during the run
        )
        v = Verifier(config, clock=lambda: NOW)
        v.keyset(ISS).refresh_sync()
        yield v
        v.close()


def valid_tokens() -> list[str]:
    return [k.sign(claims(iss=ISS, aud=AUD, now=NOW, jti=k.kid)) for k in KEYS]


def test_fuzz_baseline_tokens_are_valid(verifier: Verifier) -> None:
    for token in valid_tokens():
        assert verifier.verify_sync(token)["iss"] == ISS


def expect_invalid(verifier: Verifier, token: Any) -> None:
    try:
        verifier.verify_sync(token)
    except InvalidToken:
        return
    raise AssertionError("a fuzzed token was accepted")


@FUZZ
@given(st.text())
def test_any_text_raises_only_invalid_token(verifier: Verifier, text: str) -> None:
    expect_invalid(verifier, text)


@FUZZ
@given(st.binary())
def test_any_bytes_raise_only_invalid_token(verifier: Verifier, data: bytes) -> None:
    expect_invalid(verifier, data)
    expect_invalid(verifier, data.decode("latin-1"))


SEGMENT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/. ")


@FUZZ
@given(st.lists(SEGMENT, min_size=1, max_size=6))
def test_dotted_base64ish_segments_raise_only_invalid_token(
    verifier: Verifier, parts: list[str]
) -> None:
    expect_invalid(verifier, ".".join(parts))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
HEADER_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "PS256", "HS256", "none"]) | JSON_VALUES,
        "kid": st.sampled_from(["rsa-1", "ec-1", "ed-1", "", "x"]) | JSON_VALUES,
        "typ": JSON_VALUES,
        "crit": JSON_VALUES,
        "b64": JSON_VALUES,
    },
)
CLAIM_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "iss": st.sampled_from([ISS, ISS + "/", ""]) | JSON_VALUES,
        "aud": st.sampled_from([AUD, [AUD], [], [AUD, 1]]) | JSON_VALUES,
        "sub": st.sampled_from(["consumer-1", ""]) | JSON_VALUES,
        "exp": st.sampled_from([NOW + 60, NOW - 60, True, "1"]) | JSON_VALUES,
        "nbf": st.sampled_from([NOW - 60, NOW + 60]) | JSON_VALUES,
        "iat": st.sampled_from([NOW, NOW + 10**6]) | JSON_VALUES,
    },
)


@FUZZ
@given(st.sampled_from(KEYS), HEADER_VALUES, CLAIM_VALUES | JSON_VALUES)
def test_really_signed_fuzzed_headers_and_claims_are_accepted_only_when_valid(
    verifier: Verifier, key: SigningKey, header: Any, payload: Any
) -> None:
    h = b64u(json.dumps(header).encode())
    p = b64u(json.dumps(payload).encode())
    signing_input = f"{h}.{p}"
    token = f"{signing_input}.{b64u(key.raw_sign(signing_input.encode()))}"
    try:
        result = verifier.verify_sync(token)
    except InvalidToken:
        return
    # Accepted: then it really is a valid token for this configuration.
    assert result == payload
    assert header["alg"] == key.alg
    assert header["kid"] == key.kid
    assert payload["iss"] == ISS
    assert payload["aud"] == AUD or AUD in payload["aud"]
    assert payload["exp"] > NOW - 30


@FUZZ
@given(st.sampled_from(valid_tokens()), st.data())
def test_any_single_character_change_is_rejected(
    verifier: Verifier, token: str, data: st.DataObject
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c != token[index]))
    expect_invalid(verifier, token[:index] + replacement + token[index + 1 :])


@FUZZ
@given(st.sampled_from(valid_tokens()), st.data())
def test_insertions_and_deletions_are_rejected(
    verifier: Verifier, token: str, data: st.DataObject
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(token)))
    if data.draw(st.booleans()) and index < len(token):
        mutated = token[:index] + token[index + 1 :]
    else:
        mutated = token[:index] + data.draw(st.text(min_size=1, max_size=3)) + token[index:]
    expect_invalid(verifier, mutated)


@settings(FUZZ, max_examples=40)
@given(st.text() | st.sampled_from(valid_tokens()).map(lambda t: t[::-1]))
def test_async_verify_raises_only_invalid_token(verifier: Verifier, text: str) -> None:
    async def check() -> None:
        try:
            await verifier.verify(text)
        except InvalidToken:
            return
        raise AssertionError("a fuzzed token was accepted")

    asyncio.run(check())


@FUZZ
@given(st.binary(max_size=64))
def test_b64url_decode_raises_only_invalid_token(data: bytes) -> None:
    text = data.decode("latin-1")
    try:
        decoded = b64url_decode(text)
    except InvalidToken:
        return
    assert b64u(decoded) == text  # whatever is accepted is the one canonical encoding


@FUZZ
@given(JSON_VALUES)
def test_parse_jwks_never_raises_anything_unexpected(document: Any) -> None:
    for doc in (document, {"keys": [document]}, {"keys": document}):
        with contextlib.suppress(JWKSFetchError):
            parse_jwks(doc)


@FUZZ
@given(st.text(max_size=200))
def test_parse_compact_raises_only_invalid_token(text: str) -> None:
    with contextlib.suppress(InvalidToken):
        parse_compact(text, algorithms=SUPPORTED_ALGORITHMS)
