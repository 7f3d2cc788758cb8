"""Django REST framework: an authentication class and a scope permission over ``settings.KEYSWAP``.

::

    # settings.py (KEYSWAP as for keyswap.verifier.django; the middleware is optional)
    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": ["keyswap.verifier.drf.KeyswapAuthentication"],
        "DEFAULT_PERMISSION_CLASSES": ["keyswap.verifier.drf.HasScopes"],
    }

    # views.py
    class Orders(APIView):
        required_scopes = ["orders:read"]
        def get(self, request):
            return Response(request.auth)          # the verified claims dict

    # or per view: permission_classes = [HasScopes.require("orders:read")]

``request.user`` is a :class:`TokenUser` (``username`` = ``sub``), ``request.auth`` the claims dict.
Failures follow DRF's conventions (JSON ``{"detail": ...}``) with keyswap's statuses and headers:

- no token: 401, ``WWW-Authenticate: Bearer realm="..."`` (DRF's ``authenticate_header``);
- bad token: 401, ``WWW-Authenticate: Bearer realm="...", error="invalid_token", error_description=...``;
- missing scope: 403, ``WWW-Authenticate: Bearer realm="...", error="insufficient_scope", scope="..."``;
- keys unavailable: 503 with ``Retry-After``.

A request whose ``Authorization`` header uses another scheme is left to the other authentication
classes. When :class:`keyswap.verifier.django.KeyswapMiddleware` already verified the request (with
the same ``settings.KEYSWAP``), its claims are reused; otherwise the authentication class verifies the
token itself and applies ``KEYSWAP["SCOPES"]`` (403 ``insufficient_scope``), as the middleware would.

``required_scopes`` (on a view or a :class:`HasScopes` subclass) is read and validated once per
(permission, view) class, at its first request: a string is one scope; an invalid scope (one with a
space, a quote, ...) raises :class:`keyswap.errors.ConfigError` naming the view, which Django reports
as a server error for that request: a configuration mistake, never something a client can cause.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, NoReturn

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import (
    APIException,
    AuthenticationFailed,
    NotAuthenticated,
    PermissionDenied,
)
from rest_framework.permissions import BasePermission

from keyswap.errors import ConfigError, MissingToken
from keyswap.verifier.django import (
    REQUEST_ATTRIBUTE,
    VERIFIED_BY_ATTRIBUTE,
    get_settings,
    verified_claims,
)
from keyswap.verifier.permissions import validate_scopes
from keyswap.verifier.responses import Rejection

__all__ = [
    "HasScopes",
    "InsufficientScopeDenied",
    "KeysUnavailableError",
    "KeyswapAuthentication",
    "TokenAuthenticationFailed",
    "TokenUser",
]

_REJECTION_ATTRIBUTE = "_keyswap_rejection"


class TokenUser:
    """The ``request.user`` of a token-authenticated request: no database row, just the claims."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, claims: dict[str, Any]) -> None:
        self.claims = claims
        sub = claims.get("sub")
        self.username: str = sub if isinstance(sub, str) else ""
        self.pk = self.id = self.username

    def __str__(self) -> str:
        return self.username

    def get_username(self) -> str:
        """The token's ``sub``."""
        return self.username

    def has_perm(self, perm: str, obj: Any = None) -> bool:
        """Django model permissions do not apply to token users: always ``False``."""
        return False

    def has_perms(self, perm_list: Any, obj: Any = None) -> bool:
        """Always ``False`` (see :meth:`has_perm`)."""
        return False

    def has_module_perms(self, app_label: str) -> bool:
        """Always ``False`` (see :meth:`has_perm`)."""
        return False


class TokenAuthenticationFailed(AuthenticationFailed):  # type: ignore[misc]
    """401 for a bad token; DRF adds the challenge from ``authenticate_header``."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(detail=rejection.text, code=rejection.label)
        self.rejection = rejection


class KeysUnavailableError(APIException):  # type: ignore[misc]
    """503 with ``Retry-After`` (DRF sends ``wait`` as ``Retry-After``)."""

    status_code = 503
    default_code = "temporarily_unavailable"

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(detail=rejection.text, code=self.default_code)
        self.wait = int(rejection.header("retry-after") or 5)
        self.rejection = rejection


class InsufficientScopeDenied(PermissionDenied):  # type: ignore[misc]
    """403 with the ``insufficient_scope`` challenge."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(detail=rejection.text, code="insufficient_scope")
        self.auth_header = rejection.header("www-authenticate")
        self.rejection = rejection


def _raise(rejection: Rejection) -> NoReturn:
    if rejection.status == 503:
        raise KeysUnavailableError(rejection)
    if rejection.status == 403:
        raise InsufficientScopeDenied(rejection)
    raise TokenAuthenticationFailed(rejection)


class KeyswapAuthentication(BaseAuthentication):  # type: ignore[misc]
    """DRF authentication: ``Authorization: Bearer <jwt>`` verified with the ``settings.KEYSWAP``
    verifier; returns ``(TokenUser, claims)``, or ``None`` when there is no bearer token."""

    def authenticate(self, request: Any) -> tuple[TokenUser, dict[str, Any]] | None:
        """Verify the request's bearer token (once per request).

        Raises:
            TokenAuthenticationFailed: the token is invalid (401).
            InsufficientScopeDenied: the token lacks a ``KEYSWAP["SCOPES"]`` scope (403).
            KeysUnavailableError: no signing keys are available (503).
        """
        django_request = request._request
        config = get_settings()
        claims = verified_claims(django_request, config)
        if claims is not None:
            return TokenUser(claims), claims  # the middleware verified them and applied SCOPES
        authorization = request.META.get("HTTP_AUTHORIZATION")
        if authorization is None:
            return None
        config.guard.ensure_started()
        result = config.guard.authenticate_sync(authorization)
        if isinstance(result, Rejection):
            if result.label == MissingToken.label:
                return None  # another scheme: let the other authentication classes try
            setattr(django_request, _REJECTION_ATTRIBUTE, result)
            config.guard.responder.log(request.method, request.path, result)
            _raise(result)
        setattr(django_request, REQUEST_ATTRIBUTE, result)
        setattr(django_request, VERIFIED_BY_ATTRIBUTE, (config.guard, result))
        rejection = config.guard.check_scopes(result, config.scopes)
        if rejection is not None:  # KEYSWAP["SCOPES"] holds without the middleware too
            config.guard.responder.log(request.method, request.path, rejection)
            _raise(rejection)
        return TokenUser(result), result

    def authenticate_header(self, request: Any) -> str:
        """The ``WWW-Authenticate`` value DRF sends with 401s: the challenge of this request's
        rejection (``error="invalid_token"`` ...), or the bare ``Bearer realm="..."``."""
        rejection = getattr(request._request, _REJECTION_ATTRIBUTE, None)
        if isinstance(rejection, Rejection):
            return rejection.header("www-authenticate") or ""
        missing = get_settings().guard.responder.reject(MissingToken("no token"))
        return missing.header("www-authenticate") or ""


def _scopes_of(value: Any, where: str) -> tuple[str, ...]:
    """A ``required_scopes`` value as validated scopes: a string is one scope, else an iterable of
    scope strings.

    Raises:
        ConfigError: not a string or iterable of strings, or a scope that is not an RFC 6749 token.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    try:
        return validate_scopes(tuple(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.required_scopes: {exc}") from None


_required_cache: dict[tuple[type, type], tuple[str, ...]] = {}
_required_lock = threading.Lock()


def _required_for(permission: type, view: type) -> tuple[str, ...]:
    """The validated scopes ``permission`` requires on ``view`` (computed once per class pair)."""
    key = (permission, view)
    cached = _required_cache.get(key)
    if cached is not None:
        return cached
    own = _scopes_of(getattr(permission, "required_scopes", ()), permission.__qualname__)
    of_view = _scopes_of(getattr(view, "required_scopes", ()), view.__qualname__)
    required = tuple(dict.fromkeys((*own, *of_view)))
    with _required_lock:
        _required_cache[key] = required
    return required


class HasScopes(BasePermission):  # type: ignore[misc]
    """DRF permission: the token grants every scope in ``required_scopes`` (of this class, from
    :meth:`require`) and in the view's ``required_scopes`` attribute.

    Without a token it raises ``NotAuthenticated`` (401 with the challenge); with a token that lacks a
    scope, :class:`InsufficientScopeDenied` (403 with ``error="insufficient_scope", scope="..."``).
    ``required_scopes`` is validated once per (permission, view) class, at its first request: a string
    is one scope, and an invalid scope raises :class:`~keyswap.errors.ConfigError` naming the class.
    """

    required_scopes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def require(cls, *scopes: str) -> type[HasScopes]:
        """A subclass requiring ``scopes``: ``permission_classes = [HasScopes.require("a", "b")]``.

        Raises:
            ValueError: a scope is not an RFC 6749 scope token.
        """
        required = validate_scopes((*_scopes_of(cls.required_scopes, cls.__qualname__), *scopes))
        return type(f"HasScopes[{' '.join(required)}]", (cls,), {"required_scopes": required})

    def has_permission(self, request: Any, view: Any) -> bool:
        """Check the scopes of ``request.auth`` (the claims).

        Raises:
            NotAuthenticated: no token (401).
            InsufficientScopeDenied: a required scope is missing (403).
            ConfigError: ``required_scopes`` holds an invalid scope (a configuration mistake).
        """
        claims = request.auth
        if not isinstance(claims, dict):
            raise NotAuthenticated(detail="No token provided")
        required = _required_for(type(self), type(view))
        rejection = get_settings().guard.check_scopes(claims, required)
        if rejection is not None:
            get_settings().guard.responder.log(request.method, request.path, rejection)
            raise InsufficientScopeDenied(rejection)
        return True
