"""The curated public surface of keyswap.verifier (guards accidental removals and framework imports)."""

from __future__ import annotations

import subprocess
import sys

import keyswap.verifier


def test_public_names_are_exactly_the_curated_list() -> None:
    assert sorted(keyswap.verifier.__all__) == [
        "IssuerConfig",
        "JWKSFetcher",
        "JWTAuthMiddleware",
        "KeySet",
        "Metrics",
        "TokenClaims",
        "Verifier",
        "permissions_from_claims",
        "register_prometheus",
    ]
    for name in keyswap.verifier.__all__:
        assert getattr(keyswap.verifier, name) is not None


def test_importing_the_verifier_imports_no_framework_and_no_gateway() -> None:
    code = (
        "import sys, keyswap.verifier; "
        "bad = [m for m in ('fastapi', 'starlette', 'flask', 'django', 'sqlalchemy', 'aiohttp', "
        "'keyswap.gateway', 'keyswap.store') if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
