from __future__ import annotations

from typing import Any

import pytest

from keyswap.errors import ConfigError
from keyswap.gateway.secret import ServerSecret
from keyswap.webhooks.sealed import SEALED, is_sealed, seal, unseal
from tests.support.gateway_state import secret

KEY = "ks_" + "a" * 36


def test_a_sealed_value_opens_for_its_consumer_inside_any_payload() -> None:
    payload: dict[str, Any] = {
        "type": "key.rolled",
        "data": {"new_key": seal(secret(), 7, KEY), "n": [1, "x"]},
    }
    assert KEY not in repr(payload)
    assert is_sealed(payload["data"]["new_key"])
    opened = unseal(secret(), "7", payload)
    assert opened == {"type": "key.rolled", "data": {"new_key": KEY, "n": [1, "x"]}}
    assert is_sealed(payload["data"]["new_key"])  # a copy: the stored form is untouched


def test_a_sealed_value_does_not_open_for_another_consumer_or_secret_or_when_damaged() -> None:
    sealed = seal(secret(), 7, KEY)
    with pytest.raises(ConfigError):
        unseal(secret(), 8, sealed)
    with pytest.raises(ConfigError):
        unseal(ServerSecret("another-server-secret-0123456789-abcdefgh"), 7, sealed)
    with pytest.raises(ConfigError):
        unseal(secret(), 7, {SEALED: sealed[SEALED][:-4] + "AAAA"})
    with pytest.raises(ConfigError):
        unseal(secret(), 7, {SEALED: "not base64!"})


def test_two_seals_of_one_value_differ() -> None:
    assert seal(secret(), 1, KEY) != seal(secret(), 1, KEY)
