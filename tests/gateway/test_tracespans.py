"""Spans recorded by keyswap itself (the ``--trace-sample-rate`` path): ids, failures, processors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags, TraceState

from keyswap.gateway import tracespans
from keyswap.gateway.proxy import ForwardedHeaders
from keyswap.gateway.tracespans import RecordedTrace, SpanSink

RESOURCE = Resource.create({"service.name": "edge"})
PARENT = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736,
    0x00F067AA0BA902B7,
    True,
    TraceFlags(0x01),
    TraceState([("vendor", "abc")]),
)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def sink_for(exporter: InMemorySpanExporter) -> SpanSink:
    return SpanSink([SimpleSpanProcessor(exporter)], RESOURCE)


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


async def answer(status: int) -> int:
    return status


def test_a_new_trace_gets_random_ids_and_the_sampled_and_random_flags(
    exporter: InMemorySpanExporter,
) -> None:
    first = RecordedTrace(sink_for(exporter), None, "GET", "/a")
    second = RecordedTrace(sink_for(exporter), None, "GET", "/b")
    first.finish(200)
    second.finish(204)
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    assert spans[0].context.trace_id != spans[1].context.trace_id
    for span in spans:
        assert span.parent is None
        assert span.kind is SpanKind.SERVER
        assert span.context.trace_id
        assert span.context.span_id
        assert int(span.context.trace_flags) == 0x03  # sampled, random trace id (W3C level 2)
        assert span.resource == RESOURCE
        assert hash(span.resource) == hash(RESOURCE)
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "keyswap.gateway"
    assert dict(spans[1].attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/b",
        "http.response.status_code": 204,
    }


def test_an_all_zero_id_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([0, 7, 0, 0, 9])
    monkeypatch.setattr(tracespans, "_getrandbits", lambda bits: next(draws))
    assert tracespans._new_id(128) == 7
    assert tracespans._new_id(64) == 9


def test_a_callers_trace_is_continued_with_its_state_and_children_nest(
    exporter: InMemorySpanExporter,
) -> None:
    request = RecordedTrace(sink_for(exporter), PARENT, "POST", "/orders")
    headers = ForwardedHeaders([(b"traceparent", b"client's"), (b"accept", b"*/*")])
    request.note("keyswap.key_cache", "hit")
    status = asyncio.run(request.upstream(lambda *a: answer(201), {"method": "POST"}, None, None, b"/", headers))  # fmt: skip
    request.finish(status)
    spans = by_name(exporter)
    root, upstream = spans["keyswap.request"], spans["keyswap.upstream"]
    assert root.parent == PARENT
    assert root.context.trace_id == PARENT.trace_id
    assert root.context.trace_state.to_header() == "vendor=abc"
    assert int(root.context.trace_flags) == 0x01  # the caller's id was not declared random
    assert upstream.parent == root.context
    assert upstream.kind is SpanKind.CLIENT
    assert dict(upstream.attributes or {}) == {
        "http.request.method": "POST",
        "http.response.status_code": 201,
    }
    assert root.attributes is not None
    assert root.attributes["keyswap.key_cache"] == "hit"
    assert upstream.start_time is not None
    assert root.start_time is not None
    assert upstream.end_time is not None
    assert root.end_time is not None
    assert root.start_time <= upstream.start_time <= upstream.end_time <= root.end_time
    # The origin's traceparent names the upstream span; the client's was replaced, once.
    expected = f"00-{PARENT.trace_id:032x}-{upstream.context.span_id:016x}-01"
    assert headers.getall("traceparent") == [expected]
    assert headers.getall("tracestate") == ["vendor=abc"]
    assert headers.getall("accept") == ["*/*"]


def test_failures_end_their_spans_with_an_error_and_are_raised(
    exporter: InMemorySpanExporter,
) -> None:
    request = RecordedTrace(sink_for(exporter), None, "GET", "/x")

    async def fails() -> int:
        raise TimeoutError("upstream")

    async def steps() -> None:
        with pytest.raises(TimeoutError):
            await request.run("keyswap.key_lookup", fails())
        with pytest.raises(TimeoutError):
            await request.upstream(lambda *a: fails(), {"method": "GET"}, None, None, b"/", ForwardedHeaders([]))  # fmt: skip

    asyncio.run(steps())
    request.finish(502)
    spans = by_name(exporter)
    lookup, upstream, root = (spans[n] for n in ("keyswap.key_lookup", "keyswap.upstream", "keyswap.request"))  # fmt: skip
    for span in (lookup, upstream):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "TimeoutError"
        assert span.parent == root.context
    assert "http.response.status_code" not in (upstream.attributes or {})
    assert root.status.status_code is StatusCode.ERROR  # a 5xx answer
    assert root.status.description is None


def test_an_origin_5xx_marks_the_upstream_span_and_a_4xx_does_not(
    exporter: InMemorySpanExporter,
) -> None:
    request = RecordedTrace(sink_for(exporter), None, "GET", "/x")
    headers = ForwardedHeaders([])
    asyncio.run(request.upstream(lambda *a: answer(503), {"method": "GET"}, None, None, b"/", headers))  # fmt: skip
    request.finish(404)
    spans = by_name(exporter)
    assert spans["keyswap.upstream"].status.status_code is StatusCode.ERROR
    assert spans["keyswap.request"].status.status_code is StatusCode.UNSET


def test_recorded_spans_go_through_the_batch_processor_to_the_exporter() -> None:
    exporter = InMemorySpanExporter()
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    try:
        request = RecordedTrace(SpanSink([processor], RESOURCE), PARENT, "GET", "/batched")
        asyncio.run(request.run("keyswap.mint", answer(0)))
        request.finish(200)
        assert exporter.get_finished_spans() == ()  # queued, not sent yet
        assert processor.force_flush(10_000)
        assert sorted(s.name for s in exporter.get_finished_spans()) == [
            "keyswap.mint",
            "keyswap.request",
        ]
    finally:
        processor.shutdown()  # type: ignore[no-untyped-call]


def test_recorded_spans_encode_for_otlp_under_one_resource_and_scope(
    exporter: InMemorySpanExporter,
) -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    sink = sink_for(exporter)
    for path in ("/a", "/b"):
        request = RecordedTrace(sink, PARENT, "GET", path)
        asyncio.run(request.upstream(lambda *a: answer(503), {"method": "GET"}, None, None, b"/", ForwardedHeaders([])))  # fmt: skip
        request.finish(502)
    encoded = encode_spans(exporter.get_finished_spans())
    (resource_spans,) = encoded.resource_spans  # grouped by the resource: one group
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "keyswap.gateway"
    service = [a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"]  # fmt: skip
    assert service == ["edge"]
    assert len(scope_spans.spans) == 4
    for span in scope_spans.spans:
        assert span.trace_id.hex() == format(PARENT.trace_id, "032x")
        assert span.trace_state == "vendor=abc"
        assert span.status.code == 2  # STATUS_CODE_ERROR: a 5xx on both spans
