from __future__ import annotations

from typing import Any

import pytest

from keyswap.errors import InvalidInput
from keyswap.store.models import (
    MAX_METADATA_BYTES,
    ApiKeyRecord,
    parse_metadata,
    validate_consumer_name,
    validate_metadata,
)


@pytest.mark.parametrize("name", ["a", "acme", "Acme-Corp_2.prod", "x" * 64, "0", "..."])
def test_consumer_names_of_1_to_64_allowed_characters_are_accepted(name: str) -> None:
    assert validate_consumer_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "has space", "slash/name", "caf\u00e9", "tab\t", "new\nline", "a:b"]
)
def test_consumer_names_outside_the_pattern_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="1-64 characters"):
        validate_consumer_name(name)


@pytest.mark.parametrize("value", [[], "text", 3, None, True])
def test_metadata_must_be_a_json_object(value: Any) -> None:
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        validate_metadata(value)


def test_metadata_of_exactly_the_limit_is_accepted_and_one_byte_more_is_refused() -> None:
    overhead = len('{"k":""}')
    fits = {"k": "x" * (MAX_METADATA_BYTES - overhead)}
    assert validate_metadata(fits) == fits
    with pytest.raises(InvalidInput, match="1024 bytes"):
        validate_metadata({"k": "x" * (MAX_METADATA_BYTES - overhead + 1)})


def test_metadata_size_counts_utf8_bytes_not_characters() -> None:
    overhead = len('{"k":""}')
    with pytest.raises(InvalidInput, match="limit"):
        validate_metadata({"k": "\u00e9" * ((MAX_METADATA_BYTES - overhead) // 2 + 1)})


@pytest.mark.parametrize("value", [{"\ud800": 1}, {"k": "\udcff"}, {"k": ["a\udfff"]}])
def test_metadata_with_a_lone_surrogate_is_refused_not_a_crash(value: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="lone surrogates"):
        validate_metadata(value)


@pytest.mark.parametrize(
    "value",
    [{"n": float("nan")}, {"n": float("inf")}, {1: "int key"}, {"s": {1, 2}}, {"b": b"bytes"}],
)
def test_metadata_that_is_not_plain_json_is_refused(value: dict[Any, Any]) -> None:
    with pytest.raises(InvalidInput):
        validate_metadata(value)


def test_deeply_nested_metadata_is_refused() -> None:
    nested: dict[str, Any] = {}
    for _ in range(40):
        nested = {"a": nested}
    with pytest.raises(InvalidInput, match="nested"):
        validate_metadata(nested)


def test_parse_metadata_reads_a_json_object() -> None:
    assert parse_metadata('{"tier": "gold", "limits": [1, 2]}') == {
        "tier": "gold",
        "limits": [1, 2],
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"a": NaN}', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"a string"', "must be a JSON object"),
        ("x" * 5000, "too big"),
    ],
)
def test_parse_metadata_explains_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_metadata(text)


def _record(**changes: Any) -> ApiKeyRecord:
    values: dict[str, Any] = {
        "id": "key_1",
        "consumer_id": 1,
        "consumer_name": "acme",
        "hint": "ks_...abcd",
        "created_at": 100.0,
        "expires_at": None,
        "revoked_at": None,
        "last_used_at": None,
    }
    values.update(changes)
    return ApiKeyRecord(**values)


def test_a_key_is_usable_until_its_expiry_and_not_at_it() -> None:
    record = _record(expires_at=200.0)
    assert record.usable_at(199.999)
    assert not record.usable_at(200.0)
    assert record.status_at(200.0) == "expired"


def test_a_revoked_key_is_not_usable_even_before_its_expiry() -> None:
    record = _record(expires_at=200.0, revoked_at=150.0)
    assert not record.usable_at(120.0)
    assert record.status_at(120.0) == "revoked"


def test_a_rolled_key_is_usable_during_its_grace_and_says_so() -> None:
    record = _record(expires_at=200.0, replaced_by="key_2")
    assert record.usable_at(150.0)
    assert record.status_at(150.0) == "rolled"
    assert _record().status_at(1e12) == "active"
