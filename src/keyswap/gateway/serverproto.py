"""The HTTP/1.1 server protocol the gateway runs on: uvicorn's httptools protocol, trailers dropped.

uvicorn's httptools protocol appends every field llhttp reports to the request's ``scope["headers"]``
list, and llhttp reports the trailer fields of a chunked request (after its last chunk) through the
same callback. The ASGI task usually starts after the whole packet was parsed, so a field sent only in
the trailer (``Authorization`` included) would be seen as a request header: by the key check, and by the
header rules that decide what goes upstream. :class:`HeadOnlyHttpToolsProtocol` keeps only the fields of
the request head; trailer fields are dropped (the gateway never forwards request trailers).

uvicorn's h11 protocol already ignores trailers, so it is used as is when httptools is not installed.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util

__all__ = ["http_protocol"]


def http_protocol() -> type[asyncio.Protocol] | str:
    """The ``http`` setting of the gateway's uvicorn config (a protocol class, or ``"h11"``)."""
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    return _head_only_protocol()


@functools.cache
def _head_only_protocol() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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

    return HeadOnlyHttpToolsProtocol
