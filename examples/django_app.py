"""Single-file Django example (with a Django REST framework view): the protected route of
`keyswap origin`.

    KEYSWAP_ISSUER=... KEYSWAP_JWKS_URL=... KEYSWAP_AUDIENCE=... python examples/django_app.py runserver
    KEYSWAP_ISSUER=... KEYSWAP_JWKS_URL=... KEYSWAP_AUDIENCE=... gunicorn examples.django_app:application

`/claims` answers the verified claims as JSON (``request.keyswap_claims``); `/api/orders` is a DRF view
that also needs the `orders:read` scope; `/health` needs no token.
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from django.conf import settings

from keyswap.verifier.envconfig import issuer_config_from_env
from keyswap.verifier.verify import Verifier

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret"),
    ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    DATABASES={},
    MIDDLEWARE=["keyswap.verifier.django.KeyswapMiddleware"],
    KEYSWAP={
        # The settings of `keyswap origin`: KEYSWAP_ISSUER, KEYSWAP_JWKS_URL (or KEYSWAP_DISCOVER=true),
        # KEYSWAP_AUDIENCE, KEYSWAP_ALGORITHMS (default: all four), KEYSWAP_PROFILE...
        "VERIFIER": Verifier(issuer_config_from_env(os.environ)),
        "EXEMPT_PATHS": ["/health"],
    },
    REST_FRAMEWORK={
        "UNAUTHENTICATED_USER": None,
        "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
        "DEFAULT_AUTHENTICATION_CLASSES": ["keyswap.verifier.drf.KeyswapAuthentication"],
        "DEFAULT_PERMISSION_CLASSES": ["keyswap.verifier.drf.HasScopes"],
    },
)

import django  # noqa: E402

django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def claims(request: HttpRequest) -> JsonResponse:
    return JsonResponse(request.keyswap_claims)


class Orders(APIView):  # type: ignore[misc]  # DRF ships no type hints: APIView is Any
    required_scopes: ClassVar[list[str]] = ["orders:read"]

    def get(self, request: Request) -> Any:
        return Response({"orders": [], "consumer": request.user.username})


urlpatterns = [
    path("health", health),
    path("claims", claims),
    path("api/orders", Orders.as_view()),
]

application = get_wsgi_application()

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
