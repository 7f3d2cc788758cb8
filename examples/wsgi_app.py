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

from keyswap.verifier.verify import IssuerConfig, Verifier
from keyswap.verifier.wsgi import WSGIAuthMiddleware, get_claims

verifier = Verifier(
    IssuerConfig(
        issuer=os.environ["KEYSWAP_ISSUER"],
        jwks_url=os.environ["KEYSWAP_JWKS_URL"],
        audience=os.environ.get("KEYSWAP_AUDIENCE") or None,
    )
)


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
