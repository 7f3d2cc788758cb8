from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyswap.errors import MalformedToken, MissingToken
from keyswap.verifier.extract import bearer_token

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def auth(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"example.test"), (b"authorization", value), (b"accept", b"*/*")]


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
def test_the_bearer_scheme_is_matched_case_insensitively(scheme: bytes) -> None:
    assert bearer_token(auth(scheme + b" " + TOKEN.encode())) == TOKEN


def test_a_mixed_case_header_name_is_still_found() -> None:
    assert bearer_token([(b"Authorization", b"Bearer " + TOKEN.encode())]) == TOKEN


def test_b64token_characters_and_trailing_equals_are_accepted() -> None:
    token = "abc-._~+/XYZ09=="
    assert bearer_token(auth(b"Bearer " + token.encode())) == token


def test_no_authorization_header_is_a_missing_token() -> None:
    with pytest.raises(MissingToken):
        bearer_token([(b"host", b"example.test")])


@pytest.mark.parametrize("value", [b"Basic dXNlcjpwYXNz", b"Digest x=1", b"Bearerx abc", b"Token"])
def test_another_scheme_is_a_missing_token(value: bytes) -> None:
    with pytest.raises(MissingToken):
        bearer_token(auth(value))


def test_two_authorization_headers_are_malformed() -> None:
    headers = [(b"authorization", b"Bearer " + TOKEN.encode()), (b"authorization", b"Basic eA==")]
    with pytest.raises(MalformedToken, match="more than one"):
        bearer_token(headers)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"Bearer", "without a token"),
        (b"Bearer ", "without a token"),
        (b"Bearer   ", "without a token"),
        (b"Bearer  " + TOKEN.encode(), "more than one space"),
        (b"Bearer\t" + TOKEN.encode(), "single space"),
        (b"Bearer \t" + TOKEN.encode(), "more than one space"),
        (b"Bearer " + TOKEN.encode() + b" ", "trailing whitespace"),
        (b"Bearer " + TOKEN.encode() + b"\t", "trailing whitespace"),
        (b" Bearer " + TOKEN.encode(), "auth scheme"),
        (b"", "auth scheme"),
        (b"Bearer:" + TOKEN.encode(), "single space"),
        (b"Bearer a b", "outside the b64token"),
        (b"Bearer " + TOKEN.encode() + b"\x00", "outside the b64token"),
        (b"Bearer caf\xe9", "outside the b64token"),
        (b"Bearer ==abc", "outside the b64token"),
        (b"Bearer abc=d", "outside the b64token"),
    ],
)
def test_unusable_bearer_values_are_malformed(value: bytes, why: str) -> None:
    with pytest.raises(MalformedToken, match=why):
        bearer_token(auth(value))


def test_the_size_cap_applies_before_anything_else() -> None:
    with pytest.raises(MalformedToken, match="longer than 16 bytes"):
        bearer_token(auth(b"Bearer " + b"a" * 17), max_size=16)
    assert bearer_token(auth(b"Bearer " + b"a" * 16), max_size=16) == "a" * 16


def test_an_oversized_value_of_another_scheme_is_also_rejected_as_malformed() -> None:
    with pytest.raises(MalformedToken):
        bearer_token(auth(b"Basic " + b"a" * 100), max_size=16)


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=200))
def test_any_header_bytes_give_a_token_or_one_of_the_two_errors(value: bytes, cap: int) -> None:
    try:
        token = bearer_token(auth(value), max_size=cap)
    except (MissingToken, MalformedToken):
        return
    assert value[:7].lower() == b"bearer "
    assert value[7:] == token.encode()
    assert len(token) <= cap


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Bearer a.b.c", "a.b.c"),
        (b"bearer a b", "a b"),  # the character scan is the one check left out
        (b'Bearer a"b', 'a"b'),
    ],
)
def test_without_the_character_check_only_the_scan_is_skipped(value: bytes, expected: str) -> None:
    assert bearer_token([(b"authorization", value)], check_characters=False) == expected


@pytest.mark.parametrize(
    ("value", "error", "reason"),
    [
        (b"Bearer ", MalformedToken, "without a token"),
        (b"Bearer  a.b.c", MalformedToken, "more than one space"),
        (b"Bearer a.b.c\t", MalformedToken, "trailing whitespace"),
        (b"Bearer caf\xe9", MalformedToken, "outside the b64token"),
        (b"Basic abc", MissingToken, "another scheme"),
    ],
)
def test_without_the_character_check_the_structure_is_still_checked(
    value: bytes, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error, match=reason):
        bearer_token([(b"authorization", value)], check_characters=False)
