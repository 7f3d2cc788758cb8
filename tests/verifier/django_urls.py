"""URLconf for tests/verifier/test_django.py: plain Django views and DRF views."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from django.http import HttpRequest, JsonResponse
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from keyswap.verifier.drf import HasScopes


def me(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"claims": getattr(request, "keyswap_claims", "unset")})


async def async_me(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"claims": getattr(request, "keyswap_claims", "unset")})


class Orders(APIView):  # type: ignore[misc]
    required_scopes: ClassVar[list[str]] = ["orders:read"]

    def get(self, request: Request) -> Any:
        return Response({"user": request.user.username, "claims": request.auth})


class Admin(APIView):  # type: ignore[misc]
    permission_classes: ClassVar[list[type[HasScopes]]] = [HasScopes.require("admin")]

    def get(self, request: Request) -> Any:
        return Response({"admin": True})


class AdminByString(APIView):  # type: ignore[misc]
    required_scopes = "admin"  # one scope, never the scopes a d m i n

    def get(self, request: Request) -> Any:
        return Response({"admin": True})


class BadScopes(APIView):  # type: ignore[misc]
    required_scopes: ClassVar[list[str]] = ["orders read"]

    def get(self, request: Request) -> Any:
        return Response({"never": True})


class PlantClaims:
    """A middleware of some other component that leaves a claims-shaped dict on the request."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        request.keyswap_claims = {"sub": "planted", "scope": "orders:read admin"}
        return self.get_response(request)


urlpatterns = [
    path("me", me),
    path("async-me", async_me),
    path("health", me),
    path("api/orders", Orders.as_view()),
    path("api/admin", Admin.as_view()),
    path("api/admin-by-string", AdminByString.as_view()),
    path("api/bad-scopes", BadScopes.as_view()),
]
