"""A sampled request's spans, recorded by keyswap and handed to the span processors when they end.

The ``--trace-sample-rate`` path of :mod:`keyswap.gateway.tracing` (which decides the sampling before
this module is reached). Each span ends as an OpenTelemetry SDK ``ReadableSpan``, the object the
SDK's own spans hand their processors, so the same ``BatchSpanProcessor`` and OTLP exporter send it.

Why not the SDK's ``Tracer.start_span``: it is general (the sampler asked again for every span, any
attributes checked and bounded under a lock, a mutable span object copied into a ``ReadableSpan``
at its end, the SDK's own metrics) and cost about 12 µs a span in a hot loop and ~80 µs when it ran
once in a hundred requests in the gateway (BENCHMARKS.md, section 11d). keyswap's spans are a fixed
set with a handful of attributes it knows to be valid, so here a span is two ids, two clock readings
and one ``ReadableSpan`` built when it ends. Processors are told of a span at its end only
(``on_end``; the batch processor's ``on_start`` does nothing).

Imports the OpenTelemetry SDK: only imported when tracing is on with a sample rate.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from time import time_ns
from typing import Any, TypeVar

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from keyswap.gateway.tracing import inject

__all__ = ["RecordedTrace", "SpanSink"]

T = TypeVar("T")

_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
_SAMPLED = 0x01
#: W3C Trace Context level 2's "random trace id" flag (set by the SDK too for ids it draws).
_RANDOM_TRACE_ID = 0x02
_NEW_TRACE_FLAGS = TraceFlags(_SAMPLED | _RANDOM_TRACE_ID)
_getrandbits = random.getrandbits  # as the SDK's RandomIdGenerator (reseeded in a forked child)


def _new_id(bits: int) -> int:
    """A random non-zero id of ``bits`` bits (an all-zero id is invalid)."""
    while True:
        value = _getrandbits(bits)
        if value:
            return value


class _Resource(Resource):
    """``resource`` with its hash computed once. The OTLP encoder groups each batch's spans by
    resource, hashing every span's, and ``Resource.__hash__`` serialises the attributes to JSON
    each time: a fifth of the encoder's instructions per span (BENCHMARKS.md, section 11d)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class SpanSink:
    """Where a recorded span goes when it ends: ``processors`` (their ``on_end``), with
    ``resource`` and keyswap's instrumentation scope on every span.

    ``limits``: the span limits the provider applies (default: ``SpanLimits()``, read from the
    ``OTEL_*_LIMIT`` variables as the provider's default is); a span's attributes are bounded by
    them as the SDK's would be when a value length limit is set or it has more than the count limit.
    """

    __slots__ = ("_max_count", "_max_length", "processors", "resource", "scope")

    def __init__(
        self,
        processors: Sequence[SpanProcessor],
        resource: Resource,
        limits: SpanLimits | None = None,
    ) -> None:
        from keyswap import __version__

        self.processors = tuple(processors)
        self.resource: Resource = _Resource(resource)  # equal to ``resource``
        self.scope = InstrumentationScope("keyswap.gateway", __version__)
        limits = SpanLimits() if limits is None else limits
        self._max_count = limits.max_span_attributes
        self._max_length = limits.max_span_attribute_length

    def end(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        start: int,
        attributes: Mapping[str, Any] | None,
        status: Status,
    ) -> None:
        """Hand the finished span to every processor (ending now)."""
        if attributes is not None and (
            self._max_length is not None
            or (self._max_count is not None and len(attributes) > self._max_count)
        ):
            attributes = BoundedAttributes(
                self._max_count, attributes, immutable=True, max_value_len=self._max_length
            )
        span = ReadableSpan(
            name,
            context,
            parent,
            self.resource,
            attributes,
            kind=kind,
            status=status,
            start_time=start,
            end_time=time_ns(),
            instrumentation_scope=self.scope,
        )
        for processor in self.processors:
            processor.on_end(span)


class RecordedTrace:
    """One sampled request's spans (the same methods as ``tracing.RequestTrace``): a ``SERVER``
    span ``keyswap.request``, a child of ``parent`` (the caller's sampled span context) or the
    root of a new trace, and its children."""

    __slots__ = ("_attributes", "_context", "_parent", "_sink", "_start")

    recording = True

    def __init__(
        self,
        sink: SpanSink,
        parent: SpanContext | None,
        method: str,
        path: str,
        trace_id: int | None = None,
    ) -> None:
        self._start = time_ns()
        self._sink = sink
        self._parent = parent
        if parent is None:  # a new trace: ``trace_id`` (random, non-zero) or a new random one
            trace_id = _new_id(128) if trace_id is None else trace_id
            self._context = SpanContext(trace_id, _new_id(64), False, _NEW_TRACE_FLAGS)
        else:  # sampled, the caller's random-id flag and trace state kept (as the SDK's sampler)
            flags = TraceFlags(_SAMPLED | (parent.trace_flags & _RANDOM_TRACE_ID))
            self._context = SpanContext(
                parent.trace_id, _new_id(64), False, flags, parent.trace_state
            )
        self._attributes: dict[str, Any] = {"http.request.method": method, "url.path": path}

    def _child(self) -> SpanContext:
        context = self._context
        return SpanContext(
            context.trace_id, _new_id(64), False, context.trace_flags, context.trace_state
        )

    async def run(self, name: str, step: Awaitable[T]) -> T:
        """Await ``step`` inside a child span ``name``."""
        context = self._child()
        start = time_ns()
        status = _UNSET
        try:
            return await step
        except BaseException as exc:
            status = Status(StatusCode.ERROR, type(exc).__name__)
            raise
        finally:
            self._sink.end(name, context, self._context, SpanKind.INTERNAL, start, None, status)

    async def upstream(
        self,
        forward: Callable[..., Awaitable[int]],
        scope: Any,
        receive: Any,
        send: Any,
        target: bytes,
        headers: Any,
    ) -> int:
        """``forward(...)`` inside a ``CLIENT`` span ``keyswap.upstream`` whose ``traceparent`` is
        set on ``headers`` (any client-sent one replaced); returns the status."""
        context = self._child()
        start = time_ns()
        inject(context, headers)
        attributes: dict[str, Any] = {"http.request.method": scope["method"]}
        status = _UNSET
        try:
            code = await forward(scope, receive, send, target, headers)
        except BaseException as exc:
            status = Status(StatusCode.ERROR, type(exc).__name__)
            raise
        else:
            attributes["http.response.status_code"] = code
            if code >= 500:
                status = _ERROR
            return code
        finally:
            self._sink.end(
                "keyswap.upstream",
                context,
                self._context,
                SpanKind.CLIENT,
                start,
                attributes,
                status,
            )

    def propagate(self, headers: Any) -> None:
        """Set the ``traceparent`` of the request's span on ``headers``."""
        inject(self._context, headers)

    def note(self, name: str, value: str) -> None:
        """Set attribute ``name`` on the request's span."""
        self._attributes[name] = value

    def finish(self, status: int) -> None:
        """End the request's span with its ``status``."""
        attributes = self._attributes
        attributes["http.response.status_code"] = status
        self._sink.end(
            "keyswap.request",
            self._context,
            self._parent,
            SpanKind.SERVER,
            self._start,
            attributes,
            _ERROR if status >= 500 else _UNSET,
        )
