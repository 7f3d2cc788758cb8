"""Binding a server's address up front: a port in use is one clear error, and nothing stays bound."""

from __future__ import annotations

import socket

import pytest

from keyswap.errors import ConfigError
from keyswap.ports import bind_listeners, listen_address
from tests.support.asgi_server import free_port


def test_a_free_port_is_bound_and_listening() -> None:
    port = free_port()
    sockets = bind_listeners("127.0.0.1", port)
    try:
        assert [s.getsockname() for s in sockets] == [("127.0.0.1", port)]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # accepted into the backlog: the socket listens
    finally:
        for sock in sockets:
            sock.close()


def test_a_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            bind_listeners("127.0.0.1", port)
    assert caught.value.reason == f"cannot listen on 127.0.0.1:{port}: address already in use"


def test_after_the_owner_closes_the_port_can_be_bound_again() -> None:
    port = free_port()
    first = bind_listeners("127.0.0.1", port)
    for sock in first:
        sock.close()
    for sock in bind_listeners("127.0.0.1", port):
        sock.close()


def test_an_unknown_host_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"^cannot listen on no\.such\.host\.invalid:8080: "):
        bind_listeners("no.such.host.invalid", 8080)


def test_ipv6_addresses_are_bracketed_in_messages() -> None:
    assert listen_address("::1", 8080) == "[::1]:8080"
    assert listen_address("127.0.0.1", 8080) == "127.0.0.1:8080"
