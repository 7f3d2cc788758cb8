"""Take a server's listening address before anything else happens (``keyswap gateway|origin|demo``).

A server that finds its port taken only after it has loaded its data, printed its banner and started
its event loop fails noisily, and a demo may already have changed its data. :func:`bind_listeners`
binds the address up front: the caller hands the sockets to the server (uvicorn's ``sockets=``), or
closes them at once when the server binds by itself (granian) and only the check was wanted.
"""

from __future__ import annotations

import socket

from keyswap.errors import ConfigError

__all__ = ["bind_listeners", "listen_address"]


def listen_address(host: str, port: int) -> str:
    """``host:port`` for messages (``[::1]:8080`` for an IPv6 address)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{shown}:{port}"


def bind_listeners(host: str, port: int, *, backlog: int = 2048) -> list[socket.socket]:
    """Bind and listen on every address ``host`` resolves to (as asyncio's ``create_server`` does).

    The sockets have ``SO_REUSEADDR`` (a port in ``TIME_WAIT`` is reusable, one with a listener is not)
    and IPv6 sockets ``IPV6_V6ONLY``.

    Raises:
        ConfigError: ``cannot listen on HOST:PORT: <reason>`` (address already in use, permission
            denied, unknown host, ...); nothing stays bound.
    """
    where = listen_address(host, port)
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None,
            port,
            type=socket.SOCK_STREAM,
            proto=socket.IPPROTO_TCP,
            flags=socket.AI_PASSIVE,
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on {where}: {_reason(exc)}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"cannot listen on {where}: {_reason(exc)}") from None
    return sockets


def _reason(error: BaseException) -> str:
    text = (error.strerror if isinstance(error, OSError) else None) or str(error)
    text = text.strip() or type(error).__name__
    return text[:1].lower() + text[1:]
