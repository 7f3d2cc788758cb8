"""Graceful drain of a real ``keyswap gateway`` process: SIGTERM, requests in flight finish, exit 0.

Real ``keyswap gateway`` subprocesses over one SQLite file, a real upstream, and for the rolling
restart a tiny TCP load balancer (:mod:`tests.support.balancer`) in front of two gateways.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyswap.gateway.apikeys import ApiKeys
from keyswap.gateway.secret import load_secret
from keyswap.store import Store
from tests.support.asgi_server import ServerThread, free_port, serving
from tests.support.balancer import balancing
from tests.support.keyswap_process import KeyswapProcess
from tests.support.running_gateway import eventually

pytestmark = pytest.mark.slow


class SlowUpstream:
    """``/slow/<seconds>`` answers ``done`` after that long; anything else at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.finished = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        self.in_flight += 1
        try:
            if path.startswith("/slow/"):
                await asyncio.sleep(float(path.rsplit("/", 1)[1]))
        finally:
            self.in_flight -= 1
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"done"})
        self.finished += 1


@pytest.fixture
def upstream() -> Iterator[tuple[SlowUpstream, ServerThread]]:
    app = SlowUpstream()
    with serving(app, lifespan="off") as server:
        yield app, server


def db_with_key(tmp_path: Path) -> tuple[Path, str]:
    db_path = tmp_path / "keyswap.db"
    db_url = f"sqlite:///{db_path}"
    store = Store(db_url)
    try:
        store.create_consumer("acme", {})
        _, key = ApiKeys(store, load_secret(db_url, env={})).create("acme")
    finally:
        store.close()
    return db_path, key


def start_gateway(db: Path, upstream_url: str, port: int, *extra: str) -> KeyswapProcess:
    args = [
        "gateway",
        "--upstream", upstream_url,
        "--port", str(port),
        "--db", str(db),
        "--alg", "ES256",
        "--log-level", "warning",
        *extra,
    ]  # fmt: skip
    process = KeyswapProcess(args, f"http://127.0.0.1:{port}")
    process.wait_ready("/__keyswap/health")
    return process


def exit_code(process: KeyswapProcess, timeout: float = 20) -> int:
    code = process.process.wait(timeout=timeout)
    process.stop()
    return code


def refuses_new_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return False
    except OSError:
        return True


def test_sigterm_stops_accepting_finishes_requests_in_flight_and_exits_0(
    tmp_path: Path, upstream: tuple[SlowUpstream, ServerThread]
) -> None:
    app, server = upstream
    db, key = db_with_key(tmp_path)
    port = free_port()
    gateway = start_gateway(db, server.url, port, "--drain-timeout", "10")
    answers: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: answers.append(
            httpx.get(
                f"{gateway.url}/slow/1.5", headers={"Authorization": f"Bearer {key}"}, timeout=20
            )
        )
    )
    client.start()
    eventually(lambda: app.in_flight == 1)
    gateway.process.send_signal(signal.SIGTERM)
    eventually(lambda: refuses_new_connections(port))
    assert gateway.alive  # still draining
    client.join(20)
    assert [(a.status_code, a.text) for a in answers] == [(200, "done")]
    assert exit_code(gateway) == 0


def test_a_request_longer_than_the_drain_timeout_is_cut_and_the_gateway_still_exits_0(
    tmp_path: Path, upstream: tuple[SlowUpstream, ServerThread]
) -> None:
    app, server = upstream
    db, key = db_with_key(tmp_path)
    gateway = start_gateway(
        db, server.url, free_port(), "--drain-timeout", "0.5", "--log-level", "info"
    )
    outcome: list[str] = []

    def call() -> None:
        try:
            answer = httpx.get(
                f"{gateway.url}/slow/30", headers={"Authorization": f"Bearer {key}"}, timeout=30
            )
            outcome.append(f"{answer.status_code} {answer.text}")
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)

    client = threading.Thread(target=call)
    client.start()
    eventually(lambda: app.in_flight == 1)
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    assert exit_code(gateway) == 0
    assert time.monotonic() - started < 5
    client.join(10)
    assert outcome == ["503 Service unavailable"]
    log = gateway.log()
    assert "Traceback" not in log
    # the access log says what the client got: 503, not a 500
    assert next(line for line in log.splitlines() if "GET /slow/30 " in line).split()[-4] == "503"


def test_a_bad_drain_timeout_is_a_usage_error(tmp_path: Path) -> None:
    args = ["gateway", "--upstream", "http://127.0.0.1:9", "--db", str(tmp_path / "k.db")]
    process = KeyswapProcess([*args, "--drain-timeout", "-1"], "http://127.0.0.1:9")
    assert process.process.wait(30) == 2
    assert "--drain-timeout" in process.stop()


class SteadyClients:
    """Clients sending requests back to back through ``port``, each on a new connection."""

    def __init__(self, port: int, key: str, paths: list[str]) -> None:
        self.port = port
        self.key = key
        self.paths = paths
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(p,)) for p in paths]

    def _run(self, path: str) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Connection": "close"}
        while not self._stop.is_set():
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=20
                )
                if answer.status_code == 200 and answer.text == "done":
                    self.ok += 1
                else:
                    self.failures.append(f"{path}: {answer.status_code} {answer.text[:60]}")
            except httpx.HTTPError as exc:
                self.failures.append(f"{path}: {type(exc).__name__} {exc}")

    def __enter__(self) -> SteadyClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_a_rolling_restart_under_steady_traffic_fails_no_request(
    tmp_path: Path, upstream: tuple[SlowUpstream, ServerThread]
) -> None:
    _, server = upstream
    db, key = db_with_key(tmp_path)
    ports = [free_port(), free_port()]
    nodes = [start_gateway(db, server.url, port) for port in ports]
    codes: list[int] = []
    try:
        with (
            balancing(ports) as balancer,
            SteadyClients(balancer.port, key, ["/fast", "/fast", "/slow/0.3", "/slow/0.7"]) as load,
        ):
            time.sleep(0.5)
            for i, port in enumerate(ports):  # one node at a time, the other one serves
                before = load.ok
                nodes[i].process.send_signal(signal.SIGTERM)
                codes.append(exit_code(nodes[i]))
                nodes[i] = start_gateway(db, server.url, port)
                eventually(lambda: load.ok > before + 20, timeout=20)  # noqa: B023
    finally:
        for node in nodes:
            node.stop()
    assert load.failures == []
    assert codes == [0, 0]
    assert load.ok > 40


def test_a_connection_opened_before_sigterm_still_gets_its_request_answered(
    tmp_path: Path, upstream: tuple[SlowUpstream, ServerThread]
) -> None:
    app, server = upstream
    db, key = db_with_key(tmp_path)
    port = free_port()
    gateway = start_gateway(db, server.url, port, "--drain-timeout", "10")
    try:
        # One request in flight keeps the node draining; a second connection is open but silent.
        client = threading.Thread(
            target=lambda: httpx.get(
                f"{gateway.url}/slow/2", headers={"Authorization": f"Bearer {key}"}, timeout=20
            )
        )
        client.start()
        eventually(lambda: app.in_flight == 1)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as quiet:
            time.sleep(0.2)  # accepted by the server
            gateway.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the drain has begun: uvicorn alone would have closed this connection
            quiet.sendall(
                b"GET /fast HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
                + key.encode()
                + b"\r\n\r\n"
            )
            answer = b""
            while chunk := quiet.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nconnection: close\r\n" in answer.lower()
        assert answer.endswith(b"done")
        client.join(20)
        assert exit_code(gateway) == 0
    finally:
        gateway.stop()


class _Cycle:
    """Like uvicorn's request cycle: ``send`` is its bound method, ``response_started`` its flag."""

    def __init__(self) -> None:
        self.response_started = False
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.response_started = True
        self.sent.append(message)


async def _cut_after_drain(*, start_response: bool, uvicorn_like: bool) -> list[dict[str, Any]]:
    from keyswap.gateway.serve import DrainGuard

    sent: list[dict[str, Any]] = []

    async def plain_send(message: dict[str, Any]) -> None:
        sent.append(message)

    cycle = _Cycle()
    send = cycle.send if uvicorn_like else plain_send

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if start_response:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(30)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    guard = DrainGuard(app, drain_timeout=0.01)
    task = asyncio.ensure_future(guard({"type": "http"}, receive, send))
    await asyncio.sleep(0.01)
    guard.cut = True
    task.cancel()
    await task
    return cycle.sent if uvicorn_like else sent


@pytest.mark.parametrize("uvicorn_like", [True, False])
def test_a_request_cut_at_the_drain_timeout_is_answered_503_unless_its_response_started(
    uvicorn_like: bool,
) -> None:
    # uvicorn's send tells whether the response started (no wrapper); any other send is wrapped
    cut = asyncio.run(_cut_after_drain(start_response=False, uvicorn_like=uvicorn_like))
    assert [m.get("status") for m in cut] == [503, None]
    assert cut[1]["body"] == b"Service unavailable"
    streaming = asyncio.run(_cut_after_drain(start_response=True, uvicorn_like=uvicorn_like))
    assert [m.get("status") for m in streaming] == [200]


def test_the_drain_guard_hands_http_scopes_to_the_apps_own_http_handler() -> None:
    from keyswap.gateway.serve import DrainGuard

    seen: list[str] = []

    class App:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen.append("__call__ " + scope["type"])

        async def handle(self, scope: Any, receive: Any, send: Any) -> None:
            seen.append("http_handler " + scope["type"])
            await send({"type": "http.response.start", "status": 204, "headers": []})

        @property
        def http_handler(self) -> Any:
            return self.handle

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def run() -> list[dict[str, Any]]:
        guard = DrainGuard(App(), drain_timeout=1.0)
        cycle = _Cycle()
        await guard({"type": "http"}, receive, cycle.send)
        await guard({"type": "lifespan"}, receive, cycle.send)
        return cycle.sent

    sent = asyncio.run(run())
    assert seen == ["http_handler http", "__call__ lifespan"]
    assert [m["status"] for m in sent] == [204]
