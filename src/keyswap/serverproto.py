"""The HTTP/1.1 server protocol keyswap's servers run on: uvicorn's httptools protocol, trailers dropped.

uvicorn's httptools protocol appends every field llhttp reports to the request's ``scope["headers"]``
list, and llhttp reports the trailer fields of a chunked request (after its last chunk) through the
same callback. The ASGI task usually starts after the whole packet was parsed, so a field sent only in
the trailer (``Authorization`` included) would be seen as a request header: by the gateway's key check
and header rules, and by the verifier's middleware behind ``keyswap origin``.
:class:`HeadOnlyHttpToolsProtocol` keeps only the fields of the request head; trailer fields are dropped
(keyswap never forwards request trailers).

Used by ``keyswap gateway`` (whose :class:`keyswap.gateway.clientconn.GuardedHttpToolsProtocol` is a
subclass) and ``keyswap origin`` on uvicorn. Your own app on uvicorn can use it too:
``uvicorn app:app --http keyswap.serverproto:HeadOnlyHttpToolsProtocol`` (or ``--http h11``, which
ignores trailers). It needs uvicorn and httptools (the ``server`` or ``gateway`` extra).
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeadOnlyHttpToolsProtocol", "http_protocol"]


class HeadOnlyHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, keeping only the request head's fields."""

    _in_head = True

    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()


def http_protocol() -> type[HeadOnlyHttpToolsProtocol]:
    """The ``http`` setting of the gateway's uvicorn config without client limits."""
    return HeadOnlyHttpToolsProtocol
