"""Configure Django once per test process (settings can be configured only once).

Tests then change what they need with ``override_settings`` (``KEYSWAP``, ``MIDDLEWARE``,
``ROOT_URLCONF``); ``keyswap.verifier.django`` rebuilds its verifier when ``KEYSWAP`` changes.
"""

from __future__ import annotations

import django
from django.conf import settings


def configure() -> None:
    """Minimal settings: no database, no templates, DRF rendering JSON only."""
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="keyswap-tests-only",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF="tests.verifier.django_urls",
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        REST_FRAMEWORK={
            "UNAUTHENTICATED_USER": None,
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
            "DEFAULT_AUTHENTICATION_CLASSES": ["keyswap.verifier.drf.KeyswapAuthentication"],
            "DEFAULT_PERMISSION_CLASSES": ["keyswap.verifier.drf.HasScopes"],
        },
    )
    django.setup()
