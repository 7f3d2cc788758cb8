"""keyswap: API keys at the edge, short-lived JWTs at the origin.

``keyswap.verifier`` is the origin side (verify gateway-minted JWTs against a JWKS);
``keyswap.gateway`` is the edge (API keys in, short-lived JWTs out).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
