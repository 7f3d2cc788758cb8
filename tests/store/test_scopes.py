"""Scopes of consumers and API keys: validation, storage on SQLite and PostgreSQL, effective scopes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyswap.errors import InvalidInput, NotFound
from keyswap.store import Store
from keyswap.store.models import (
    MAX_SCOPE_LENGTH,
    MAX_SCOPES,
    effective_scopes,
    format_scopes,
    parse_scopes,
    validate_scopes,
)
from tests.support.cluster import postgres_schema
from tests.support.gateway_state import db_url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = Store(db_url(tmp_path))
        yield opened
        opened.close()
    else:
        with postgres_schema() as url:
            opened = Store(url, schema="upgrade")
            yield opened
            opened.close()


def _key(store: Store, key_id: str, scopes: list[str] | None, consumer: str = "acme") -> None:
    owner = store.get_consumer(consumer)
    assert owner is not None
    store.insert_api_key(
        consumer_id=owner.id,
        key_id=key_id,
        digest=key_id.encode().ljust(32, b"-"),
        hint="ks_...abcd",
        created_at=1.0,
        expires_at=None,
        scopes=scopes,
    )


# -- validation -----------------------------------------------------------------------------------------


def test_scopes_parse_from_commas_or_spaces_without_duplicates() -> None:
    assert parse_scopes("orders:read,orders:write") == ("orders:read", "orders:write")
    assert parse_scopes(" a, b  c,a ") == ("a", "b", "c")
    assert parse_scopes("") == parse_scopes(" , ") == ()
    assert format_scopes(("a", "b")) == "a b"


@pytest.mark.parametrize(
    "bad",
    ['say"hi', "back\\slash", "tab\tin", "é", "x" * (MAX_SCOPE_LENGTH + 1), "", "\x7f", "a,b"],
)
def test_a_scope_outside_the_scope_token_alphabet_is_refused_in_one_line(bad: str) -> None:
    with pytest.raises(InvalidInput, match="invalid scope") as caught:
        validate_scopes([bad])
    assert "\n" not in caught.value.reason


def test_too_many_scopes_or_a_bare_string_are_refused() -> None:
    assert len(validate_scopes([f"s{i}" for i in range(MAX_SCOPES)])) == MAX_SCOPES
    with pytest.raises(InvalidInput, match=f"the limit is {MAX_SCOPES}"):
        validate_scopes([f"s{i}" for i in range(MAX_SCOPES + 1)])
    with pytest.raises(InvalidInput, match="too long"):
        parse_scopes("a," * 10_000)
    with pytest.raises(InvalidInput, match="list of strings"):
        validate_scopes("orders:read")


def test_effective_scopes_are_the_keys_own_within_the_consumers_or_the_consumers() -> None:
    assert effective_scopes(None, ("a", "b")) == ("a", "b")
    assert effective_scopes(("b", "c"), ("a", "b")) == ("b",)
    assert effective_scopes((), ("a",)) == ()


# -- storage --------------------------------------------------------------------------------------------


def test_consumer_scopes_are_stored_listed_replaced_and_cleared(store: Store) -> None:
    created = store.create_consumer("acme", scopes=["orders:read", "orders:write", "orders:read"])
    assert created.scopes == ("orders:read", "orders:write")
    assert store.create_consumer("beta").scopes == ()
    before = store.revision()
    assert store.set_consumer_scopes("acme", ["orders:read"]).scopes == ("orders:read",)
    assert store.revision() == before + 1  # running gateways see the change
    assert [(c.name, c.scopes) for c in store.list_consumers()] == [
        ("acme", ("orders:read",)),
        ("beta", ()),
    ]
    assert store.set_consumer_scopes("acme", []).scopes == ()
    consumer = store.get_consumer("acme")
    assert consumer is not None
    assert consumer.scopes == ()
    with pytest.raises(NotFound):
        store.set_consumer_scopes("nobody", ["a"])
    with pytest.raises(InvalidInput):
        store.set_consumer_scopes("acme", ["no spaces"])
    with pytest.raises(InvalidInput):
        store.create_consumer("gamma", scopes=['x"'])
    assert store.get_consumer("gamma") is None


def test_a_keys_own_scopes_must_be_within_its_consumers(store: Store) -> None:
    store.create_consumer("acme", scopes=["orders:read", "orders:write"])
    _key(store, "key_narrow", ["orders:read"])
    _key(store, "key_inherits", None)
    _key(store, "key_none", [])
    with pytest.raises(InvalidInput, match=r"does not have the scope\(s\) admin; its scopes: "):
        _key(store, "key_bad", ["orders:read", "admin"])
    keys = {k.id: k for k in store.list_api_keys()}
    assert set(keys) == {"key_narrow", "key_inherits", "key_none"}
    assert keys["key_narrow"].scopes == ("orders:read",)
    assert keys["key_inherits"].scopes is None
    assert keys["key_none"].scopes == ()
    assert {k: r.effective_scopes for k, r in keys.items()} == {
        "key_narrow": ("orders:read",),
        "key_inherits": ("orders:read", "orders:write"),
        "key_none": (),
    }


def test_shrinking_a_consumers_scopes_narrows_its_keys_and_growing_them_gives_back_no_more(
    store: Store,
) -> None:
    store.create_consumer("acme", scopes=["orders:read", "orders:write"])
    _key(store, "key_narrow", ["orders:read", "orders:write"])
    _key(store, "key_inherits", None)
    store.set_consumer_scopes("acme", ["orders:write"])
    digest = b"key_narrow".ljust(32, b"-")
    found = store.find_api_key(digest)
    assert found is not None
    record, consumer = found
    assert consumer.scopes == ("orders:write",)
    assert record.scopes == ("orders:read", "orders:write")  # kept as created
    assert record.effective_scopes == ("orders:write",)
    store.set_consumer_scopes("acme", ["orders:read", "orders:write", "admin"])
    keys = {k.id: k.effective_scopes for k in store.list_api_keys()}
    assert keys == {
        "key_narrow": ("orders:read", "orders:write"),
        "key_inherits": ("orders:read", "orders:write", "admin"),
    }


def test_a_rolled_key_keeps_its_own_scopes(store: Store) -> None:
    store.create_consumer("acme", scopes=["orders:read", "orders:write"])
    _key(store, "key_old", ["orders:read"])
    store.set_consumer_scopes("acme", ["orders:write"])  # narrowed since: roll still works
    _, new = store.roll_api_key(
        "key_old",
        old_expires_at=5.0,
        new_key_id="key_new",
        new_digest=b"n" * 32,
        new_hint="ks_...wxyz",
        created_at=2.0,
        new_expires_at=None,
    )
    assert new.scopes == ("orders:read",)
    assert new.effective_scopes == ()
