"""FastAPI example: the protected route of `keyswap origin`, as a FastAPI app.

    KEYSWAP_ISSUER=... KEYSWAP_JWKS_URL=... KEYSWAP_AUDIENCE=... uvicorn examples.fastapi_app:app

Behind a keyswap gateway, from the repository root (`.venv/bin` from ./scripts/demo or ./scripts/test):

    .venv/bin/keyswap gateway --upstream http://127.0.0.1:7878 --port 8080 &
    KEYSWAP_ISSUER=http://127.0.0.1:8080/__keyswap/issuer \
    KEYSWAP_JWKS_URL=http://127.0.0.1:8080/__keyswap/issuer/.well-known/jwks.json \
    KEYSWAP_AUDIENCE=http://127.0.0.1:7878 \
    .venv/bin/uvicorn examples.fastapi_app:app --port 7878

(the audience is the gateway's --audience, by default its --upstream URL). Give the consumer the scopes:
`keyswap consumers create shop --scopes orders:read,orders:write`, then `keyswap keys create shop`.

`GET /claims` answers the verified claims as JSON; `GET /orders` also needs the `orders:read` scope,
`POST /orders` the `orders:write` scope; `/docs` has an Authorize button for the bearer token.
"""

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Security

from keyswap.verifier.envconfig import issuer_config_from_env
from keyswap.verifier.fastapi import KeyswapBearer, TokenClaims
from keyswap.verifier.verify import Verifier

# The settings of `keyswap origin`: KEYSWAP_ISSUER, KEYSWAP_JWKS_URL (or KEYSWAP_DISCOVER=true),
# KEYSWAP_AUDIENCE, KEYSWAP_ALGORITHMS (default: all four), KEYSWAP_REQUIRED_CLAIMS, KEYSWAP_PROFILE...
verifier = Verifier(issuer_config_from_env(os.environ))
auth = KeyswapBearer(verifier)
app = FastAPI(title="keyswap FastAPI example", lifespan=auth.lifespan)
auth.install(app)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/claims")
async def claims(token: Annotated[TokenClaims, Depends(auth)]) -> dict[str, Any]:
    return dict(token.raw)


@app.get("/orders")
async def orders(
    token: Annotated[TokenClaims, Security(auth, scopes=["orders:read"])],
) -> dict[str, Any]:
    return {"orders": [], "consumer": token.sub}


@app.post("/orders", status_code=201)
async def create_order(
    token: Annotated[TokenClaims, Security(auth, scopes=["orders:write"])],
) -> dict[str, Any]:
    return {"created": True, "consumer": token.sub}
