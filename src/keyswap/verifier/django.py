"""Django: a middleware that verifies bearer tokens and puts the claims on ``request.keyswap_claims``.

::

    # settings.py
    MIDDLEWARE = [..., "keyswap.verifier.django.KeyswapMiddleware"]
    KEYSWAP = {
        "ISSUER": "https://gateway.example.com/__keyswap/issuer",
        "JWKS_URL": "https://gateway.example.com/__keyswap/issuer/.well-known/jwks.json",
        "AUDIENCE": "https://api.example.com",
        "EXEMPT_PATHS": ["/health", "/static/*"],
    }

    # views.py
    def me(request):
        return JsonResponse(request.keyswap_claims)

Settings (``settings.KEYSWAP``):

- ``ISSUER``, ``JWKS_URL``, ``AUDIENCE``, ``ALGORITHMS``, ``LEEWAY``, or ``ISSUERS`` (a list of
  ``IssuerConfig`` keyword mappings), or ``VERIFIER``: a ready ``Verifier`` instance;
- ``EXEMPT_PATHS``: paths served without a token (``"/health"`` exactly, ``"/static/*"`` as a prefix);
- ``SCOPES``: scopes every protected request must have; ``PERMISSION_CLAIMS``: where scopes are read
  from (default ``["scope", "scp", "roles"]``, e.g. add ``"realm_access.roles"``);
- ``REQUIRED`` (default ``True``): with ``False`` a request *without* a bearer token (no
  ``Authorization`` header, or one with another scheme such as ``Basic``) passes with
  ``request.keyswap_claims = None`` (a bad bearer token is still refused), leaving the decision to
  views or to Django REST framework (:mod:`keyswap.verifier.drf`) and its other authentication classes;
- ``REALM``, ``ERROR_DESCRIPTIONS``.

Responses are the ASGI middleware's (401 / 403 / 503, RFC 6750 challenge, ``Retry-After``). The
middleware works under WSGI (``verify_sync``) and ASGI (``await verify``) alike. The verifier is built
once per process from the settings and started on the first request.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse

from keyswap.errors import ConfigError, MissingToken
from keyswap.verifier.permissions import DEFAULT_PERMISSION_CLAIMS, validate_scopes
from keyswap.verifier.responses import (
    Guard,
    Rejection,
    VerifierLike,
    headers_from_authorization,
    verifier_from_settings,
)

__all__ = [
    "REQUEST_ATTRIBUTE",
    "KeyswapMiddleware",
    "KeyswapSettings",
    "get_settings",
    "response",
    "verified_claims",
]

#: The request attribute holding the verified claims dict (``None`` when not verified).
REQUEST_ATTRIBUTE = "keyswap_claims"
# ``(guard, claims)``: which configuration verified the claims (and applied its ``SCOPES``).
VERIFIED_BY_ATTRIBUTE = "_keyswap_verified_by"

_KNOWN = frozenset(
    {
        "ISSUER",
        "JWKS_URL",
        "AUDIENCE",
        "ALGORITHMS",
        "LEEWAY",
        "ISSUERS",
        "VERIFIER",
        "EXEMPT_PATHS",
        "SCOPES",
        "PERMISSION_CLAIMS",
        "REQUIRED",
        "REALM",
        "ERROR_DESCRIPTIONS",
    }
)


@dataclass(frozen=True)
class KeyswapSettings:
    """``settings.KEYSWAP`` parsed once: the guard (verifier + policy) and the per-request options."""

    guard: Guard
    scopes: tuple[str, ...]
    required: bool
    owns_verifier: bool

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> KeyswapSettings:
        """Parse a ``KEYSWAP`` mapping.

        Raises:
            ConfigError: unknown keys, a missing issuer / JWKS URL, or an invalid value.
        """
        if not isinstance(config, Mapping):
            raise ConfigError("settings.KEYSWAP must be a dict")
        unknown = sorted(set(config) - _KNOWN)
        if unknown:
            raise ConfigError(f"unknown settings.KEYSWAP keys: {', '.join(unknown)}")
        verifier: VerifierLike | None = config.get("VERIFIER")
        owns = verifier is None
        if verifier is None:
            verifier = verifier_from_settings(config)
        try:
            guard = Guard(
                verifier,
                realm=config.get("REALM", "keyswap"),
                exempt_paths=config.get("EXEMPT_PATHS", ()),
                permission_claims=config.get("PERMISSION_CLAIMS", DEFAULT_PERMISSION_CLAIMS),
                error_descriptions=bool(config.get("ERROR_DESCRIPTIONS", True)),
                logger_name="keyswap.verifier.django",
            )
            scopes = validate_scopes(config.get("SCOPES", ()))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"settings.KEYSWAP: {exc}") from None
        return cls(guard, scopes, bool(config.get("REQUIRED", True)), owns)


_lock = threading.Lock()
_current: KeyswapSettings | None = None


def get_settings() -> KeyswapSettings:
    """The parsed ``settings.KEYSWAP`` of this process (built on first use, rebuilt when a test
    changes the setting).

    Raises:
        ConfigError: ``settings.KEYSWAP`` is missing or invalid.
    """
    global _current
    current = _current
    if current is not None:
        return current
    with _lock:
        if _current is None:
            config = getattr(settings, "KEYSWAP", None)
            if config is None:
                raise ConfigError("settings.KEYSWAP is not set")
            _current = KeyswapSettings.from_mapping(config)
        return _current


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _current
    if setting != "KEYSWAP":
        return
    with _lock:
        old, _current = _current, None
    if old is not None and old.owns_verifier:
        old.guard.verifier.close()


setting_changed.connect(_reset, dispatch_uid="keyswap.verifier.django.reset")


def response(rejection: Rejection) -> HttpResponse:
    """A Django :class:`HttpResponse` for ``rejection``, byte for byte the ASGI middleware's."""
    result = HttpResponse(
        rejection.body, status=rejection.status, content_type=rejection.content_type
    )
    for name, value in rejection.extra_headers.items():
        result[name] = value
    return result


class KeyswapMiddleware:
    """Django middleware (sync and async capable): verify the bearer token of every request that is
    not exempt; claims on ``request.keyswap_claims``.

    Raises:
        ConfigError: ``settings.KEYSWAP`` is missing or invalid (at start-up).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        get_settings()  # fail at start-up, not on the first request

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self._acall(request)
        config = get_settings()
        config.guard.ensure_started()
        setattr(request, REQUEST_ATTRIBUTE, None)
        if config.guard.is_exempt(request.path_info):
            return self.get_response(request)
        authorization = request.META.get("HTTP_AUTHORIZATION")
        if authorization is None and not config.required:
            return self.get_response(request)
        result = config.guard.authenticate_sync(authorization, config.scopes)
        if _another_scheme(config, result):
            return self.get_response(request)
        rejected = self._reject(request, config, result)
        return rejected if rejected is not None else self.get_response(request)

    async def _acall(self, request: HttpRequest) -> Any:
        config = get_settings()
        config.guard.ensure_started()
        setattr(request, REQUEST_ATTRIBUTE, None)
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        if config.guard.is_exempt(request.path_info):
            return await get_response(request)
        authorization = request.META.get("HTTP_AUTHORIZATION")
        if authorization is None and not config.required:
            return await get_response(request)
        result = await config.guard.authenticate(
            headers_from_authorization(authorization), config.scopes
        )
        if _another_scheme(config, result):
            return await get_response(request)
        rejected = self._reject(request, config, result)
        return rejected if rejected is not None else await get_response(request)

    @staticmethod
    def _reject(
        request: HttpRequest, config: KeyswapSettings, result: dict[str, Any] | Rejection
    ) -> HttpResponse | None:
        """The error response, or ``None`` after storing the claims on the request."""
        if isinstance(result, Rejection):
            config.guard.responder.log(request.method or "", request.path, result)
            return response(result)
        setattr(request, REQUEST_ATTRIBUTE, result)
        setattr(request, VERIFIED_BY_ATTRIBUTE, (config.guard, result))
        return None


def _another_scheme(config: KeyswapSettings, result: dict[str, Any] | Rejection) -> bool:
    """With ``REQUIRED=False``, an ``Authorization`` header of another scheme (``Basic ...``) is no
    bearer token at all: the request goes on, like one without the header."""
    return (
        not config.required and isinstance(result, Rejection) and result.label == MissingToken.label
    )


def verified_claims(request: HttpRequest, config: KeyswapSettings) -> dict[str, Any] | None:
    """The claims :class:`KeyswapMiddleware` verified for ``request`` with ``config`` (its
    ``SCOPES`` already applied), else ``None``."""
    claims = getattr(request, REQUEST_ATTRIBUTE, None)
    marker = getattr(request, VERIFIED_BY_ATTRIBUTE, None)
    if (
        isinstance(claims, dict)
        and isinstance(marker, tuple)
        and len(marker) == 2
        and marker[0] is config.guard
        and marker[1] is claims
    ):
        return claims
    return None
