"""The access log: lines queued on the request path, written in batches by a background thread."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import pytest

from keyswap.gateway.accesslog import GATEWAY_FORMAT, AccessLog


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, CountingStream]]:
    log = logging.getLogger(f"test.access.{time.monotonic_ns()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    stream = CountingStream()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(created).3f %(message)s"))
    log.addHandler(handler)
    yield log, stream
    log.removeHandler(handler)


def test_lines_are_written_in_one_batch_with_the_request_time(
    logger: tuple[logging.Logger, CountingStream],
) -> None:
    log, stream = logger
    access = AccessLog(log, interval=3600)  # the writer never wakes: flush by hand
    before = time.time()
    for n in range(100):
        access.log("GET", f"/n/{n}".encode(), 200, "acme", "key_x", time.perf_counter())
    assert stream.getvalue() == ""  # nothing written on the request path
    time.sleep(0.05)
    assert access.flush() == 100
    lines = stream.getvalue().splitlines()
    assert len(lines) == 100
    assert stream.writes == 1  # one write for the batch, not one per line
    created, message = lines[0].split(" ", 1)
    assert before - 0.01 <= float(created) < before + 0.04  # the request's time, not the write's
    assert message.startswith("GET /n/0 200 consumer=acme key_id=key_x ")
    assert message.endswith("ms")
    access.close()


def test_the_writer_thread_writes_lines_soon_and_close_writes_the_rest(
    logger: tuple[logging.Logger, CountingStream],
) -> None:
    log, stream = logger
    access = AccessLog(log, interval=0.01)
    access.log("GET", b"/a", 401, None, None, time.perf_counter())
    deadline = time.monotonic() + 5
    while "GET /a 401 consumer=- key_id=- " not in stream.getvalue():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    access.log("GET", b"/b", 200, "acme", "key_x", time.perf_counter())
    access.close()
    assert "GET /b 200" in stream.getvalue()


def test_a_log_that_cannot_keep_up_drops_and_counts_lines(
    logger: tuple[logging.Logger, CountingStream], caplog: pytest.LogCaptureFixture
) -> None:
    log, _stream = logger
    access = AccessLog(log, interval=3600, max_pending=3)
    for _ in range(5):
        access.log("GET", b"/x", 200, "acme", "key_x", time.perf_counter())
    with caplog.at_level(logging.WARNING, logger="keyswap.gateway"):
        assert access.flush() == 3
    assert "2 access-log lines dropped" in caplog.text
    access.close()


def test_nothing_is_queued_when_info_is_off(logger: tuple[logging.Logger, CountingStream]) -> None:
    log, stream = logger
    log.setLevel(logging.WARNING)
    access = AccessLog(log)
    access.log("GET", b"/x", 200, "acme", "key_x", time.perf_counter())
    assert access.flush() == 0
    assert stream.getvalue() == ""


class _SameFormatter(logging.Formatter):
    """Formats like the gateway's formatter but is not it: takes the general (record) path."""


def test_lines_built_directly_match_what_the_formatter_writes() -> None:
    log = logging.getLogger(f"test.access.fast.{time.monotonic_ns()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    streams = []
    for formatter_class in (logging.Formatter, _SameFormatter):
        stream = CountingStream()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter_class(GATEWAY_FORMAT))
        log.addHandler(handler)
        streams.append(stream)
    access = AccessLog(log, interval=3600)
    for n in range(50):
        access.log("GET", f"/p/{n}\x01".encode(), 200 + n, "acme", None, time.perf_counter())
        time.sleep(0.001)
    access.flush()
    fast, general = (stream.getvalue() for stream in streams)
    assert fast.count("\n") == 50
    assert " INFO test.access.fast." in fast
    assert "GET /p/0\\x01 200 consumer=acme key_id=- " in fast
    assert fast == general
