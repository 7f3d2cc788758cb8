"""Plain WSGI example: the protected route of `keyswap origin` for any WSGI server.

    KEYSWAP_ISSUER=... KEYSWAP_JWKS_URL=... KEYSWAP_AUDIENCE=... gunicorn examples.wsgi_app:application
    KEYSWAP_ISSUER=... KEYSWAP_JWKS_URL=... KEYSWAP_AUDIENCE=... python examples/wsgi_app.py  # wsgiref

Every path except `/health` needs a valid token and answers the verified claims as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment

from keyswap.verifier.envconfig import issuer_config_from_env
from keyswap.verifier.verify import Verifier
from keyswap.verifier.wsgi import WSGIAuthMiddleware, get_claims

# The settings of `keyswap origin`: KEYSWAP_ISSUER, KEYSWAP_JWKS_URL (or KEYSWAP_DISCOVER=true),
# KEYSWAP_AUDIENCE, KEYSWAP_ALGORITHMS (default: all four), KEYSWAP_REQUIRED_CLAIMS, KEYSWAP_PROFILE...
verifier = Verifier(issuer_config_from_env(os.environ))


def echo_claims(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    body = json.dumps(get_claims(environ) or {"status": "ok"}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


application = WSGIAuthMiddleware(echo_claims, verifier=verifier, exempt_paths=["/health"])

if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    port = int(os.environ.get("PORT", "8000"))
    print(f"serving on http://127.0.0.1:{port}")
    make_server("127.0.0.1", port, application).serve_forever()
