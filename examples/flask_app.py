"""Flask example: the protected route of `keyswap origin`, as a Flask app.

    KEYSWAP_ISSUER=... KEYSWAP_JWKS_URL=... KEYSWAP_AUDIENCE=... flask --app examples.flask_app run

Every path except `/health` needs a valid token; `/claims` answers the verified claims as JSON;
`GET /orders` also needs the `orders:read` scope, `POST /orders` the `orders:write` scope. The verifier
is built from the `KEYSWAP_*` settings of `keyswap origin`.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, g, jsonify

from keyswap.verifier.envconfig import issuer_config_from_env
from keyswap.verifier.flask import KeyswapFlask, require_token
from keyswap.verifier.verify import Verifier

app = Flask(__name__)
# The settings of `keyswap origin`: KEYSWAP_ISSUER, KEYSWAP_JWKS_URL (or KEYSWAP_DISCOVER=true),
# KEYSWAP_AUDIENCE, KEYSWAP_ALGORITHMS (default: all four), KEYSWAP_REQUIRED_CLAIMS, KEYSWAP_PROFILE...
KeyswapFlask(app, verifier=Verifier(issuer_config_from_env(os.environ)), exempt_paths=["/health"])


@app.get("/health")
def health() -> Any:
    return jsonify(status="ok")


@app.get("/claims")
def claims() -> Any:
    return jsonify(g.keyswap_claims)


@app.get("/orders")
@require_token(scopes=["orders:read"])
def orders() -> Any:
    return jsonify(orders=[], consumer=g.keyswap_claims["sub"])


@app.post("/orders")
@require_token(scopes=["orders:write"])
def create_order() -> Any:
    return jsonify(created=True, consumer=g.keyswap_claims["sub"]), 201
