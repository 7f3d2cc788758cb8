"""keyswap's own sampling and span recording (``Tracing`` with a rate and a ``SpanSink``) against the
OpenTelemetry SDK's (the same ``Tracing`` without them, the SDK's sampler deciding) for the same
request: the decision, the origin's ``traceparent``, and what the spans say."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from keyswap.gateway.proxy import ForwardedHeaders
from keyswap.gateway.tracespans import SpanSink
from keyswap.gateway.tracing import Tracing, TracingSettings, build_tracing, parent_based_rate

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass
class Outcome:
    recording: bool
    spans: tuple[ReadableSpan, ...]
    traceparent: list[str]
    tracestate: list[str]


def one_request(tracing: Tracing, exporter: InMemorySpanExporter, client: list[tuple[bytes, bytes]], path: bytes = b"/x") -> Outcome:  # fmt: skip
    """What ``GatewayApp._http`` does with ``tracing`` for one request answered 200 by the origin."""
    scope = {"method": "GET", "headers": client}
    request = tracing.begin(scope, "GET", path)
    headers = ForwardedHeaders(list(client))

    async def forward(*args: object) -> int:
        return 200

    async def steps() -> int:
        if not request.recording:
            request.propagate(headers)
            return 200
        return await request.upstream(forward, scope, None, None, b"/", headers)

    status = asyncio.run(steps())
    if request.recording:
        request.finish(status)
    return Outcome(
        request.recording,
        exporter.get_finished_spans(),
        headers.getall("traceparent"),
        headers.getall("tracestate"),
    )


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def sdk_tracing(exporter: InMemorySpanExporter, sampler: Sampler) -> Tracing:
    """The SDK decides and records (``keyswap gateway --tracing`` with another sampler)."""
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


def recorded_tracing(exporter: InMemorySpanExporter, rate: float) -> Tracing:
    """keyswap decides and records (as ``build_tracing`` sets it up)."""
    provider = TracerProvider(sampler=ALWAYS_ON)
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return Tracing(provider, sample_rate=rate, spans=SpanSink([processor], provider.resource))


def both(rate: float, root: Sampler, client: list[tuple[bytes, bytes]], path: bytes = b"/x") -> tuple[Outcome, Outcome]:  # fmt: skip
    sdk_exporter, recorded_exporter = InMemorySpanExporter(), InMemorySpanExporter()
    sdk = one_request(sdk_tracing(sdk_exporter, ParentBased(root)), sdk_exporter, client, path)
    recorded = one_request(recorded_tracing(recorded_exporter, rate), recorded_exporter, client, path)  # fmt: skip
    return sdk, recorded


@pytest.mark.parametrize("flags", ["01", "00"])
@pytest.mark.parametrize(
    "value",
    [
        "cc-{trace}-{span}-{flags}-" + "x" * 600,  # a later version, longer than the SDK takes
        "00-{trace}-{span}-{flags}\xa0",  # a trailing NBSP (obs-text, allowed by the server)
        "\x85cc-{trace}-{span}-{flags}",  # a leading NEL
    ],
    ids=["over-512", "trailing-nbsp", "leading-nel"],
)
def test_a_traceparent_the_sdk_ignores_is_ignored_by_keyswaps_decision_too(
    value: str, flags: str
) -> None:
    """The SDK's propagator rejects these (a new trace starts, decided by the root sampler): keyswap
    must not follow their flags (sampling a new trace whatever the rate, or continuing the caller's
    trace id unsampled)."""
    header = value.format(trace=CLIENT_TRACE, span=CLIENT_SPAN, flags=flags)
    client = [(b"traceparent", header.encode("latin-1"))]
    sdk, recorded = both(0.0, ALWAYS_OFF, client)
    assert not sdk.recording
    assert recorded.recording == sdk.recording
    assert recorded.spans == ()
    (sdk_value,) = sdk.traceparent
    (recorded_value,) = recorded.traceparent
    assert sdk_value.split("-")[1] != CLIENT_TRACE  # a new trace
    assert recorded_value.split("-")[1] != CLIENT_TRACE


def test_an_unsampled_callers_random_trace_id_flag_reaches_the_origin_as_the_sdk_sends_it() -> None:
    """``00-...-02``: not sampled, the trace id declared random (W3C level 2). The SDK's span for
    it (the default ``parentbased_always_on``, before keyswap decided it) keeps the random flag."""
    client = [(b"traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-02".encode())]
    sdk, recorded = both(1.0, ALWAYS_ON, client)
    assert not sdk.recording
    assert not recorded.recording
    assert sdk.traceparent[0].split("-")[3] == "02"
    assert recorded.traceparent[0].split("-")[3] == "02"
    assert recorded.traceparent[0].split("-")[1] == CLIENT_TRACE
    tracing = build_tracing(TracingSettings(), env={"OTEL_TRACES_EXPORTER": "none"})
    try:  # the default set-up: keyswap decides
        request = tracing.begin({"headers": client}, "GET", b"/")
        headers = ForwardedHeaders([])
        request.propagate(headers)
        assert headers.getall("traceparent")[0].endswith("-02")
    finally:
        tracing.close()


def test_span_limits_from_the_environment_bound_recorded_attributes_as_the_sdks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "6")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2")
    sdk, recorded = both(1.0, ALWAYS_ON, [], b"/a/long/path/" + b"p" * 400)
    assert sdk.recording
    assert recorded.recording

    def said(outcome: Outcome) -> list[tuple[str, dict[str, object], int]]:
        return sorted(
            (s.name, dict(s.attributes or {}), s.dropped_attributes) for s in outcome.spans
        )

    assert said(sdk) == [
        # Two attributes kept, the last two set; the value cut to six characters.
        ("keyswap.request", {"url.path": "/a/lon", "http.response.status_code": 200}, 1),
        ("keyswap.upstream", {"http.request.method": "GET", "http.response.status_code": 200}, 0),
    ]
    assert said(recorded) == said(sdk)


def test_with_the_sdk_disabled_keyswap_records_no_spans(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    """``OTEL_SDK_DISABLED=true``: the SDK's provider hands out a no-op tracer (nothing recorded or
    exported); keyswap's own recording must not export spans either."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    sampled = [(b"traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode())]
    outcome = one_request(recorded_tracing(exporter, 1.0), exporter, sampled)
    assert not outcome.recording
    assert outcome.spans == ()
    for settings in (TracingSettings(), TracingSettings(sample_rate=1.0)):
        tracing = build_tracing(settings, env={"OTEL_TRACES_EXPORTER": "none"})
        try:
            assert not tracing.begin({"headers": sampled}, "GET", b"/").recording
            assert not tracing.begin({"headers": []}, "GET", b"/").recording
        finally:
            tracing.close()


SAMPLER_NAMES = [
    None,
    "",
    "parentbased_always_on",
    "PARENTBASED_ALWAYS_OFF",
    " parentbased_always_off",
    "parentbased_always_off\t",
    "parentbased_traceidratio",
    " parentbased_traceidratio",
    "traceidratio",
    "always_off",
    "unknown",
]
PARENT_BASED_NAMES = ("parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio")
SAMPLER_ARGS = [None, "", "0.25", " 0.5 ", "-0.0", "-1", "2", "nan", "inf", "x"]


def sdk_root_rate() -> float | None:
    """The rate of new traces the SDK's sampler from the environment samples (``None``: not
    parent-based)."""
    sampler = sampling._get_from_env_or_default()
    if not isinstance(sampler, ParentBased):
        return None
    root = sampler._root
    if root is ALWAYS_ON:
        return 1.0
    if root is ALWAYS_OFF:
        return 0.0
    assert isinstance(root, TraceIdRatioBased)
    return root.rate


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_parent_based_rate_reads_the_sampler_variables_as_the_sdk(
    monkeypatch: pytest.MonkeyPatch, name: str | None
) -> None:
    """Where keyswap decides (a rate, not ``None``), it decides what the SDK's sampler would."""
    for arg in SAMPLER_ARGS:
        for variable, value in (("OTEL_TRACES_SAMPLER", name), ("OTEL_TRACES_SAMPLER_ARG", arg)):
            if value is None:
                monkeypatch.delenv(variable, raising=False)
            else:
                monkeypatch.setenv(variable, value)
        rate = parent_based_rate(os.environ)
        if rate is not None:
            assert rate == sdk_root_rate(), (name, arg)
        if name is None or name.lower() in PARENT_BASED_NAMES:  # named exactly: keyswap decides
            assert rate is not None, (name, arg)


def test_parentbased_traceidratio_samples_new_traces_by_their_trace_id_as_the_sdk() -> None:
    """``OTEL_TRACES_SAMPLER=parentbased_traceidratio``: the SDK's ``TraceIdRatioBased`` samples a
    new trace iff the low 64 bits of its id are under ``rate * 2**64`` (deterministic, so another
    service's ``traceidratio`` at a rate at least as high samples every trace the gateway did).
    keyswap now decides these itself: its sampled traces must have such ids, its unsampled ones
    must not."""
    rate = 0.25
    bound = TraceIdRatioBased.get_bound_for_rate(rate)
    exporter = InMemorySpanExporter()
    tracing = recorded_tracing(exporter, rate)
    low_sampled: list[int] = []
    low_unsampled: list[int] = []
    for _ in range(400):
        request = tracing.begin({"headers": []}, "GET", b"/")
        headers = ForwardedHeaders([])
        request.propagate(headers)
        low = int(headers.getall("traceparent")[0].split("-")[1][16:], 16)
        (low_sampled if request.recording else low_unsampled).append(low)
    assert low_sampled
    assert low_unsampled
    assert all(low < bound for low in low_sampled)
    assert all(low >= bound for low in low_unsampled)


@pytest.mark.parametrize("rate", [0.0, 1e-18, 0.5, 1 - 2**-53, 1.0])
def test_new_trace_ids_agree_with_trace_id_ratio_at_any_rate(rate: float) -> None:
    """At the extremes too: a draw that TraceIdRatioBased would decide otherwise is moved to the
    other side of the bound at once (never drawn again and again: at a rate just under 1 only one
    id in 2**53 is on the unsampled side)."""
    bound = TraceIdRatioBased.get_bound_for_rate(rate)
    tracing = recorded_tracing(InMemorySpanExporter(), rate)
    for _ in range(200):
        for client in ([], [(b"traceparent", b"not valid")]):
            request = tracing.begin({"headers": client}, "GET", b"/")
            headers = ForwardedHeaders(list(client))
            request.propagate(headers)
            (value,) = headers.getall("traceparent")
            _, trace_id, span_id, flags = value.split("-")
            assert re.fullmatch("[0-9a-f]{32}", trace_id)
            assert re.fullmatch("[0-9a-f]{16}", span_id)
            low = int(trace_id[16:], 16)
            if request.recording:
                assert bound == 1 << 64 or low < bound
                assert flags == "03"
            elif 0 < bound < 1 << 64:
                assert low >= bound
                assert flags == "00"


def seeded_draws(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The sampling draw and the trace ids from one seeded generator (a repeatable test)."""
    import random

    from keyswap.gateway import tracing as tracing_module

    generator = random.Random(seed)
    monkeypatch.setattr(tracing_module, "_getrandbits", generator.getrandbits)
    monkeypatch.setattr(tracing_module, "_random", generator.random)


def test_sampled_new_trace_ids_are_uniform_under_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's sampled new traces have ids uniform under the bound (a uniform id, kept when under
    it), so another service's ``traceidratio`` at a lower rate samples its own rate of them. A
    ``getrandbits(64) % bound`` draw is not uniform: at 0.75, the lowest third of the range is
    drawn twice as often, and a service at 0.25 sampled 37.5 % of requests, not 25 %."""
    seeded_draws(monkeypatch, 1)
    tracing = recorded_tracing(InMemorySpanExporter(), 0.75)
    lower = TraceIdRatioBased.get_bound_for_rate(0.25)
    lows: list[int] = []
    for _ in range(3000):
        request = tracing.begin({"headers": []}, "GET", b"/", False)
        if request.recording:
            headers = ForwardedHeaders([])
            request.propagate(headers)
            lows.append(int(headers.getall("traceparent")[0].split("-")[1][16:], 16))
    share = sum(low < lower for low in lows) / len(lows)
    assert abs(share - 1 / 3) < 0.05, share


def test_unsampled_new_trace_ids_moved_above_the_bound_are_uniform(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unsampled new trace's id drawn under the bound is moved above it; uniformly (as the SDK's
    unsampled ids are), so a service at a higher ``traceidratio`` samples its rate of them. With
    ``getrandbits(64) % (2**64 - bound)`` at 0.25, half the moved ids fell under 0.5 x 2**64,
    not a third."""
    from keyswap.gateway.tracing import _unsampled

    seeded_draws(monkeypatch, 2)
    bound = TraceIdRatioBased.get_bound_for_rate(0.25)
    higher = TraceIdRatioBased.get_bound_for_rate(0.5)
    value = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-00"
    lows = [int(_unsampled(value, bound)[19:35], 16) for _ in range(3000)]
    assert all(low >= bound for low in lows)
    share = sum(low < higher for low in lows) / len(lows)
    assert abs(share - 1 / 3) < 0.05, share
