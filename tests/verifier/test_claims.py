from __future__ import annotations

import math
from typing import Any

import pytest

from keyswap.errors import (
    ExpiredToken,
    InvalidAudience,
    InvalidClaim,
    InvalidIssuer,
    InvalidToken,
    TokenNotYetValid,
)
from keyswap.verifier.claims import validate_claims, validity_window

NOW = 1_700_000_000
ISS = "https://issuer.test"
AUD = "https://api.test"


def claims(**overrides: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"iss": ISS, "sub": "consumer-1", "aud": AUD, "iat": NOW, "exp": NOW + 300}
    c.update(overrides)
    return {k: v for k, v in c.items() if v is not None}


def check(
    c: dict[str, Any],
    *,
    now: float = NOW,
    audience: str | None = AUD,
    leeway: float = 30,
    required: tuple[str, ...] = ("sub",),
) -> tuple[float, float]:
    return validate_claims(
        c, issuer=ISS, audience=audience, leeway=leeway, required=required, now=now
    )


def test_valid_claims_return_the_validity_window() -> None:
    assert check(claims()) == (NOW - 30, NOW + 330)


def test_window_without_nbf_or_iat_starts_at_minus_infinity() -> None:
    start, end = validity_window({"exp": NOW}, leeway=0)
    assert start == -math.inf
    assert end == NOW


def test_window_starts_at_the_later_of_nbf_and_iat() -> None:
    assert validity_window({"exp": NOW, "nbf": NOW - 10, "iat": NOW - 5}, leeway=1)[0] == NOW - 6
    assert validity_window({"exp": NOW, "nbf": NOW - 5, "iat": NOW - 10}, leeway=1)[0] == NOW - 6


# --- exp / nbf / iat at the boundaries (A16) --------------------------------------------------------


def test_missing_exp_is_rejected() -> None:
    with pytest.raises(InvalidClaim, match="exp"):
        check(claims(exp=None))


@pytest.mark.parametrize(
    ("exp", "accepted"),
    [
        (NOW - 31, False),
        (NOW - 30, False),  # now == exp + leeway: expired
        (NOW - 29, True),
        (NOW, True),
        (NOW + 1, True),
    ],
)
def test_exp_boundary_with_leeway(exp: int, accepted: bool) -> None:
    if accepted:
        check(claims(exp=exp, iat=None))
    else:
        with pytest.raises(ExpiredToken):
            check(claims(exp=exp, iat=None))


def test_exp_equal_to_now_without_leeway_is_expired() -> None:
    with pytest.raises(ExpiredToken):
        check(claims(exp=NOW, iat=None), leeway=0)


@pytest.mark.parametrize(
    ("nbf", "accepted"), [(NOW + 30, True), (NOW + 31, False), (NOW - 100, True)]
)
def test_nbf_boundary_with_leeway(nbf: int, accepted: bool) -> None:
    if accepted:
        check(claims(nbf=nbf))
    else:
        with pytest.raises(TokenNotYetValid):
            check(claims(nbf=nbf))


@pytest.mark.parametrize(
    ("iat", "accepted"), [(NOW + 30, True), (NOW + 31, False), (10**12, False)]
)
def test_iat_in_the_future_beyond_leeway_is_rejected(iat: int, accepted: bool) -> None:
    if accepted:
        check(claims(iat=iat))
    else:
        with pytest.raises(TokenNotYetValid):
            check(claims(iat=iat))


def test_leeway_is_configurable() -> None:
    check(claims(exp=NOW - 50, iat=None), leeway=60)
    with pytest.raises(ExpiredToken):
        check(claims(exp=NOW - 50, iat=None), leeway=10)


# --- NumericDate types (A15) ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "value", ["9999999999", True, False, math.inf, -math.inf, math.nan, [], {}, "1.5"]
)
def test_time_claims_must_be_finite_numbers(name: str, value: object) -> None:
    with pytest.raises(InvalidClaim, match=name):
        check(claims(**{name: value}))


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_null_time_claim_is_rejected_not_ignored(name: str) -> None:
    c = claims()
    c[name] = None
    with pytest.raises(InvalidClaim, match=name):
        check(c)


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["huge", "huge-negative"])
def test_integer_time_claims_beyond_float_range_are_invalid_claims_not_overflow_errors(
    name: str, value: int
) -> None:
    with pytest.raises(InvalidClaim, match=name):
        check(claims(**{name: value}))


def test_huge_but_float_sized_integer_exp_is_accepted() -> None:
    assert check(claims(exp=10**300))[1] == 10**300 + 30


def test_fractional_numeric_dates_are_accepted() -> None:
    check(claims(exp=NOW + 0.5, iat=NOW - 0.5, nbf=NOW - 0.25))


def test_negative_exp_is_expired() -> None:
    with pytest.raises(ExpiredToken):
        check(claims(exp=-1, iat=None))


# --- issuer (A17) -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [
        "https://issuer.test/",
        "https://issuer.test.evil",
        "https://ISSUER.test",
        "https://issuer",
        "",
        ["https://issuer.test"],
        None,
    ],
)
def test_issuer_must_match_exactly(iss: object) -> None:
    with pytest.raises((InvalidIssuer, InvalidClaim)):
        check(claims(iss=iss))


# --- audience (A18) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("aud", [AUD, [AUD], ["other", AUD]])
def test_audience_string_or_list_element_matches(aud: object) -> None:
    check(claims(aud=aud))


@pytest.mark.parametrize(
    "aud",
    [
        None,
        "other",
        "",
        [],
        ["other"],
        [123],
        [AUD, 123],
        {"aud": AUD},
        "https://api.tes",
        AUD + "/",
        123,
    ],
)
def test_audience_mismatch_or_bad_shape_is_rejected(aud: object) -> None:
    with pytest.raises(InvalidAudience):
        check(claims(aud=aud))


def test_without_configured_audience_any_well_formed_aud_or_none_is_accepted() -> None:
    check(claims(aud=None), audience=None)
    check(claims(aud="anything"), audience=None)
    check(claims(aud=["a", "b"]), audience=None)


@pytest.mark.parametrize("aud", [[], [1], 5, {"a": 1}])
def test_without_configured_audience_a_malformed_aud_is_still_rejected(aud: object) -> None:
    with pytest.raises(InvalidAudience):
        check(claims(aud=aud), audience=None)


# --- required and string claims -------------------------------------------------------------------


def test_sub_is_required_by_default() -> None:
    with pytest.raises(InvalidClaim, match="sub"):
        check(claims(sub=None))


def test_required_claims_are_configurable() -> None:
    check(claims(sub=None), required=())
    with pytest.raises(InvalidClaim, match="jti"):
        check(claims(), required=("sub", "jti"))
    check(claims(jti="j-1"), required=("sub", "jti"))


@pytest.mark.parametrize(("name", "value"), [("sub", 5), ("sub", ""), ("sub", ["a"]), ("jti", 1)])
def test_string_claims_must_be_non_empty_strings(name: str, value: object) -> None:
    with pytest.raises(InvalidClaim, match=name):
        check(claims(**{name: value}))


def test_all_claim_errors_are_invalid_tokens() -> None:
    for cls in (ExpiredToken, TokenNotYetValid, InvalidIssuer, InvalidAudience, InvalidClaim):
        assert issubclass(cls, InvalidToken)


@pytest.mark.parametrize(
    ("iss", "error", "reason"),
    [
        ("", InvalidClaim, "claim 'iss' must be a non-empty string"),
        (5, InvalidClaim, "claim 'iss' must be a non-empty string"),
        ([ISS], InvalidClaim, "claim 'iss' must be a non-empty string"),
        (False, InvalidClaim, "claim 'iss' must be a non-empty string"),
        ("https://other.test", InvalidIssuer, "issuer not accepted"),
        (None, InvalidIssuer, "issuer not accepted"),  # absent
    ],
)
def test_issuer_errors_name_the_precise_reason(
    iss: object, error: type[InvalidToken], reason: str
) -> None:
    with pytest.raises(error) as info:
        check(claims(iss=iss))
    assert type(info.value) is error
    assert info.value.reason == reason


@pytest.mark.parametrize("issuer", ["-", "x"])
def test_a_missing_iss_never_matches_even_a_short_configured_issuer(issuer: str) -> None:
    with pytest.raises(InvalidIssuer):
        validate_claims(
            {"sub": "s", "exp": NOW + 60},
            issuer=issuer,
            audience=None,
            leeway=0,
            required=(),
            now=NOW,
        )


def test_an_empty_issuer_never_accepts_an_empty_iss() -> None:
    with pytest.raises(InvalidClaim, match="iss"):
        validate_claims(
            {"iss": "", "exp": NOW + 60}, issuer="", audience=None, leeway=0, required=(), now=NOW
        )


@pytest.mark.parametrize("name", ["sub", "jti"])
def test_absent_optional_string_claims_pass(name: str) -> None:
    c = claims(jti="j")
    del c[name]
    check(c, required=())


@pytest.mark.parametrize("value", [None, 0, "", ["a"], {"a": 1}, True])
def test_a_present_jti_must_be_a_non_empty_string(value: object) -> None:
    c = claims()
    c["jti"] = value  # None here means JSON null, present
    with pytest.raises(InvalidClaim, match="claim 'jti' must be a non-empty string"):
        check(c)
