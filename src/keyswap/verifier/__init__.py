"""The origin-side verifier: verify gateway-minted JWTs against the issuer's JWKS.

The curated public names are re-exported here; framework adapters live in their own modules
(``keyswap.verifier.fastapi``, ``.starlette``, ``.flask``, ``.django``, ``.drf``, ``.wsgi``) so that importing
this package never imports a web framework. See docs/verifier.md.
"""

from __future__ import annotations

from keyswap.verifier.asgi import JWTAuthMiddleware
from keyswap.verifier.fetch import JWKSFetcher
from keyswap.verifier.keyset import KeySet
from keyswap.verifier.metrics import Metrics, register_prometheus
from keyswap.verifier.permissions import TokenClaims, permissions_from_claims
from keyswap.verifier.verify import IssuerConfig, Verifier

__all__ = [
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
