"""Prometheus metrics of a real gateway, scraped over HTTP from its own listener."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from keyswap.gateway.cluster import ClusterSettings
from keyswap.gateway.metrics import (
    BUCKETS,
    GatewayMetrics,
    SnapshotDirectory,
    SnapshotWriter,
    collector,
    merge,
)
from keyswap.gateway.metricsserver import MetricsServer
from keyswap.gateway.ratelimit import parse_rate
from tests.support.asgi_server import free_port
from tests.support.keyswap_process import KeyswapProcess
from tests.support.running_gateway import Gateway, eventually, running_gateway
from tests.support.upstream import RecordingUpstream, recording_upstream

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@contextmanager
def metrics_listener(metrics: GatewayMetrics) -> Iterator[MetricsServer]:
    registry = CollectorRegistry()
    registry.register(collector(metrics.snapshot))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = MetricsServer(sock, registry).start()
    try:
        yield server
    finally:
        server.close()


def scrape(server: MetricsServer) -> tuple[str, Samples]:
    response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, parse(response.text)


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:
        yield up


@contextmanager
def measured(
    tmp_path: Path, upstream_url: str, cluster: ClusterSettings | None = None, **settings: Any
) -> Iterator[tuple[Gateway, MetricsServer]]:
    metrics = GatewayMetrics()
    with (
        running_gateway(
            tmp_path,
            upstream_url,
            gateway_options={"metrics": metrics},
            cluster=cluster,
            **settings,
        ) as gateway,
        metrics_listener(metrics) as server,
    ):
        yield gateway, server


def test_counters_move_with_requests_and_refusals(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with measured(tmp_path, upstream.url) as (gateway, server):
        assert gateway.app.warmed.wait(10)
        _, key = gateway.admin.create("acme")  # after the warm start: not cached yet
        _, before = scrape(server)
        assert value(before, "keyswap_gateway_requests_total", status_class="2xx") == 0
        assert gateway.get("/a", key=key).status_code == 200
        assert gateway.get("/b", key=key).status_code == 200
        assert httpx.get(gateway.url + "/c", timeout=10).status_code == 401
        assert gateway.get("/d", key="ks_nope").status_code == 401
        _, after = scrape(server)
    assert value(after, "keyswap_gateway_requests_total", status_class="2xx") == 2
    assert value(after, "keyswap_gateway_requests_total", status_class="4xx") == 2
    assert value(after, "keyswap_gateway_request_duration_seconds_count") == 4
    assert value(after, "keyswap_gateway_request_duration_seconds_sum") > 0
    assert value(after, "keyswap_gateway_request_duration_seconds_bucket", le="+Inf") == 4
    assert value(after, "keyswap_gateway_upstream_duration_seconds_count") == 2
    # The first request looked the key up, the second found it in memory.
    assert value(after, "keyswap_gateway_key_cache_misses_total") >= 1
    assert value(after, "keyswap_gateway_key_cache_hits_total") >= 1
    # The first key's token at the warm start, the new key's on its first request.
    assert value(after, "keyswap_gateway_tokens_minted_total") == 2
    assert value(after, "keyswap_gateway_signing_key_age_seconds") >= 0
    assert ("keyswap_gateway_signing_key_age_seconds", ()) in after
    assert value(after, "keyswap_gateway_refusals_total", reason="quota") == 0
    assert ("keyswap_gateway_refusals_total", (("reason", "quota"),)) in after
    assert value(after, "keyswap_gateway_upstream_requests_in_flight") == 0


def test_no_consumer_or_key_appears_in_the_metrics(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with measured(tmp_path, upstream.url) as (gateway, server):
        assert gateway.get("/a").status_code == 200
        text, samples = scrape(server)
    assert "acme" not in text
    assert gateway.key_id not in text
    assert gateway.key not in text
    labels = {name for _, pairs in samples for name, _ in pairs}
    assert labels <= {"status_class", "kind", "reason", "le"}


def test_metrics_are_not_served_on_the_public_port(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with measured(tmp_path, upstream.url) as (gateway, _server):
        without_key = httpx.get(gateway.url + "/metrics", timeout=10)
        with_key = gateway.get("/metrics")
        reserved = httpx.get(gateway.url + "/__keyswap/metrics", timeout=10)
    assert without_key.status_code == 401
    assert "keyswap_gateway" not in without_key.text
    # With a key, /metrics is the upstream's own path like any other.
    assert with_key.status_code == 200
    assert "keyswap_gateway" not in with_key.text
    assert upstream.last.raw_path == b"/metrics"
    assert reserved.status_code == 404
    assert "keyswap_gateway" not in reserved.text


def test_the_metrics_listener_serves_only_get_metrics(tmp_path: Path) -> None:
    with metrics_listener(GatewayMetrics()) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(base + "/", timeout=10).status_code == 404
        assert httpx.get(base + "/metricsx", timeout=10).status_code == 404
        assert httpx.post(base + "/metrics", timeout=10).status_code == 405
        assert httpx.head(base + "/metrics", timeout=10).status_code == 200
        openmetrics = httpx.get(
            base + "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            timeout=10,
        )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_upstream_errors_are_counted_by_kind(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with measured(tmp_path / "slow", upstream.url, upstream_timeout=0.3) as (gateway, server):
        assert gateway.get("/stall").status_code == 504
        upstream.release()
        _, slow = scrape(server)
    assert value(slow, "keyswap_gateway_upstream_errors_total", kind="timeout") == 1
    assert value(slow, "keyswap_gateway_requests_total", status_class="5xx") == 1
    closed = f"http://127.0.0.1:{free_port()}"
    with measured(tmp_path / "down", closed) as (gateway, server):
        assert gateway.get("/x").status_code == 502
        _, down = scrape(server)
    assert value(down, "keyswap_gateway_upstream_errors_total", kind="connect") == 1
    assert value(down, "keyswap_gateway_upstream_errors_total", kind="timeout") == 0


def test_rate_limit_refusals_are_counted(tmp_path: Path, upstream: RecordingUpstream) -> None:
    cluster = ClusterSettings(rate_limit=parse_rate("1/60s"))
    with measured(tmp_path, upstream.url, cluster=cluster) as (gateway, server):
        assert gateway.get("/a").status_code == 200
        assert gateway.get("/a").status_code == 429
        assert gateway.get("/a").status_code == 429
        _, samples = scrape(server)
    assert value(samples, "keyswap_gateway_refusals_total", reason="rate_limit") == 2
    assert value(samples, "keyswap_gateway_refusals_total", reason="quota") == 0


def test_a_quota_refusal_hook_is_exported() -> None:
    metrics = GatewayMetrics()
    metrics.refuse("quota")
    with metrics_listener(metrics) as server:
        _, samples = scrape(server)
    assert value(samples, "keyswap_gateway_refusals_total", reason="quota") == 1


def test_store_failures_and_fallbacks_are_read_from_the_key_service(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with measured(tmp_path, upstream.url) as (gateway, server):
        assert gateway.get("/a").status_code == 200
        api_keys = gateway.app.api_keys
        api_keys.store_failures += 2  # type: ignore[attr-defined]
        api_keys.fallbacks += 1  # type: ignore[attr-defined]
        _, samples = scrape(server)
    assert value(samples, "keyswap_gateway_store_errors_total") == 2
    assert value(samples, "keyswap_gateway_store_fallbacks_total") == 1


def test_histogram_buckets_are_cumulative() -> None:
    metrics = GatewayMetrics()
    metrics.observe(200, 0.0001)
    metrics.observe(200, 0.003)
    metrics.observe(500, 100.0)
    with metrics_listener(metrics) as server:
        _, samples = scrape(server)
    name = "keyswap_gateway_request_duration_seconds_bucket"
    assert value(samples, name, le=repr(BUCKETS[0])) == 1
    assert value(samples, name, le="0.005") == 2
    assert value(samples, name, le="30.0") == 2
    assert value(samples, name, le="+Inf") == 3
    assert value(samples, "keyswap_gateway_requests_total", status_class="5xx") == 1


def test_worker_snapshots_sum_and_keep_counts_of_exited_workers(tmp_path: Path) -> None:
    directory = SnapshotDirectory()
    try:
        mine = GatewayMetrics()
        mine.observe(200, 0.01)
        mine.gauges["connections_open"] = lambda: 3
        SnapshotWriter(mine, directory.path).write()
        gone = GatewayMetrics()
        for _ in range(4):
            gone.observe(404, 0.01)
        gone.gauges["connections_open"] = lambda: 5
        dead_pid = 2**22 + 12345  # above pid_max's default: never a live process
        snap = gone.snapshot()
        Path(directory.path, f"{dead_pid}.json").write_text(json.dumps(snap))
        total = directory.read()
        assert total["requests"]["2xx"] == 1
        assert total["requests"]["4xx"] == 4
        assert total["gauges"]["connections_open"] == 3  # the exited worker's gauges are dropped
        assert not Path(directory.path, f"{dead_pid}.json").exists()
        again = directory.read()  # its counts stay, folded into the total
        assert again["requests"]["4xx"] == 4
        assert again["duration"][1] == pytest.approx(0.05)
        assert Path(directory.path, f"{os.getpid()}.json").exists()
    finally:
        directory.close()
    assert not Path(directory.path).exists()


def test_merge_takes_the_oldest_signing_key_age() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.gauges["signing_key_age"] = lambda: 10.0
    b.gauges["signing_key_age"] = lambda: 12.0
    assert merge([a.snapshot(), b.snapshot()])["gauges"]["signing_key_age"] == 12.0


def _gateway_args(upstream_url: str, db_url: str, port: int, metrics_port: int) -> list[str]:
    return ["gateway", "--upstream", upstream_url, "--port", str(port), "--db", db_url,
            "--alg", "ES256", "--metrics-port", str(metrics_port)]  # fmt: skip


def _key(tmp_path: Path) -> tuple[str, str]:
    from keyswap.gateway.apikeys import ApiKeys
    from keyswap.gateway.secret import load_secret
    from keyswap.store import Store

    db_url = f"sqlite:///{tmp_path / 'keyswap.db'}"
    store = Store(db_url)
    try:
        store.create_consumer("acme", {})
        _, key = ApiKeys(store, load_secret(db_url, env={})).create("acme")
    finally:
        store.close()
    return db_url, key


def _scrape_port(port: int) -> Samples:
    return parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_keyswap_gateway_metrics_port_counts_every_worker(
    tmp_path: Path, upstream: RecordingUpstream, workers: int
) -> None:
    db_url, key = _key(tmp_path)
    port, metrics_port = free_port(), free_port()
    args = [*_gateway_args(upstream.url, db_url, port, metrics_port), "--workers", str(workers)]
    gateway = KeyswapProcess(args, f"http://127.0.0.1:{port}")
    try:
        gateway.wait_ready("/__keyswap/health")
        headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
        for _ in range(10):  # a new connection each: with workers, the kernel spreads them
            assert httpx.get(gateway.url + "/x", headers=headers, timeout=10).status_code == 200

        def counted() -> bool:
            samples = _scrape_port(metrics_port)
            return value(samples, "keyswap_gateway_upstream_duration_seconds_count") == 10

        eventually(counted, timeout=10)
        samples = _scrape_port(metrics_port)
        # The health checks of wait_ready count too: the gateway's own paths are requests.
        assert value(samples, "keyswap_gateway_requests_total", status_class="2xx") >= 10
        assert value(samples, "keyswap_gateway_request_duration_seconds_count") >= 10
        assert ("keyswap_gateway_connections_open", ()) in samples
        assert ("keyswap_gateway_signing_key_age_seconds", ()) in samples
        public = httpx.get(gateway.url + "/metrics", timeout=10)
        assert public.status_code == 401
    finally:
        log = gateway.stop()
    assert "/metrics" in log
    assert key not in log


def test_connections_open_and_websockets_are_counted(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    from keyswap.gateway.clientconn import ClientLimits, open_connections, protocol_class
    from tests.support.ws_upstream import ws_upstream

    protocol = protocol_class(ClientLimits())
    server = {"http": protocol, "ws": "websockets-sansio", "ws_per_message_deflate": False}
    metrics = GatewayMetrics()
    metrics.gauges["connections_open"] = open_connections(protocol)
    with (
        ws_upstream() as upstream,
        running_gateway(
            tmp_path, upstream.url, server_options=server, gateway_options={"metrics": metrics}
        ) as gateway,
        metrics_listener(metrics) as listener,
    ):
        with httpx.Client() as client:  # a keep-alive connection stays open between requests
            headers = {"Authorization": f"Bearer {gateway.key}"}
            assert client.get(gateway.url + "/__keyswap/health", headers=headers).status_code == 200
            _, samples = scrape(listener)
            assert value(samples, "keyswap_gateway_connections_open") == 1
        url = f"ws://127.0.0.1:{gateway.port}/echo"
        with connect(url, additional_headers=headers, open_timeout=5) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"

        def counted() -> bool:
            _, now = scrape(listener)
            return (
                value(now, "keyswap_gateway_requests_total", status_class="1xx") == 1
                and value(now, "keyswap_gateway_connections_open") == 0
            )

        eventually(counted)
    assert open_connections(ClientLimits)() is None  # not a keyswap protocol: no gauge


def test_hostile_clients_of_the_metrics_listener_get_4xx_and_do_not_block_scrapes() -> None:
    with metrics_listener(GatewayMetrics()) as server:
        idle = socket.create_connection(("127.0.0.1", server.port))  # sends nothing
        try:
            _, samples = scrape(server)  # answered while the idle client holds its connection
            assert ("keyswap_gateway_tokens_minted_total", ()) in samples
            for garbage in (
                b"\x00\x01\x02 garbage\r\n\r\n",
                b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
            ):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(garbage)
                    answer = sock.recv(100)
                assert answer.startswith(b"HTTP/1.")
                status = int(answer.split(b" ", 2)[1])
                assert 400 <= status < 500 or (status == 200 and b"X: y" in garbage)
        finally:
            idle.close()
        assert scrape(server)[1]


def test_a_metrics_port_in_use_is_one_error_line_before_anything_starts(tmp_path: Path) -> None:
    import subprocess

    from tests.support.keyswap_process import KEYSWAP

    db_url = f"sqlite:///{tmp_path / 'keyswap.db'}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        args = ["gateway", "--upstream", "http://127.0.0.1:9", "--port", str(free_port()),
                "--db", db_url, "--metrics-port", str(busy)]  # fmt: skip
        done = subprocess.run(
            [*KEYSWAP, *args], capture_output=True, text=True, timeout=60, check=False
        )
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{busy}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "keyswap.db").exists()  # nothing was opened or created
