from __future__ import annotations

import pytest

from keyswap.durations import format_duration, parse_duration
from keyswap.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45", 45),
        ("1.5", 1.5),
        ("0", 0),
        ("45s", 45),
        ("30m", 1800),
        ("12h", 43200),
        ("90d", 90 * 86400),
        ("2w", 14 * 86400),
        ("1d12h", 129600),
        ("1h30m", 5400),
        (" 12H ", 43200),
        ("1.5h", 5400),
    ],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "abc", "-5", "5x", "h", "1e3", "12 h", "30m1h", "1h1h", "inf", "nan", "1,5"]
)
def test_malformed_durations_are_refused_with_a_hint(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid duration"):
        parse_duration(text)


def test_durations_longer_than_a_century_are_refused() -> None:
    with pytest.raises(InvalidInput, match="100 years"):
        parse_duration("40000d")
    with pytest.raises(InvalidInput, match="100 years"):
        parse_duration("9" * 400)


def test_a_very_long_bad_duration_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_duration("x" * 500)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (-3, "0s"), (45, "45s"), (5400, "1h30m"), (129600, "1d12h")]
)
def test_durations_format_in_a_short_human_form(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
