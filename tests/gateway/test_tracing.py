"""OpenTelemetry spans of a real gateway (in-process exporter) and W3C traceparent to the origin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from keyswap.errors import ConfigError
from keyswap.gateway.proxy import ForwardedHeaders, forwarded_request_headers
from keyswap.gateway.tracespans import RecordedTrace, SpanSink
from keyswap.gateway.tracing import (
    RequestTrace,
    Tracing,
    TracingSettings,
    _fresh_traceparent,
    _fresh_traceparents,
    build_tracing,
    parent_based_rate,
)
from tests.support.asgi_server import free_port
from tests.support.keyswap_process import KeyswapProcess
from tests.support.running_gateway import Gateway, eventually, running_gateway
from tests.support.upstream import RecordingUpstream, recording_upstream

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
NOT_SAMPLED = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:
        yield up


@contextmanager
def traced(
    tmp_path: Path,
    upstream: RecordingUpstream,
    sampler: Sampler = ALWAYS_ON,
    sample_rate: float | None = None,
    *,
    recorded: bool = True,
) -> Iterator[tuple[Gateway, InMemorySpanExporter]]:
    """A gateway tracing into an in-memory exporter. With ``sample_rate`` and ``recorded`` (as
    ``keyswap gateway --trace-sample-rate`` runs), keyswap records the sampled spans itself;
    otherwise they go through the SDK's tracer."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    spans = SpanSink([processor], provider.resource) if recorded else None
    tracing = Tracing(provider, sample_rate=sample_rate, spans=spans)
    with running_gateway(tmp_path, upstream.url, gateway_options={"tracing": tracing}) as gateway:
        yield gateway, exporter
    provider.shutdown()


def call(gateway: Gateway, path: str, parent: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gateway.key}", "traceparent": parent}
    return httpx.get(gateway.url + path, headers=headers, timeout=10)


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    found = {span.name: span for span in spans}
    assert len(found) == len(spans), [s.name for s in spans]
    return found


def traceparent(upstream: RecordingUpstream) -> tuple[str, str, str, str]:
    values = upstream.last.header("traceparent")
    assert len(values) == 1, values
    version, trace_id, parent_id, flags = values[0].split("-")
    return version, trace_id, parent_id, flags


def test_a_request_makes_lookup_mint_and_upstream_spans_under_the_callers_trace(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with traced(tmp_path, upstream) as (gateway, exporter):
        assert gateway.app.warmed.wait(10)
        gateway.key = gateway.admin.create("acme")[1]  # after the warm start: looked up, minted
        response = call(gateway, "/hello?secret=1", SAMPLED)
        assert response.status_code == 200
        spans = by_name(exporter.get_finished_spans())
        first_parent = traceparent(upstream)
        exporter.clear()
        # Again: the key is cached and its token reused: no span for work not done, attributes
        # on the request's span instead.
        assert call(gateway, "/hello", SAMPLED).status_code == 200
        again = by_name(exporter.get_finished_spans())
    assert set(again) == {"keyswap.request", "keyswap.upstream"}
    again_attributes = again["keyswap.request"].attributes
    assert again_attributes is not None
    assert again_attributes["keyswap.key_cache"] == "hit"
    assert again_attributes["keyswap.token"] == "reused"
    assert set(spans) == {
        "keyswap.request",
        "keyswap.key_lookup",
        "keyswap.mint",
        "keyswap.upstream",
    }
    root = spans["keyswap.request"]
    assert root.kind is SpanKind.SERVER
    assert root.parent is not None
    assert format(root.parent.span_id, "016x") == CLIENT_SPAN
    for span in spans.values():
        assert format(span.context.trace_id, "032x") == CLIENT_TRACE
    for name in ("keyswap.key_lookup", "keyswap.mint", "keyswap.upstream"):
        parent = spans[name].parent
        assert parent is not None
        assert parent.span_id == root.context.span_id
    assert spans["keyswap.upstream"].kind is SpanKind.CLIENT
    assert root.attributes is not None
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["url.path"] == "/hello"  # never the query string
    # The origin's traceparent: the same trace, the upstream span as its parent, sampled.
    version, trace_id, parent_id, flags = first_parent
    assert (version, trace_id, flags) == ("00", CLIENT_TRACE, "01")
    assert parent_id == format(spans["keyswap.upstream"].context.span_id, "016x")
    assert parent_id != CLIENT_SPAN


def test_without_a_traceparent_the_gateway_starts_the_trace_the_origin_joins(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with traced(tmp_path, upstream) as (gateway, exporter):
        assert gateway.get("/x").status_code == 200
        spans = by_name(exporter.get_finished_spans())
    root = spans["keyswap.request"]
    assert root.parent is None
    _, trace_id, parent_id, flags = traceparent(upstream)
    assert trace_id == format(root.context.trace_id, "032x")
    assert parent_id == format(spans["keyswap.upstream"].context.span_id, "016x")
    assert int(flags, 16) & 1  # sampled (level 2 also sets the random-trace-id bit)


def test_no_key_or_token_in_any_span(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with traced(tmp_path, upstream) as (gateway, exporter):
        assert gateway.get("/x").status_code == 200
        assert gateway.get("/x", key="ks_wrong").status_code == 401
        spans = exporter.get_finished_spans()
    token = upstream.last.header("authorization")[0].removeprefix("Bearer ")
    dumped = "".join(span.to_json() for span in spans)
    assert gateway.key not in dumped
    assert token not in dumped
    assert "ks_wrong" not in dumped


def test_a_refused_request_ends_its_span_with_the_status(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with traced(tmp_path, upstream) as (gateway, exporter):
        assert httpx.get(gateway.url + "/x", timeout=10).status_code == 401
        spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"keyswap.request"}
    attributes = spans["keyswap.request"].attributes
    assert attributes is not None
    assert attributes["http.response.status_code"] == 401


def test_unsampled_requests_record_nothing_but_still_propagate(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    sampler = ParentBased(TraceIdRatioBased(0.0))
    with traced(tmp_path, upstream, sampler) as (gateway, exporter):
        assert gateway.get("/x").status_code == 200
        assert exporter.get_finished_spans() == ()
        _, _, _, flags = traceparent(upstream)
        assert not int(flags, 16) & 1  # not sampled, said downstream
        # A caller that sampled its trace is followed (parent-based), whatever the rate.
        assert call(gateway, "/y", SAMPLED).status_code == 200
        # The request and upstream spans (the key was cached, its token minted, at the start).
        assert len(exporter.get_finished_spans()) == 2
        _, trace_id, _, flags = traceparent(upstream)
        assert (trace_id, flags) == (CLIENT_TRACE, "01")
        exporter.clear()
        assert call(gateway, "/z", NOT_SAMPLED).status_code == 200
        assert exporter.get_finished_spans() == ()
        _, trace_id, _, flags = traceparent(upstream)
        assert (trace_id, flags) == (CLIENT_TRACE, "00")


def test_with_a_sample_rate_unsampled_requests_skip_opentelemetry_but_propagate(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with traced(tmp_path, upstream, ParentBased(ALWAYS_ON), sample_rate=0.0) as (gateway, exporter):
        assert gateway.get("/new").status_code == 200
        first = traceparent(upstream)
        assert gateway.get("/new").status_code == 200
        second = traceparent(upstream)
        assert exporter.get_finished_spans() == ()
        assert first[0] == "00"
        assert first[3] == "00"
        assert first[1] != second[1]  # a new trace each time
        assert first[1] != "0" * 32
        assert first[2] != "0" * 16
        headers = {
            "Authorization": f"Bearer {gateway.key}",
            "traceparent": NOT_SAMPLED,
            "tracestate": "vendor=abc",
        }
        response = httpx.get(gateway.url + "/unsampled", headers=headers, timeout=10)
        assert response.status_code == 200
        _, trace_id, parent_id, flags = traceparent(upstream)
        assert (trace_id, flags) == (CLIENT_TRACE, "00")
        assert parent_id != CLIENT_SPAN
        assert upstream.last.header("tracestate") == ["vendor=abc"]
        assert exporter.get_finished_spans() == ()
        # The caller sampled: followed, whatever the rate.
        assert call(gateway, "/sampled", SAMPLED).status_code == 200
        spans = by_name(exporter.get_finished_spans())
        assert format(spans["keyswap.request"].context.trace_id, "032x") == CLIENT_TRACE
        _, trace_id, parent_id, flags = traceparent(upstream)
        assert (trace_id, flags) == (CLIENT_TRACE, "01")
        assert parent_id == format(spans["keyswap.upstream"].context.span_id, "016x")
        exporter.clear()
        bad = f"00-{CLIENT_TRACE}-{'0' * 16}-01"  # an all-zero parent id: invalid, ignored
        assert call(gateway, "/bad", bad).status_code == 200
        assert exporter.get_finished_spans() == ()
        assert traceparent(upstream)[1] != CLIENT_TRACE


FRESH = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-00")


def test_fresh_traceparents_are_well_formed_and_unique() -> None:
    values = _fresh_traceparents(1000)
    assert len(values) == 1000
    for value in values:
        assert FRESH.fullmatch(value), value
    trace_ids = {v[3:35] for v in values}
    span_ids = {v[36:52] for v in values}
    assert len(trace_ids) == len(span_ids) == 1000
    assert b"0" * 32 not in trace_ids
    assert b"0" * 16 not in span_ids
    taken = [_fresh_traceparent() for _ in range(1200)]  # across a batch boundary
    assert len(set(taken)) == 1200
    assert all(FRESH.fullmatch(v) for v in taken)


def test_a_batch_with_an_all_zero_id_is_drawn_again() -> None:
    draws: list[int] = []

    def random_bytes(size: int) -> bytes:  # failure injection: the first draw has a zero span id
        draws.append(size)
        if len(draws) == 1:
            return os.urandom(size - 8) + bytes(8)
        return bytes(range(1, size + 1))

    values = _fresh_traceparents(3, random_bytes)
    assert draws == [72, 72]
    assert values == [
        b"00-0102030405060708090a0b0c0d0e0f10-1112131415161718-00",
        b"00-191a1b1c1d1e1f202122232425262728-292a2b2c2d2e2f30-00",
        b"00-3132333435363738393a3b3c3d3e3f40-4142434445464748-00",
    ]


def test_a_forked_child_does_not_reuse_its_parents_ids() -> None:
    _fresh_traceparent()  # the batch is filled in this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, _fresh_traceparent())
        finally:
            os._exit(0)
    os.close(write)
    try:
        from_child = os.read(read, 100)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert FRESH.fullmatch(from_child)
    assert from_child != _fresh_traceparent()  # the parent's next one


def upstream_headers(client_headers: list[tuple[bytes, bytes]]) -> ForwardedHeaders:
    """What the origin would get from an unsampled request (sample rate 0) with these headers."""
    tracing = Tracing(TracerProvider(), sample_rate=0.0)
    scope = {"headers": [(b"host", b"gw"), *client_headers]}
    request = tracing.begin(scope, "GET", b"/")
    assert not request.recording
    headers = forwarded_request_headers(scope["headers"], client=None, scheme="http")
    request.propagate(headers)
    return headers


def test_an_unsampled_request_sends_one_fresh_traceparent_and_keeps_the_other_headers() -> None:
    headers = upstream_headers([(b"accept", b"*/*")])
    (value,) = headers.getall("traceparent")
    assert FRESH.fullmatch(value.encode())
    assert headers.getall("accept") == ["*/*"]
    assert headers.getall("tracestate") == []
    others = upstream_headers([(b"accept", b"*/*")]).getall("traceparent")
    assert others != [value]


def test_an_unsampled_request_follows_the_callers_unsampled_trace() -> None:
    client = [(b"traceparent", NOT_SAMPLED.encode()), (b"tracestate", b"vendor=abc")]
    headers = upstream_headers(client)
    (value,) = headers.getall("traceparent")
    version, trace_id, parent_id, flags = value.split("-")
    assert (version, trace_id, flags) == ("00", CLIENT_TRACE, "00")
    assert re.fullmatch("[0-9a-f]{16}", parent_id)
    assert parent_id not in (CLIENT_SPAN, "0" * 16)
    assert headers.getall("tracestate") == ["vendor=abc"]


@pytest.mark.parametrize(
    "client",
    [
        [(b"traceparent", b"00-" + b"0" * 32 + b"-" + CLIENT_SPAN.encode() + b"-00")],
        [(b"traceparent", b"not a traceparent")],
        [(b"tracestate", b"vendor=abc")],
    ],
    ids=["zero-trace-id", "malformed", "tracestate-alone"],
)
def test_an_unsampled_request_replaces_an_unusable_traceparent(
    client: list[tuple[bytes, bytes]],
) -> None:
    headers = upstream_headers(client)
    (value,) = headers.getall("traceparent")
    assert FRESH.fullmatch(value.encode())
    assert CLIENT_TRACE not in value


def test_a_sampled_callers_tracestate_reaches_the_origin_with_the_upstream_span(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with traced(tmp_path, upstream, ALWAYS_ON, sample_rate=0.0) as (gateway, exporter):
        headers = {
            "Authorization": f"Bearer {gateway.key}",
            "traceparent": SAMPLED,
            "tracestate": "vendor=abc,other=1",
        }
        assert httpx.get(gateway.url + "/x", headers=headers, timeout=10).status_code == 200
        spans = by_name(exporter.get_finished_spans())
    _, trace_id, parent_id, flags = traceparent(upstream)
    assert (trace_id, flags) == (CLIENT_TRACE, "01")
    assert parent_id == format(spans["keyswap.upstream"].context.span_id, "016x")
    assert upstream.last.header("tracestate") == ["vendor=abc,other=1"]


def test_with_a_sample_rate_of_one_every_request_is_recorded(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with traced(tmp_path, upstream, ParentBased(ALWAYS_ON), sample_rate=1.0) as (gateway, exporter):
        for _ in range(3):
            assert gateway.get("/x").status_code == 200
        spans = exporter.get_finished_spans()
    assert len([s for s in spans if s.name == "keyswap.request"]) == 3
    assert len([s for s in spans if s.name == "keyswap.upstream"]) == 3
    assert len(spans) == 6  # a cached key and a reused token: attributes, not spans


def test_a_malformed_traceparent_starts_a_new_trace(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with traced(tmp_path, upstream) as (gateway, exporter):
        bad = "00-" + "0" * 32 + "-" + CLIENT_SPAN + "-01"  # an all-zero trace id is invalid
        assert call(gateway, "/x", bad).status_code == 200
        spans = by_name(exporter.get_finished_spans())
    assert spans["keyswap.request"].parent is None
    _, trace_id, _, _ = traceparent(upstream)
    assert trace_id != "0" * 32


def test_tracing_off_forwards_the_callers_traceparent_untouched(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    with running_gateway(tmp_path, upstream.url) as gateway:
        assert call(gateway, "/x", SAMPLED).status_code == 200
    assert upstream.last.header("traceparent") == [SAMPLED]


def test_the_gateway_imports_no_opentelemetry_when_tracing_is_off() -> None:
    code = (
        "import sys\n"
        "import keyswap.gateway.app, keyswap.gateway.cli, keyswap.gateway.serve\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tracing_settings_and_exporter_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        TracingSettings(sample_rate=1.5)
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        build_tracing(TracingSettings(), env={"OTEL_TRACES_EXPORTER": "zipkin"})
    tracing = build_tracing(TracingSettings(sample_rate=0.25), env={"OTEL_TRACES_EXPORTER": "none"})
    try:
        provider = tracing.provider
        assert tracing.sample_rate == 0.25  # decided by Tracing.begin; OTel records what it gets
        # Only requests Tracing.begin sampled (or whose caller did) reach OpenTelemetry.
        assert provider.sampler.get_description() == "AlwaysOnSampler"  # type: ignore[attr-defined]
        assert provider.resource.attributes["service.name"] == "keyswap-gateway"  # type: ignore[attr-defined]
    finally:
        tracing.close()


@pytest.mark.parametrize(
    ("env", "rate"),
    [
        ({}, 1.0),  # the SDK's default: parentbased_always_on
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, 1.0),
        ({"OTEL_TRACES_SAMPLER": "ParentBased_Always_Off"}, 0.0),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
            0.25,
        ),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}, 1.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, 1.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, 1.0),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "nan"},
            1.0,
        ),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}, None),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, None),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, None),
    ],
)
def test_parent_based_samplers_from_the_otel_variables_are_decided_by_keyswap(
    env: dict[str, str], rate: float | None
) -> None:
    """Without --trace-sample-rate, a parent-based OTEL_TRACES_SAMPLER (the default) is decided as
    the rate would be, and its spans recorded by keyswap; any other sampler is the SDK's."""
    assert parent_based_rate(env) == rate
    tracing = build_tracing(TracingSettings(), env={**env, "OTEL_TRACES_EXPORTER": "none"})
    try:
        assert tracing.sample_rate == rate
        sampled = tracing.begin({"headers": [(b"traceparent", SAMPLED.encode())]}, "GET", b"/")
        assert sampled.recording
        assert isinstance(sampled, RequestTrace if rate is None else RecordedTrace)
    finally:
        tracing.close()


@pytest.mark.slow
def test_keyswap_gateway_tracing_exports_over_otlp_as_the_otel_variables_say(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
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
    port = free_port()
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": upstream.url + "/keep/v1/traces",
        "OTEL_SERVICE_NAME": "edge-7",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    args = ["gateway", "--upstream", upstream.url, "--port", str(port), "--db", db_url,
            "--alg", "ES256", "--tracing", "--trace-sample-rate", "1"]  # fmt: skip
    gateway = KeyswapProcess(args, f"http://127.0.0.1:{port}", env)
    try:
        gateway.wait_ready("/__keyswap/health")
        headers = {"Authorization": f"Bearer {key}", "traceparent": SAMPLED}
        assert httpx.get(gateway.url + "/traced", headers=headers, timeout=10).status_code == 200
        eventually(lambda: any(r.raw_path == b"/keep/v1/traces" for r in upstream.received), 10)
    finally:
        log = gateway.stop()
    assert "tracing on" in log
    exports = [
        (record, body)
        for record, body in zip(upstream.received, upstream.bodies, strict=True)
        if record.raw_path == b"/keep/v1/traces"
    ]
    names: set[str] = set()
    services: set[str] = set()
    for record, body in exports:
        assert record.method == "POST"
        assert record.header("content-type") == ["application/x-protobuf"]
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    assert span.trace_id.hex() == CLIENT_TRACE
                    names.add(span.name)
    # The key was cached and its token minted at the warm start: no lookup or mint span.
    assert names == {"keyswap.request", "keyswap.upstream"}
    assert services == {"edge-7"}
    traced_request = next(r for r in upstream.received if r.raw_path == b"/traced")
    assert traced_request.header("traceparent")[0].split("-")[1] == CLIENT_TRACE
    assert key not in log


def span_shapes(spans: tuple[ReadableSpan, ...]) -> list[tuple[object, ...]]:
    """What a span says, without its ids and times: name, kind, who its parent is, attributes,
    status, trace state, resource and scope (the same for both ways of recording)."""
    by_id = {span.context.span_id: span.name for span in spans}
    shapes: list[tuple[object, ...]] = []
    for span in spans:
        parent = span.parent
        assert span.start_time is not None
        assert span.end_time is not None
        assert span.start_time <= span.end_time
        if parent is not None and parent.span_id in by_id:
            owner = next(s for s in spans if s.context.span_id == parent.span_id)
            assert owner.start_time is not None
            assert owner.end_time is not None
            assert owner.start_time <= span.start_time <= span.end_time <= owner.end_time
        assert span.instrumentation_scope is not None
        trace_id = format(span.context.trace_id, "032x")
        assert trace_id != "0" * 32
        shapes.append(
            (
                span.name,
                span.kind,
                None if parent is None else by_id.get(parent.span_id, "remote"),
                None if parent is None else parent.is_remote,
                dict(span.attributes or {}),
                span.status.status_code,
                span.status.description,
                trace_id if trace_id == CLIENT_TRACE else "new",
                int(span.context.trace_flags),
                span.context.trace_state.to_header(),
                {k: v for k, v in span.resource.attributes.items() if k != "service.instance.id"},
                span.instrumentation_scope.name,
                span.instrumentation_scope.version,
                span.dropped_attributes,
                span.events,
                span.links,
            )
        )
    return sorted(shapes, key=repr)


@pytest.mark.parametrize("path", ["/hello", "/status/503"])
def test_spans_recorded_by_keyswap_match_the_sdks_spans(
    tmp_path: Path, upstream: RecordingUpstream, path: str
) -> None:
    """The ``--trace-sample-rate`` path builds its spans itself: they must say what the SDK's own
    spans say for the same requests (a looked-up key and a signature, an origin's 5xx, a 401)."""
    seen: dict[str, list[tuple[object, ...]]] = {}
    traceparents: dict[str, list[str]] = {}
    for mode, rate, recorded in (("sdk", None, False), ("recorded", 1.0, True)):
        with traced(tmp_path / mode, upstream, ALWAYS_ON, sample_rate=rate, recorded=recorded) as (
            gateway,
            exporter,
        ):
            assert gateway.app.warmed.wait(10)
            gateway.key = gateway.admin.create("acme")[1]  # looked up and minted on first use
            headers = {
                "Authorization": f"Bearer {gateway.key}",
                "traceparent": SAMPLED,
                "tracestate": "vendor=abc",
            }
            response = httpx.get(gateway.url + path, headers=headers, timeout=10)
            assert response.status_code == int(path[8:]) if path.startswith("/status/") else 200
            value = upstream.last.header("traceparent")[0]
            assert httpx.get(gateway.url + path, timeout=10).status_code == 401
            spans = exporter.get_finished_spans()
            tracing = gateway.app.tracing
            assert tracing is not None
            request = tracing.begin({"headers": []}, "GET", b"/")  # never ended: not exported
            assert isinstance(request, RecordedTrace) == recorded
        seen[mode] = span_shapes(spans)
        upstream_span = next(s for s in spans if s.name == "keyswap.upstream")
        version, trace_id, parent_id, flags = value.split("-")
        assert parent_id == format(upstream_span.context.span_id, "016x")
        traceparents[mode] = [version, trace_id, flags, *upstream.last.header("tracestate")]
    assert seen["recorded"] == seen["sdk"]
    assert (
        traceparents["recorded"] == traceparents["sdk"] == ["00", CLIENT_TRACE, "01", "vendor=abc"]
    )
    names = [str(shape[0]) for shape in seen["sdk"]]
    assert sorted(names) == sorted(
        [
            "keyswap.request",
            "keyswap.key_lookup",
            "keyswap.mint",
            "keyswap.upstream",
            "keyswap.request",
        ]
    )


def test_a_traced_gateway_refuses_two_authorization_headers_in_a_traced_request(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    """The key is read in the pass that finds the trace headers: a second Authorization header is
    still refused (401, never forwarded), and the refusal is in the caller's trace."""
    with traced(tmp_path, upstream, sample_rate=0.0) as (gateway, exporter):
        headers = [
            ("Authorization", f"Bearer {gateway.key}"),
            ("traceparent", SAMPLED),
            ("Authorization", f"Bearer {gateway.key}"),
        ]
        before = len(upstream.received)
        response = httpx.get(gateway.url + "/two", headers=headers, timeout=10)
        assert response.status_code == 401
        assert len(upstream.received) == before
        (span,) = exporter.get_finished_spans()
        assert span.attributes is not None
        assert span.attributes["http.response.status_code"] == 401
        assert format(span.context.trace_id, "032x") == CLIENT_TRACE
        # Without trace headers (the pass finds none): the same answer, no span at rate 0.
        headers = [headers[0], headers[2]]
        assert httpx.get(gateway.url + "/two", headers=headers, timeout=10).status_code == 401
        assert len(exporter.get_finished_spans()) == 1
        assert len(upstream.received) == before


@pytest.mark.parametrize("name", [b"Traceparent", b"TRACEPARENT"])
def test_a_caller_trace_is_followed_whatever_the_case_of_its_header_name(name: bytes) -> None:
    """An ASGI server that passes header names as sent (the reason the key is read whatever the
    case of ``Authorization``): the caller's sampled ``traceparent`` must still be followed, and
    the origin must get one ``traceparent`` (the gateway's), not the caller's as is beside it."""
    from keyswap.gateway.app import _authorization_and_trace

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    tracing = Tracing(provider, sample_rate=0.0, spans=SpanSink([processor], provider.resource))
    client = [(b"authorization", b"Bearer ks_x"), (name, SAMPLED.encode())]
    _, _, traced = _authorization_and_trace(client)  # as GatewayApp._http
    request = tracing.begin({"headers": client}, "GET", b"/", traced)
    headers = forwarded_request_headers(client, client=None, scheme="http")
    request.propagate(headers)
    (value,) = headers.getall("traceparent")
    assert value != SAMPLED
    assert value.split("-")[1] == CLIENT_TRACE
    assert request.recording
