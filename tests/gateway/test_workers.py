"""``keyswap gateway --workers N``: one listening socket, N real worker processes, changes reach all."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyswap.gateway.apikeys import ApiKeys
from keyswap.gateway.secret import load_secret
from keyswap.gateway.workers import resolve_workers
from keyswap.store import Store
from tests.support.asgi_server import ServerThread, free_port, serving
from tests.support.keyswap_process import KeyswapProcess
from tests.support.running_gateway import eventually


class PortRecorder:
    """An upstream answering ``ok`` that remembers the client port of every request (one per
    upstream connection: each worker has its own keep-alive pool)."""

    def __init__(self) -> None:
        self.ports: set[int] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.ports.add(scope["client"][1])
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def upstream() -> Iterator[tuple[PortRecorder, ServerThread]]:
    app = PortRecorder()
    with serving(app, lifespan="off") as server:
        yield app, server


def db_with_key(tmp_path: Path) -> tuple[str, str, str]:
    db_url = f"sqlite:///{tmp_path / 'keyswap.db'}"
    store = Store(db_url)
    try:
        store.create_consumer("acme", {})
        record, key = ApiKeys(store, load_secret(db_url, env={})).create("acme")
    finally:
        store.close()
    return db_url, key, record.id


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def statuses(url: str, key: str, count: int) -> list[int]:
    """``count`` requests, each on a new connection (the kernel picks a worker for each)."""
    headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
    return [httpx.get(url + "/x", headers=headers, timeout=10).status_code for _ in range(count)]


@pytest.mark.slow
def test_two_workers_share_the_port_and_a_revocation_reaches_both(
    tmp_path: Path, upstream: tuple[PortRecorder, ServerThread]
) -> None:
    recorder, server = upstream
    db_url, key, key_id = db_with_key(tmp_path)
    port = free_port()
    args = ["gateway", "--upstream", server.url, "--port", str(port), "--db", db_url,
            "--alg", "ES256", "--workers", "2"]  # fmt: skip
    gateway = KeyswapProcess(args, f"http://127.0.0.1:{port}")
    try:
        gateway.wait_ready("/__keyswap/health")
        eventually(lambda: len(children(gateway.process.pid)) == 2, timeout=20)
        # Sequential requests: one worker would reuse one upstream connection; two use two.
        eventually(
            lambda: statuses(gateway.url, key, 10) == [200] * 10 and len(recorder.ports) >= 2
        )
        store = Store(db_url)
        try:
            ApiKeys(store, load_secret(db_url, env={})).revoke(key_id)
        finally:
            store.close()
        revoked_at = time.monotonic()
        # Every worker had the key cached; each must drop it within the poll bound (1 s + a poll).
        eventually(lambda: statuses(gateway.url, key, 20) == [401] * 20, timeout=5)
        assert time.monotonic() - revoked_at < 5
        workers = children(gateway.process.pid)
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(20) == 0
        for pid in workers:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text()
            )
    finally:
        log = gateway.stop()
    assert "2 worker processes" in log
    assert "rate limits are counted per worker" in log


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced(
    tmp_path: Path, upstream: tuple[PortRecorder, ServerThread]
) -> None:
    _, server = upstream
    db_url, key, _ = db_with_key(tmp_path)
    port = free_port()
    args = ["gateway", "--upstream", server.url, "--port", str(port), "--db", db_url,
            "--alg", "ES256", "--workers", "2"]  # fmt: skip
    gateway = KeyswapProcess(args, f"http://127.0.0.1:{port}")
    try:
        gateway.wait_ready("/__keyswap/health")
        eventually(lambda: gateway.log().count(" serving\n") == 2, timeout=20)
        first, second = children(gateway.process.pid)
        os.kill(first, signal.SIGKILL)
        eventually(
            lambda: (
                len(children(gateway.process.pid)) == 2
                and first not in children(gateway.process.pid)
            ),
            timeout=20,
        )
        assert second in children(gateway.process.pid)
        assert statuses(gateway.url, key, 10) == [200] * 10
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(20) == 0
    finally:
        log = gateway.stop()
    assert f"gateway worker {first} exited" in log
    assert log.count(" serving\n") == 3  # two, then the replacement


@pytest.mark.slow
def test_workers_stop_when_their_parent_is_killed(
    tmp_path: Path, upstream: tuple[PortRecorder, ServerThread]
) -> None:
    _, server = upstream
    db_url, _, _ = db_with_key(tmp_path)
    port = free_port()
    args = ["gateway", "--upstream", server.url, "--port", str(port), "--db", db_url,
            "--alg", "ES256", "--workers", "2"]  # fmt: skip
    gateway = KeyswapProcess(args, f"http://127.0.0.1:{port}")
    try:
        gateway.wait_ready("/__keyswap/health")
        eventually(lambda: len(children(gateway.process.pid)) == 2, timeout=20)
        workers = children(gateway.process.pid)
        gateway.process.kill()
        gateway.process.wait(10)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return "zombie" in Path(f"/proc/{pid}/status").read_text()

        eventually(lambda: all(gone(pid) for pid in workers), timeout=20)
    finally:
        gateway.stop()


@pytest.mark.parametrize("value", ["0", "-1", "two", "1025", ""])
def test_a_bad_worker_count_is_a_usage_error(tmp_path: Path, value: str) -> None:
    args = ["gateway", "--upstream", "http://127.0.0.1:9", "--db", str(tmp_path / "k.db")]
    process = KeyswapProcess([*args, "--workers", value], "http://127.0.0.1:9")
    assert process.process.wait(30) == 2
    log = process.stop()
    assert "--workers" in log
    assert "Traceback" not in log


def test_auto_is_one_worker_per_usable_cpu() -> None:
    assert resolve_workers("auto") == len(os.sched_getaffinity(0))
    assert resolve_workers(" AUTO ") == resolve_workers("auto")
    assert resolve_workers("3") == 3
