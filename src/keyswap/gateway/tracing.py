"""OpenTelemetry tracing for the gateway (the ``[otel]`` extra; ``keyswap gateway --tracing``).

Off by default: then this module is not even imported and the request path pays one ``is None`` check
per step. On, each proxied request gets a ``SERVER`` span (``keyswap.request``), a child of the
incoming W3C ``traceparent`` when the client sent one, with children for the API-key lookup
(``keyswap.key_lookup``), the token (``keyswap.mint``: a signature, or a cached token reused) and the upstream call (``keyswap.upstream``, ``CLIENT``). The origin receives a
``traceparent`` (and the client's ``tracestate``) naming the upstream span, so its own spans join the
same trace; the client's own ``traceparent`` is never forwarded as is. The gateway's own paths
(``/__keyswap/``: health checks, JWKS) are not traced.

Sampling: ``--trace-sample-rate R`` samples a fraction R of new traces and follows the caller's
decision when a valid ``traceparent`` says (as ``parentbased_traceidratio``); without it, the standard
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` variables decide (default: every request), and
a parent-based sampler there (the default is one) is decided here the same way, as a rate
(:func:`parent_based_rate`). A request that is not sampled gets no child spans. When the decision
is made here, it is made before OpenTelemetry is called at all: a request left out only gets a
``traceparent`` for the origin (flag ``00``, the caller's trace id if it sent one, else a new one;
its ``tracestate`` kept), built by hand from random ids drawn in batches, which keeps a 1 % rate
cheap (about 2 µs a request left out; see BENCHMARKS.md, section 11b); and a sampled request's
spans are recorded by :mod:`keyswap.gateway.tracespans`, not by the SDK's tracer (section 11d).
Any other sampler is applied by the SDK's tracer, span by span.

Export: the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, the default, over HTTP/protobuf;
``console``; ``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME`` (default ``keyswap-gateway``),
``OTEL_RESOURCE_ATTRIBUTES`` and the batch processor's ``OTEL_BSP_*``. Spans carry the method and the
path without its query string; never a key, a token or a header value.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    NoOpTracer,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from keyswap.errors import ConfigError

if (
    TYPE_CHECKING
):  # the SDK is imported only when spans are recorded (build_tracing checks it is there)
    from keyswap.gateway.tracespans import RecordedTrace, SpanSink

__all__ = ["RequestTrace", "Tracing", "TracingSettings", "build_tracing", "inject"]

T = TypeVar("T")

_TRACEPARENT = b"traceparent"
_TRACESTATE = b"tracestate"
_MAX_PATH = 512
_SAMPLED_FLAG = 0x01
#: W3C Trace Context level 2's random-trace-id flag.
_RANDOM_FLAG = 0x02


class _AsgiGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _AsgiGetter()
#: W3C Trace Context ``traceparent`` (version 00 exactly; a later version's first four fields).
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


#: The longest ``traceparent`` the SDK's propagator reads (a longer one is ignored).
_MAX_TRACEPARENT = 512


def _parent_of(value: str | None) -> tuple[str, int] | None:
    """``(trace id, flags)`` of a valid ``traceparent``, else ``None`` (then a new trace starts).

    Valid as the SDK's propagator (which ``Tracing._start`` then asks) reads it: at most 512
    characters, spaces and tabs only around it (not any other white space ``str.strip`` removes).
    """
    if value is None or len(value) > _MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT_RE.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if (
        version == "ff"
        or (version == "00" and rest is not None)
        or trace_id == _ZERO_TRACE
        or span_id == _ZERO_SPAN
    ):
        return None
    return trace_id, int(flags, 16)


def _carried(by_name: Mapping[bytes, bytes]) -> dict[str, str]:
    """The client's ``traceparent`` / ``tracestate`` from its headers by name (one C-level ``dict()``
    of the ASGI headers, names in lower case; the last of repeated names wins: a repeated
    ``traceparent`` is invalid anyway)."""
    found: dict[str, str] = {}
    parent = by_name.get(_TRACEPARENT)
    if parent is not None:
        found["traceparent"] = parent.decode("latin-1")
    state = by_name.get(_TRACESTATE)
    if state is not None:
        found["tracestate"] = state.decode("latin-1")
    return found


#: ``len(b"00-") + 32``: where a fresh ``traceparent``'s ``-<span id>-00`` starts.
_SPAN_PART = 35
#: Fresh ``traceparent`` values made per batch (:func:`_fresh_traceparents`).
_BATCH = 512
#: Fresh ``traceparent`` values not handed out yet, taken with ``pop()``; emptied in a forked
#: child, which must not reuse its parent's ids.
_FRESH: list[bytes] = []
os.register_at_fork(after_in_child=_FRESH.clear)


def _fresh_traceparents(
    count: int, random_bytes: Callable[[int], bytes] = os.urandom
) -> list[bytes]:
    """``count`` ``traceparent`` values ``00-<trace id>-<span id>-00`` with random ids.

    Built for a whole batch by a few C-level bytes operations (per value, about a seventh of the
    instructions of two ``random.getrandbits`` and an f-string): 24 random bytes per value as hex
    in 16-digit groups, the separators then set where the format wants them. A batch in which any
    group is all zeros (an all-zero id is invalid; odds about 2**-53 per batch) is drawn again.
    """
    while True:
        digits = random_bytes(24 * count).hex("-", 8)  # "g1-g2-g3-g4-...": 16 digits a group
        if "0000000000000000" not in digits:
            break
    buf = bytearray(digits + "-", "ascii")  # value k: g1 at 51k, its "-" at 51k+16, 33, 50
    buf[16::51] = b"_" * count  # joins the trace id's halves (removed below)
    buf[50::51] = b"\n" * count  # ends a value
    data = b"00-" + bytes(buf).replace(b"_", b"").replace(b"\n", b"-00\n00-")
    return data[:-4].split(b"\n")


def _fresh_traceparent() -> bytes:
    """A new ``traceparent`` (flag ``00``) from the current batch, a new batch when it is empty
    (``list.pop`` is atomic: threads sharing the batch never get the same value)."""
    while True:
        try:
            return _FRESH.pop()
        except IndexError:
            _FRESH.extend(_fresh_traceparents(_BATCH))


#: Where the low 64 bits of a ``traceparent``'s trace id are (16 hex digits).
_LOW_ID = slice(19, 35)
_ID_SPACE = 1 << 64


def _unsampled(value: bytes, bound: int) -> bytes:
    """``value`` (a fresh ``traceparent``) with the low 64 bits of its trace id redrawn at or above
    ``bound`` (0 < bound < 2**64), where ``TraceIdRatioBased`` with that bound does not sample;
    uniform there, as the SDK's unsampled ids are (128 random bits reduced: a bias under 2**-64,
    where 64 bits made some values twice as likely as others)."""
    low = bound + _getrandbits(128) % (_ID_SPACE - bound)
    return b"%b%016x%b" % (value[:19], low, value[35:])


def _sampled_trace_id(bound: int) -> int:
    """A random trace id that ``TraceIdRatioBased`` with this bound would sample (its low 64 bits
    below ``bound``; any id when the bound is 0 or ``2**64``), never zero."""
    while True:
        # Uniform under the bound: 128 random bits reduced (see _unsampled).
        low = _getrandbits(128) % bound if 0 < bound < _ID_SPACE else _getrandbits(64)
        trace_id = _getrandbits(64) << 64 | low
        if trace_id:
            return trace_id


def _ratio_bound(rate: float) -> int:
    """``TraceIdRatioBased``'s bound: a new trace is sampled iff the low 64 bits of its id are
    below it."""
    return round(rate * (1 << 64))


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """How ``keyswap gateway --tracing`` traces.

    Attributes:
        sample_rate: fraction of new traces sampled (``parentbased_traceidratio``); ``None``: the
            ``OTEL_TRACES_SAMPLER`` variables decide.
        service_name: ``service.name`` unless ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES``
            sets one.
    """

    sample_rate: float | None = None
    service_name: str = "keyswap-gateway"

    def __post_init__(self) -> None:
        rate = self.sample_rate
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ConfigError(f"the trace sample rate must be between 0 and 1, got {rate!r}")


class RequestTrace:
    """One request's spans (see the module docstring); made by :meth:`Tracing.begin`."""

    __slots__ = ("_context", "_root", "_tracer", "recording")

    def __init__(self, tracer: Tracer, root: Span, context: Context) -> None:
        self._tracer = tracer
        self._root = root
        self._context = context
        self.recording = root.is_recording()

    async def run(self, name: str, step: Awaitable[T]) -> T:
        """Await ``step`` inside a child span ``name`` (no span when the request is not sampled)."""
        if not self.recording:
            return await step
        span = self._tracer.start_span(name, context=self._context)
        try:
            return await step
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    async def upstream(
        self,
        forward: Callable[..., Awaitable[int]],
        scope: Any,
        receive: Any,
        send: Any,
        target: bytes,
        headers: Any,
    ) -> int:
        """``forward(...)`` inside a ``CLIENT`` span, ``traceparent`` set on ``headers`` (any
        client-sent one replaced); returns the status."""
        span: Span | None = None
        context = self._context
        if self.recording:
            span = self._tracer.start_span(
                "keyswap.upstream",
                context=context,
                kind=SpanKind.CLIENT,
                attributes={"http.request.method": scope["method"]},
            )
            inject(span.get_span_context(), headers)
        else:
            _PROPAGATOR.inject(headers, context=context)
        try:
            status = await forward(scope, receive, send, target, headers)
        except BaseException as exc:
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
            raise
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        return status

    def propagate(self, headers: Any) -> None:
        """Set the ``traceparent`` of this request's span on ``headers`` (the upstream span's is
        set by :meth:`upstream`)."""
        _PROPAGATOR.inject(headers, context=self._context)

    def note(self, name: str, value: str) -> None:
        """Set attribute ``name`` on the request's span: a step answered from memory (a cached key,
        a reused token) gets this instead of a span of its own."""
        self._root.set_attribute(name, value)

    def finish(self, status: int) -> None:
        """End the request's span with its ``status``."""
        root = self._root
        if self.recording:
            root.set_attribute("http.response.status_code", status)
            if status >= 500:
                root.set_status(Status(StatusCode.ERROR))
        root.end()


_PROPAGATOR = TraceContextTextMapPropagator()


def inject(span: SpanContext, headers: Any) -> None:
    """Set ``traceparent`` (and ``tracestate``) naming ``span`` on ``headers``: what
    ``_PROPAGATOR.inject`` sets, without making a context for it."""
    value = f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"
    headers.set(_TRACEPARENT, value.encode("ascii"))
    if span.trace_state:
        headers.set(_TRACESTATE, span.trace_state.to_header().encode("latin-1"))


class _Unsampled:
    """A request left out by the sampling decision: no span, only a ``traceparent`` for the origin.

    ``prefix``: ``b"00-<the caller's trace id>"``, or ``None`` for a new trace (replacing what the
    client sent: an invalid ``traceparent``, or a ``tracestate`` alone). ``random``: the caller's
    ``traceparent`` has the random-trace-id flag (kept for its trace, as the SDK keeps it).
    """

    __slots__ = ("_bound", "_flags", "_floor", "_prefix", "_tracestate")

    recording = False

    def __init__(
        self,
        prefix: bytes | None,
        tracestate: bytes | None,
        random: bool = False,
        bound: int = 0,
    ) -> None:
        self._prefix = prefix
        self._tracestate = tracestate
        self._flags = b"02" if random else b"00"
        self._bound = bound
        # A new trace's id is kept out of TraceIdRatioBased's sampled range below ``bound``
        # (compared as 16 hex digits, the same order as the numbers'); no range at 0 or 2**64.
        self._floor = b"%016x" % bound if 0 < bound < _ID_SPACE else None

    async def run(self, name: str, step: Awaitable[T]) -> T:
        return await step

    def note(self, name: str, value: str) -> None:
        pass

    async def upstream(
        self,
        forward: Callable[..., Awaitable[int]],
        scope: Any,
        receive: Any,
        send: Any,
        target: bytes,
        headers: Any,
    ) -> int:
        self.propagate(headers)
        return await forward(scope, receive, send, target, headers)

    def propagate(self, headers: Any) -> None:
        """Set ``traceparent`` (not sampled) and the caller's ``tracestate`` on ``headers``."""
        prefix = self._prefix
        if prefix is None:  # a new trace: an id the sampling rate leaves out
            value = _fresh_traceparent()
            if self._floor is not None and value[_LOW_ID] < self._floor:
                value = _unsampled(value, self._bound)
            headers.set(_TRACEPARENT, value)
            return
        value = _fresh_traceparent()
        # A new span id in their trace: value[_SPAN_PART:-2] is "-<span id>-".
        headers.set(_TRACEPARENT, prefix + value[_SPAN_PART:-2] + self._flags)
        if self._tracestate is not None:
            headers.set(_TRACESTATE, self._tracestate)

    def finish(self, status: int) -> None:
        pass


class _NewUnsampled(_Unsampled):
    """An unsampled new trace of a client that sent no trace headers: nothing to replace, the
    ``traceparent`` is appended as is (the common case: kept to a ``pop()`` and an ``append``)."""

    __slots__ = ()

    def propagate(self, headers: Any) -> None:
        """Append a fresh ``traceparent`` (not sampled) to ``headers``."""
        try:
            value = _FRESH.pop()
        except IndexError:  # once a batch
            value = _fresh_traceparent()
        floor = self._floor
        if floor is not None and value[_LOW_ID] < floor:  # as often as the rate
            value = _unsampled(value, self._bound)
        headers.items.append((_TRACEPARENT, value))


_getrandbits = random.getrandbits  # a sampled new trace's id (as the SDK's RandomIdGenerator)
_random = random.random  # the sampling draw (the module's generator, reseeded in a forked child)


class Tracing:
    """Starts request traces from ``provider`` (an OpenTelemetry SDK ``TracerProvider``).

    ``sample_rate``: decide here which new traces are sampled (and follow a valid incoming
    ``traceparent``'s decision), calling OpenTelemetry only for sampled requests; the provider's
    sampler should then sample everything it is given (``ALWAYS_ON``, or ``ParentBased(ALWAYS_ON)``:
    the same here, as only sampled parents reach it). ``None``: every
    request goes to OpenTelemetry and its sampler decides.

    ``spans`` (with ``sample_rate`` only): the sampled requests' spans are recorded by keyswap
    (:mod:`keyswap.gateway.tracespans`) and handed to these processors as they end, instead of
    going through the provider's tracer; build it from the processors added to ``provider``.

    ``close`` shuts the provider down (flushing spans) when ``owns_provider`` is true.
    """

    def __init__(
        self,
        provider: TracerProvider,
        *,
        owns_provider: bool = False,
        sample_rate: float | None = None,
        spans: SpanSink | None = None,
    ) -> None:
        from keyswap import __version__

        self.provider = provider
        self._tracer = provider.get_tracer("keyswap.gateway", __version__)
        self._owns = owns_provider
        self.sample_rate = sample_rate
        self._spans = spans if sample_rate is not None else None
        if isinstance(self._tracer, NoOpTracer):  # OTEL_SDK_DISABLED=true: no spans recorded
            self._spans = None
        self._recorded: type[RecordedTrace] | None = None
        if self._spans is not None:
            from keyswap.gateway.tracespans import RecordedTrace as recorded

            self._recorded = recorded
        # New traces are decided by a draw at the rate, and given ids on the same side of
        # TraceIdRatioBased's bound (the low 64 bits of the id under it: sampled), so another
        # service's ``traceidratio`` at the same rate decides them as the gateway did, and at a
        # higher rate samples every trace the gateway sampled.
        bound = _ratio_bound(1.0 if sample_rate is None else sample_rate)
        self._bound = bound
        #: Every unsampled new trace without client trace headers (ids taken in ``propagate``).
        self._new_unsampled = _NewUnsampled(None, None, bound=bound)
        #: An unsampled new trace replacing an invalid ``traceparent`` (or a ``tracestate`` alone).
        self._replacing_unsampled = _Unsampled(None, None, bound=bound)

    def begin(
        self, scope: Any, method: str, raw_path: bytes, traced: bool = True
    ) -> RequestTrace | RecordedTrace | _Unsampled:
        """The ``SERVER`` span of one request (a child of the client's ``traceparent``, if valid),
        or, for a request the sampling decision leaves out, only what propagates the trace.

        ``traced=False``: the caller knows the request has neither ``traceparent`` nor
        ``tracestate`` (the gateway learns it in the pass that finds the API key), so the headers
        are not read here.
        """
        rate = self.sample_rate
        if traced:
            by_name = dict(scope["headers"])  # one C call; names are lower case in ASGI, mostly
            if _TRACEPARENT not in by_name and _TRACESTATE not in by_name:
                # A server that passes names as sent ("Traceparent"): read them in lower case.
                by_name = {name.lower(): value for name, value in scope["headers"]}
            if _TRACEPARENT in by_name or _TRACESTATE in by_name:
                return self._carried_trace(by_name, rate, method, raw_path)
        # No trace headers (the common case): a new trace.
        if rate is not None and _random() >= rate:
            return self._new_unsampled
        return self._start(None, method, raw_path)

    def _carried_trace(
        self, by_name: dict[bytes, bytes], rate: float | None, method: str, raw_path: bytes
    ) -> RequestTrace | RecordedTrace | _Unsampled:
        """:meth:`begin` for a request that carries ``traceparent`` or ``tracestate``."""
        carried = _carried(by_name)
        if rate is not None:
            found = _parent_of(carried.get("traceparent"))
            if found is None:  # a new trace (an invalid traceparent is ignored, as OTel does)
                if _random() >= rate:
                    return self._replacing_unsampled
                return self._start(None, method, raw_path)
            trace_id, flags = found
            if not flags & _SAMPLED_FLAG:  # the caller did not sample: followed
                prefix = b"00-" + trace_id.encode()
                random_id = bool(flags & _RANDOM_FLAG)
                return _Unsampled(prefix, by_name.get(_TRACESTATE), random_id)
        return self._start(carried, method, raw_path)

    def _start(
        self, carried: dict[str, str] | None, method: str, raw_path: bytes
    ) -> RequestTrace | RecordedTrace:
        parent = None if carried is None else _PROPAGATOR.extract(carried, getter=_GETTER)
        path = raw_path[:_MAX_PATH].decode("latin-1")
        if self._recorded is not None:  # sampled here: the spans are recorded by keyswap
            assert self._spans is not None
            remote = None if parent is None else trace.get_current_span(parent).get_span_context()
            if remote is not None and not remote.is_valid:
                remote = None
            trace_id = None if remote is not None else _sampled_trace_id(self._bound)
            return self._recorded(self._spans, remote, method, path, trace_id)
        root = self._tracer.start_span(
            "keyswap.request",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        return RequestTrace(self._tracer, root, trace.set_span_in_context(root, parent))

    def close(self) -> None:
        """Flush and stop the exporter (when this object made the provider)."""
        if self._owns:
            shutdown = getattr(self.provider, "shutdown", None)
            if callable(shutdown):
                shutdown()


def build_tracing(settings: TracingSettings, env: Mapping[str, str] | None = None) -> Tracing:
    """A :class:`Tracing` exporting as the ``OTEL_*`` variables say (see the module docstring).

    Build it in the process that serves (after a fork: the batch exporter runs a thread).

    Raises:
        ConfigError: the ``[otel]`` extra is missing, or ``OTEL_TRACES_EXPORTER`` names an exporter
            other than ``otlp``, ``console`` or ``none``.
    """
    environ = os.environ if env is None else env
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import SpanLimits
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError(
            "--tracing needs the OpenTelemetry SDK: pip install 'keyswap[otel]'"
        ) from None
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:  # pragma: no cover - depends on the install
                raise ConfigError(
                    "the OTLP exporter is missing: pip install 'keyswap[otel]'"
                ) from None
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported (use otlp, console or none)"
            )
    attributes: dict[str, str] = {}
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes[SERVICE_NAME] = settings.service_name
    rate = settings.sample_rate
    if rate is None:
        rate = parent_based_rate(environ)
    sampler: Sampler | None = None  # None: OTEL_TRACES_SAMPLER decides
    if rate is not None:  # decided by Tracing.begin before OpenTelemetry is called
        sampler = ALWAYS_ON  # (not ParentBased: a sampled parent is all it is ever given)
    limits = SpanLimits()  # the OTEL_*_LIMIT variables, for the provider's spans and keyswap's
    provider = SdkTracerProvider(
        resource=Resource.create(attributes), sampler=sampler, span_limits=limits
    )
    processors = [BatchSpanProcessor(exporter) for exporter in exporters]
    for processor in processors:
        provider.add_span_processor(processor)  # shut down (flushed) with the provider
    spans = None
    if rate is not None:
        from keyswap.gateway.tracespans import SpanSink

        spans = SpanSink(processors, provider.resource, limits)
    return Tracing(provider, owns_provider=True, sample_rate=rate, spans=spans)


#: ``OTEL_TRACES_SAMPLER`` values that :meth:`Tracing.begin` decides as well: the parent-based
#: samplers (a valid caller's ``traceparent`` decides for its trace), by their rate for new traces.
_PARENT_BASED = {"parentbased_always_on": 1.0, "parentbased_always_off": 0.0}


def parent_based_rate(environ: Mapping[str, str]) -> float | None:
    """The rate of new traces sampled that the ``OTEL_TRACES_SAMPLER`` variables ask for, when they
    name a parent-based sampler (or none: the default is ``parentbased_always_on``); ``None`` for
    any other sampler, which OpenTelemetry's SDK then applies itself.

    As the SDK reads them: ``parentbased_traceidratio`` takes ``OTEL_TRACES_SAMPLER_ARG``, and an
    argument that is not a number from 0 to 1 means 1.
    """
    # Not stripped: the SDK reads " parentbased_always_off" as an unknown name (so its default).
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").lower()
    if name in _PARENT_BASED:
        return _PARENT_BASED[name]
    if name != "parentbased_traceidratio":
        return None
    try:
        rate = float(environ.get("OTEL_TRACES_SAMPLER_ARG", ""))
    except ValueError:
        return 1.0
    return rate if 0.0 <= rate <= 1.0 else 1.0
