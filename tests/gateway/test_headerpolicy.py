"""The request-header policy: fixed rules, identity families, operator drop lists and allow-lists."""

from __future__ import annotations

import pytest

from keyswap.errors import ConfigError
from keyswap.gateway.headerpolicy import (
    DEFAULT_POLICY,
    VERDICT_NAME_LENGTH,
    VERDICTS_KEPT,
    HeaderPolicy,
    parse_header_list,
)


@pytest.mark.parametrize(
    "name",
    [b"authorization", b"x-forwarded-for", b"x_user", b"x-client-ip", b"cf-connecting-ip",
     b"x-amzn-oidc-data", b"x-ms-client-principal-name", b"x-original-uri", b"x-ssl-client-verify"],
)  # fmt: skip
def test_the_default_policy_drops_fixed_and_identity_names(name: bytes) -> None:
    assert DEFAULT_POLICY.dropped(name)


@pytest.mark.parametrize("name", [b"accept", b"x-request-id", b"user-agent", b"x-clientele"])
def test_the_default_policy_keeps_ordinary_names(name: bytes) -> None:
    assert not DEFAULT_POLICY.dropped(name)


def test_operator_entries_are_names_prefixes_and_patterns() -> None:
    policy = HeaderPolicy(["X-Tenant, x-internal-*", "x-[ab]-flag"])
    assert policy.drop == ("x-tenant", "x-internal-*", "x-[ab]-flag")
    assert policy.dropped(b"x-tenant")
    assert policy.dropped(b"x-internal-anything")
    assert policy.dropped(b"x-a-flag")
    assert not policy.dropped(b"x-c-flag")
    assert not policy.dropped(b"x-tenants")


def test_an_allow_list_names_identity_headers_exactly_and_never_overrides_fixed_rules() -> None:
    policy = HeaderPolicy(["x-secret"], only=["cf-ipcountry", "x-*", "authorization"])
    assert not policy.dropped(b"cf-ipcountry")  # named exactly: forwarded
    assert policy.dropped(b"cf-connecting-ip")  # identity family, not named
    assert policy.dropped(b"x-client-ip")  # identity family: the pattern x-* is not enough
    assert not policy.dropped(b"x-request-id")
    assert policy.dropped(b"x-secret")  # --drop-header wins
    assert policy.dropped(b"authorization")  # fixed rule wins
    assert policy.dropped(b"accept")  # not listed


def test_entries_are_deduplicated_and_blank_ones_ignored() -> None:
    assert parse_header_list(["A, a ,,", " b"]) == ("a", "b")
    with pytest.raises(ConfigError):
        parse_header_list(["x y"])


@pytest.mark.parametrize(
    "policy",
    [DEFAULT_POLICY, HeaderPolicy(["x-secret*", "x-?ab"]), HeaderPolicy(only=["accept*", "x-ok"])],
)
def test_remembered_verdicts_are_the_policys_decisions(policy: HeaderPolicy) -> None:
    names = [b"accept", b"accept-encoding", b"x-ok", b"x-secret-1", b"x-lab", b"host", b"x_under"]
    names += [b"cf-ray", b"x-forwarded-for", b"authorization", b"user-agent", b"x-user-id"]
    for _ in range(2):  # computed, then remembered
        assert [policy.verdict(n) for n in names] == [policy.dropped(n) for n in names]
    assert set(policy.verdicts) >= set(names)


def test_made_up_names_cannot_grow_the_remembered_verdicts_without_bound() -> None:
    policy = HeaderPolicy()
    assert policy.verdict(b"x" * (VERDICT_NAME_LENGTH + 1)) is False
    assert policy.verdicts == {}
    for i in range(VERDICTS_KEPT + 100):
        assert policy.verdict(b"x-made-up-%d" % i) is False
    assert len(policy.verdicts) == VERDICTS_KEPT
    assert policy.verdict(b"cf-connecting-ip") is True  # still decided, just not remembered
