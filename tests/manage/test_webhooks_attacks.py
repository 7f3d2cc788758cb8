"""Attacks on the webhook URL check: numeric host forms the C library reads as IPv4 addresses, and
IPv6 literals that embed private IPv4 addresses (no I/O: refused before anything is stored)."""

from __future__ import annotations

import pytest

from keyswap.errors import InvalidInput
from keyswap.manage.webhooks import validate_url


@pytest.mark.parametrize(
    "url",
    [
        "https://2852039166/latest/meta-data/",  # 169.254.169.254 as one number
        "https://0xa9fea9fe/",
        "https://0xa9.0xfe.0xa9.0xfe/",
        "https://0251.0376.0251.0376/",  # octal
        "https://169.254.43518/",
        "https://127.1/",
        "https://0x7f.1:8081/v1/consumers",
        "https://0/",
        "https://10.1/",
        "https://169.254.169.254./",  # trailing dot
        "https://[::ffff:127.0.0.1]/",
        "https://[fe80::1%25eth0]/",
        "https://[64:ff9b::a9fe:a9fe]/",
        "https://[2002:a9fe:a9fe::1]/",
        "https://[::7f00:1]/",
        "https://[fec0::1]/",
    ],
)
def test_numeric_and_embedded_forms_of_private_addresses_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput, match=r"non-public address|loopback"):
        validate_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/in",
        "https://1572395042/in",  # 93.184.216.34 as one number: public, accepted
        "https://123.example.com/in",
        "https://0x7f.example.com/in",
        "https://[2606:4700::1111]/in",
    ],
)
def test_public_hosts_are_accepted(url: str) -> None:
    assert validate_url(url) == url


def test_a_numeric_loopback_form_is_loopback_when_allowed() -> None:
    assert validate_url("http://127.1:8080/in", allow_http_loopback=True)
