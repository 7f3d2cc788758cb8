"""The origin-side verifier: verify gateway-minted JWTs against the issuer's JWKS.

Public names are re-exported here as their modules land; see docs/verifier.md.
"""

from __future__ import annotations
