from __future__ import annotations

from typing import Any

import pytest

from keyswap.errors import InsufficientScope
from keyswap.verifier.permissions import (
    check_scopes,
    missing_scopes,
    normalise_paths,
    permissions_from_claims,
    read_claim,
    validate_scopes,
)


def test_space_separated_scope_string_is_split() -> None:
    assert permissions_from_claims({"scope": " read  write admin "}) == {"read", "write", "admin"}


# I05: RFC 6749 §3.3 separates scopes by SP (0x20) only; str.split() also split on these.
@pytest.mark.parametrize(
    "separator", ["\t", "\n", "\u00a0", "\x1c", "\x1d", "\x1e", "\x1f", "\u2028", "\u3000"]
)
def test_only_the_space_character_separates_scopes(separator: str) -> None:
    granted = permissions_from_claims({"scope": f"reports:read{separator}admin"})
    assert "admin" not in granted
    assert "reports:read" not in granted
    assert granted == {f"reports:read{separator}admin"}
    assert "admin" not in permissions_from_claims({"roles": [f"{separator}admin"]})
    with pytest.raises(InsufficientScope):
        check_scopes({"scp": f"reports:read{separator}admin"}, ["admin"])


# I08: a bare string where an iterable is expected is one item, never its characters.
def test_a_bare_string_path_is_one_claim_path() -> None:
    claims = {"scope": "orders:read admin", "s": "x", "c": "y"}
    assert permissions_from_claims(claims, "scope") == {"orders:read", "admin"}


def test_a_bare_string_of_required_scopes_is_one_scope() -> None:
    assert missing_scopes({"a", "d", "m", "i", "n"}, "admin") == ("admin",)
    assert missing_scopes({"admin"}, "admin") == ()
    assert check_scopes({"scope": "admin"}, "admin") == {"admin"}
    with pytest.raises(InsufficientScope) as info:
        check_scopes({"scope": "a d m i n"}, "admin")
    assert info.value.scope == "admin"


@pytest.mark.parametrize("scp", ["read write", ["read", "write"]])
def test_scp_is_accepted_as_string_or_array(scp: Any) -> None:
    assert permissions_from_claims({"scp": scp}) == {"read", "write"}


@pytest.mark.parametrize("roles", ["admin", ["admin"]])
def test_roles_are_accepted_as_string_or_array(roles: Any) -> None:
    assert permissions_from_claims({"roles": roles}) == {"admin"}


def test_all_default_claims_are_merged_into_one_frozenset() -> None:
    result = permissions_from_claims({"scope": "a", "scp": ["b"], "roles": "c"})
    assert isinstance(result, frozenset)
    assert result == {"a", "b", "c"}


def test_nested_claim_path_is_read_when_configured() -> None:
    claims = {"realm_access": {"roles": ["offline_access", "editor"]}, "scope": "read"}
    assert permissions_from_claims(claims, ["scope", "realm_access.roles"]) == {
        "read",
        "offline_access",
        "editor",
    }


def test_gateway_metadata_plan_can_be_a_permission() -> None:
    assert permissions_from_claims({"metadata": {"plan": "pro"}}, ["metadata.plan"]) == {"pro"}


def test_namespaced_claim_with_dots_is_read_as_a_literal_key_first() -> None:
    claims = {"https://example.com/roles": ["admin"]}
    assert permissions_from_claims(claims, ["https://example.com/roles"]) == {"admin"}


def test_tuple_path_reaches_keys_that_contain_dots() -> None:
    claims = {"https://example.com": {"roles": ["admin"]}}
    assert permissions_from_claims(claims, [("https://example.com", "roles")]) == {"admin"}


def test_default_paths_ignore_nested_roles() -> None:
    assert permissions_from_claims({"realm_access": {"roles": ["admin"]}}) == frozenset()


@pytest.mark.parametrize(
    "junk",
    [None, 1, 1.5, True, {"read": True}, [1, None, {"a": "b"}, ["read"], True], "", "   ", []],
)
def test_non_string_junk_grants_nothing_and_never_raises(junk: Any) -> None:
    assert permissions_from_claims({"scope": junk, "scp": junk, "roles": junk}) == frozenset()


def test_string_elements_survive_among_junk_elements() -> None:
    assert permissions_from_claims({"roles": [1, "admin", None, " editor "]}) == {
        "admin",
        "editor",
    }


def test_path_through_a_non_object_yields_nothing() -> None:
    claims = {"realm_access": "roles", "a": ["b"]}
    assert read_claim(claims, "realm_access.roles") is None
    assert read_claim(claims, "a.b") is None
    assert permissions_from_claims(claims, ["realm_access.roles", "a.b"]) == frozenset()


def test_claims_that_are_not_a_mapping_grant_nothing() -> None:
    assert permissions_from_claims(None) == frozenset()
    assert permissions_from_claims(["scope"]) == frozenset()  # type: ignore[arg-type]


def test_a_huge_roles_array_is_capped() -> None:
    roles = [f"r{i}" for i in range(5000)]
    assert len(permissions_from_claims({"roles": roles})) == 1024


@pytest.mark.parametrize("bad", ["", "a..b", ".a", ("a", ""), (), 5])
def test_invalid_claim_paths_are_rejected_at_configuration(bad: Any) -> None:
    with pytest.raises(ValueError, match="invalid claim path"):
        normalise_paths([bad])


def test_a_single_string_path_is_one_path_not_characters() -> None:
    assert normalise_paths("realm_access.roles") == ("realm_access.roles",)


def test_check_scopes_returns_permissions_when_all_are_present() -> None:
    assert check_scopes({"scope": "read write"}, ["read"]) == {"read", "write"}


def test_check_scopes_raises_insufficient_scope_listing_every_required_scope() -> None:
    with pytest.raises(InsufficientScope) as info:
        check_scopes({"scope": "read"}, ["read", "write"])
    assert info.value.scope == "read write"
    assert info.value.status == 403
    assert info.value.code == "insufficient_scope"


def test_check_scopes_uses_the_configured_paths() -> None:
    claims = {"realm_access": {"roles": ["admin"]}}
    with pytest.raises(InsufficientScope):
        check_scopes(claims, ["admin"])
    assert check_scopes(claims, ["admin"], ["realm_access.roles"]) == {"admin"}


def test_missing_scopes_keeps_required_order_without_duplicates() -> None:
    assert missing_scopes({"a"}, ["c", "a", "b", "c"]) == ("c", "b")


@pytest.mark.parametrize("bad", ["", "two words", 'quo"te', "back\\slash", "tab\t", 7])
def test_invalid_required_scopes_are_rejected_at_configuration(bad: Any) -> None:
    with pytest.raises(ValueError, match="invalid scope"):
        validate_scopes([bad])


def test_validate_scopes_deduplicates_and_accepts_a_single_string() -> None:
    assert validate_scopes(["read", "write", "read"]) == ("read", "write")
    assert validate_scopes("read") == ("read",)
