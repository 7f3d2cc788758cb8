"""The HTTP/1.1 server protocol the gateway runs on: uvicorn's httptools protocol, trailers dropped.

uvicorn's httptools protocol appends every field llhttp reports to the request's ``scope["headers"]``
list, and llhttp reports the trailer fields of a chunked request (after its last chunk) through the
same callback. The ASGI task usually starts after the whole packet was parsed, so a field sent only in
the trailer (``Authorization`` included) would be seen as a request header: by the key check, and by the
header rules that decide what goes upstream. :class:`HeadOnlyHttpToolsProtocol` keeps only the fields of
the request head; trailer fields are dropped (the gateway never forwards request trailers).

The gateway's other protocol, :class:`keyswap.gateway.clientconn.GuardedHttpToolsProtocol` (client
timeouts and caps), is a subclass of this one. (httptools comes with the ``gateway`` extra; uvicorn's h11
protocol, which also ignores trailers, is never used by the gateway.)
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
