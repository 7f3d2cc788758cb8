"""``--log-format json``: one JSON object per line, the text line's fields, never a secret."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import httpx

from keyswap.gateway.accesslog import AccessLog
from keyswap.gateway.apikeys import ApiKeys, generate_key
from keyswap.gateway.secret import load_secret
from keyswap.logformat import JsonFormatter
from keyswap.store import Store
from tests.support.asgi_server import free_port
from tests.support.keyswap_process import KeyswapProcess
from tests.support.upstream import recording_upstream


def _logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    log = logging.getLogger(f"test.json.{name}.{time.monotonic_ns()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    return log, stream


def test_a_record_is_one_json_line_with_its_extra_fields() -> None:
    log, stream = _logger("plain")
    log.warning("two\nlines %s", "here", extra={"request_id": "r-1", "count": 3, "obj": object()})
    (line,) = stream.getvalue().splitlines()
    data = json.loads(line)
    assert data["message"] == "two\nlines here"
    assert data["level"] == "WARNING"
    assert data["logger"] == log.name
    assert data["request_id"] == "r-1"
    assert data["count"] == 3
    assert "obj" not in data  # only scalar fields
    assert data["time"].endswith("Z")
    assert time.strptime(data["time"][:19], "%Y-%m-%dT%H:%M:%S")


def test_an_exception_is_one_field_of_the_same_line() -> None:
    log, stream = _logger("exc")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    (line,) = stream.getvalue().splitlines()
    data = json.loads(line)
    assert data["message"] == "failed"
    assert "ValueError: boom" in data["exception"]


def test_access_lines_carry_the_text_lines_fields() -> None:
    log, stream = _logger("access")
    access = AccessLog(log, interval=3600)
    access.log("GET", b"/p/\x01x", 201, "acme", "key_1", time.perf_counter())
    access.log("POST", b"/refused", 401, None, None, time.perf_counter())
    access.flush()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"].startswith("GET /p/\\x01x 201 consumer=acme key_id=key_1 ")
    assert {k: first[k] for k in ("method", "path", "status", "consumer", "key_id")} == {
        "method": "GET",
        "path": "/p/\\x01x",
        "status": 201,
        "consumer": "acme",
        "key_id": "key_1",
    }
    assert isinstance(first["latency_ms"], float)
    assert second["consumer"] is None
    assert second["key_id"] is None
    assert second["status"] == 401


def _db_with_key(tmp_path: Path) -> tuple[str, str]:
    db_url = f"sqlite:///{tmp_path / 'keyswap.db'}"
    store = Store(db_url)
    try:
        store.create_consumer("acme", {})
        _, key = ApiKeys(store, load_secret(db_url, env={})).create("acme")
    finally:
        store.close()
    return db_url, key


def test_keyswap_gateway_json_logs_are_json_lines_without_secrets(tmp_path: Path) -> None:
    db_url, key = _db_with_key(tmp_path)
    port = free_port()
    wrong = generate_key()
    with recording_upstream() as upstream:
        args = ["gateway", "--upstream", upstream.url, "--port", str(port), "--db", db_url,
                "--alg", "ES256", "--log-format", "json", "--log-level", "debug"]  # fmt: skip
        gateway = KeyswapProcess(args, f"http://127.0.0.1:{port}")
        try:
            gateway.wait_ready("/__keyswap/health")
            url = gateway.url + "/logged?api_key=secret-in-query"
            ok = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert ok.status_code == 200
            refused = httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}, timeout=10)
            assert refused.status_code == 401
            token = upstream.last.header("authorization")[0].removeprefix("Bearer ")
        finally:
            log = gateway.stop()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert any(line["message"].startswith("keyswap gateway on http://") for line in lines)
    access = [line for line in lines if line["logger"] == "keyswap.access"]
    logged = [line for line in access if line["path"] == "/logged"]
    assert [(line["status"], line["consumer"]) for line in logged] == [(200, "acme"), (401, None)]
    assert logged[0]["method"] == "GET"
    assert logged[0]["key_id"].startswith("key_")
    for leaked in (key, key[3:33], wrong, token, "secret-in-query"):
        assert leaked not in log


def test_keyswap_origin_json_logs_uvicorn_lines_too() -> None:
    port = free_port()
    args = ["origin", "--jwks-url", f"http://127.0.0.1:{free_port()}/jwks", "--issuer",
            "https://issuer.example", "--port", str(port), "--log-format", "json",
            "--access-log"]  # fmt: skip
    origin = KeyswapProcess(args, f"http://127.0.0.1:{port}")
    try:
        origin.wait_ready("/__keyswap/health")
        httpx.get(origin.url + "/x", headers={"Authorization": "Bearer abc.def.ghi"}, timeout=10)
    finally:
        log = origin.stop()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    loggers = {line["logger"] for line in lines}
    assert "uvicorn.error" in loggers
    assert "uvicorn.access" in loggers
    assert any(name.startswith("keyswap") for name in loggers)
    assert "abc.def.ghi" not in log


class _SameJsonFormatter(JsonFormatter):
    """A subclass: the access log formats its lines through it like any other formatter."""


def test_json_access_lines_built_directly_match_what_the_formatter_writes() -> None:
    log = logging.getLogger(f"test.json.fast.{time.monotonic_ns()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    streams = []
    for formatter_class in (JsonFormatter, _SameJsonFormatter):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter_class())
        log.addHandler(handler)
        streams.append(stream)
    access = AccessLog(log, interval=3600)
    for n in range(50):
        consumer = "acmé" if n % 2 else None
        access.log("GET", f"/p/{n}\x01é".encode(), 200 + n, consumer, "k", time.perf_counter())
        time.sleep(0.001)
    access.flush()
    fast, general = (stream.getvalue() for stream in streams)
    assert fast.count("\n") == 50
    assert fast == general
