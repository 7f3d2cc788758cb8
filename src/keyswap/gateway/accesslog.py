"""One access-log line per request on the ``keyswap.access`` logger, written off the request path.

Line format (``INFO``)::

    GET /hello 200 consumer=demo key_id=key_01H... 0.84ms

Fields are also attached to the record (``extra``) as ``method``, ``path``, ``status``, ``consumer``,
``key_id`` and ``latency_ms`` for structured handlers. The path is logged without its query string (a
query may carry secrets), truncated to 512 characters, with non-printable characters escaped. Neither
the API key nor the minted JWT is ever passed to the logger: refused requests log ``consumer=-``.

Cost on the request path: one ``isEnabledFor`` check and, when INFO is on, one ``perf_counter``
call and appending a tuple to a queue (the request's fields, its start and its end). Every
``interval`` seconds (50 ms) while lines come, the event loop turns the queue into one batch, with
each request's own time as its time (its end on ``perf_counter``, turned into wall-clock time once
per batch): for a plain stream or file handler with the gateway's format (:data:`GATEWAY_FORMAT`)
the lines are built directly (no LogRecord, no Formatter; what a line says before its latency is
built once per batch for each distinct request: one key's traffic formats it once), other handlers
get records as usual. A thread (``keyswap-access-log``) writes each batch in one write
and one flush instead of one per line, so a slow pipe never blocks the loop (building the batch on the
loop, not on that thread, avoids the thread holding the GIL while the loop waits). Called outside an
event loop, the thread also builds the batches. Lines therefore
appear up to ``interval`` later than the request; :meth:`AccessLog.flush` writes what is pending (the
gateway calls it at shutdown, and at interpreter exit). At most ``max_pending`` lines wait (100,000):
past that, lines are dropped and counted, and a warning says how many.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import queue
import threading
import time
from collections import deque

__all__ = ["ACCESS_LOGGER", "AccessLog"]

ACCESS_LOGGER = "keyswap.access"
_MAX_PATH = 512
_FORMAT = "%s %s %d consumer=%s key_id=%s %.2fms"
# _FORMAT as GATEWAY_FORMAT writes it, in two parts: the request's, then the time and the latency.
_MIDDLE = " INFO %s: %s %s %d consumer=%s key_id=%s "
_END = "%s,%03d%s%.2fms\n"
_perf_counter = time.perf_counter
#: What a request logs: method, raw path, status, consumer, key id.
_Fields = tuple[str, bytes, int, "str | None", "str | None"]
#: One queued line: the request's fields, its start and its end (``time.perf_counter()``).
_Line = tuple[_Fields, float, float]


def _printable(raw_path: bytes) -> str:
    path = raw_path[:_MAX_PATH].decode("latin-1")
    if not path.isprintable():
        path = path.encode("unicode_escape").decode("ascii")
    return path if len(raw_path) <= _MAX_PATH else path + "..."


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of ``logger`` reaches (as ``Logger.callHandlers`` walks them)."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    return found


#: The format ``keyswap gateway`` gives its log handler (keyswap.gateway.serve.configure_logging); a
#: plain stream or file handler with exactly this formatter gets lines built without a LogRecord.
GATEWAY_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _plain_json(handler: logging.Handler) -> bool:
    """A plain stream or file handler formatting with :class:`keyswap.logformat.JsonFormatter`
    (``--log-format json``): its lines are built directly too."""
    from keyswap.logformat import JsonFormatter

    return (
        type(handler) in (logging.StreamHandler, logging.FileHandler)
        and not handler.filters
        and handler.terminator == "\n"  # type: ignore[attr-defined]
        and type(handler.formatter) is JsonFormatter
    )


def _plain(handler: logging.Handler) -> bool:
    formatter = handler.formatter
    return (
        type(handler) in (logging.StreamHandler, logging.FileHandler)
        and not handler.filters
        and handler.terminator == "\n"  # type: ignore[attr-defined]
        and type(formatter) is logging.Formatter
        and formatter._fmt == GATEWAY_FORMAT
        and formatter.datefmt is None
        and type(formatter._style) is logging.PercentStyle
        and formatter.converter is time.localtime
        and formatter.default_msec_format == "%s,%03d"
    )


class AccessLog:
    """Writes access-log lines from a background thread; costs one ``isEnabledFor`` check when INFO
    is off, and one queue append when it is on.

    Args:
        logger: where lines go (default: the ``keyswap.access`` logger).
        interval: seconds between the writer's passes over the queue.
        max_pending: most lines waiting to be written; further lines are dropped and counted.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        interval: float = 0.05,
        max_pending: int = 100_000,
    ) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._interval = interval
        self._max_pending = max_pending
        self._pending: deque[_Line] = deque()
        self._dropped = 0
        self._lock = threading.Lock()  # one writer at a time (the thread, or flush)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()
        self._scheduled = False  # a batch is scheduled on the event loop
        self._closed = False
        self._out: queue.SimpleQueue[tuple[logging.Handler, str] | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._writer: threading.Thread | None = None  # writes the batches built on the loop
        self._second = -1  # the second self._stamp formats
        self._stamp = ""
        self._json_second = -1  # the same for JSON lines (UTC)
        self._json_stamp = ""

    def log(
        self,
        method: str,
        raw_path: bytes,
        status: int,
        consumer: str | None,
        key_id: str | None,
        started: float,
    ) -> None:
        """Queue one request's line; ``started`` is the ``time.perf_counter()`` value at its start."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        pending = self._pending
        if len(pending) >= self._max_pending:
            self._dropped += 1
            return
        pending.append(((method, raw_path, status, consumer, key_id), started, _perf_counter()))
        if not self._scheduled:
            self._schedule()

    def flush(self) -> int:
        """Write every queued line now, on the caller's thread; returns how many were written."""
        self._drain()
        with self._lock:
            return self._write(defer=False)

    def close(self) -> None:
        """Stop the writer threads after writing what is queued."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._wake.set()
            thread.join(5.0)
        self._closed = True
        self.flush()
        writer, self._writer = self._writer, None
        if writer is not None:
            self._out.put(None)
            writer.join(5.0)

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop: a thread of its own writes every interval
            if self._thread is None:
                self._start()
            return
        self._scheduled = True
        loop.call_later(self._interval, self._on_loop)

    def _on_loop(self) -> None:
        """On the event loop, every ``interval`` while lines come: build the batch (cheap, no GIL
        contention with a formatting thread) and hand its text to the writer thread (the write may
        block on a slow pipe: never on the loop)."""
        self._scheduled = False
        try:
            with self._lock:
                self._write(defer=not self._closed)
        except Exception:  # never let a broken handler break the loop
            logging.getLogger("keyswap.gateway").exception("writing the access log failed")

    def _drain(self) -> None:
        """Wait (5 s at most) until the writer thread has written what it was given."""
        if self._writer is None:
            return
        done = threading.Event()
        self._out.put(done)
        done.wait(5.0)

    def _write_out(self) -> None:
        while (item := self._out.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            self._emit(*item)

    def _start(self) -> None:
        with self._started:
            if self._thread is not None:
                return
            self._wake.clear()
            thread = threading.Thread(target=self._run, name="keyswap-access-log", daemon=True)
            self._thread = thread
            thread.start()
            atexit.register(self.flush)

    def _run(self) -> None:
        while not self._wake.wait(self._interval):
            try:
                self.flush()
            except Exception:  # never let a broken handler stop the writer
                logging.getLogger("keyswap.gateway").exception("writing the access log failed")

    def _write(self, *, defer: bool) -> int:
        pending = self._pending
        if not pending:
            return 0
        take = pending.popleft
        lines: list[_Line] = [take() for _ in range(len(pending))]
        # perf_counter -> wall clock, once per batch (the lines are at most `interval` old)
        offset = time.time() - _perf_counter()
        logger = self._logger
        handlers = [h for h in _handlers(logger) if h.level <= logging.INFO]
        fast = [] if logger.filters else [h for h in handlers if _plain(h)]
        fast_json = (
            [] if logger.filters else [h for h in handlers if h not in fast and _plain_json(h)]
        )
        others = [h for h in handlers if h not in fast and h not in fast_json]
        if fast:  # the gateway's own format: the line is built directly, no record, no Formatter
            text = self._text(logger.name, lines, offset)
            for handler in fast:
                self._hand(handler, text, defer)
        if fast_json:  # --log-format json: the same object JsonFormatter makes, built directly
            text = "".join(
                self._json_line(logger.name, *fields, (ended - started) * 1000.0, ended + offset)
                for fields, started, ended in lines
            )
            for handler in fast_json:
                self._hand(handler, text, defer)
        batched: dict[logging.Handler, list[str]] = {}
        for fields, started, ended in lines if others else ():
            record = self._record(*fields, (ended - started) * 1000.0, ended + offset)
            if logger.filters and not logger.filter(record):
                continue
            for handler in others:
                if type(handler) in (logging.StreamHandler, logging.FileHandler):
                    if handler.filters and not handler.filter(record):
                        continue
                    batched.setdefault(handler, []).append(
                        handler.format(record) + handler.terminator  # type: ignore[attr-defined]
                    )
                else:
                    handler.handle(record)
        for handler, texts in batched.items():
            self._hand(handler, "".join(texts), defer)
        dropped, self._dropped = self._dropped, 0
        if dropped:
            logging.getLogger("keyswap.gateway").warning(
                "%d access-log lines dropped (the log could not keep up)", dropped
            )
        return len(lines)

    def _text(self, name: str, lines: list[_Line], offset: float) -> str:
        """The batch's lines as :data:`GATEWAY_FORMAT` writes them (``offset``: wall clock minus
        ``perf_counter``). The part between the time and the latency is formatted once per distinct
        request in the batch."""
        middles: dict[_Fields, str] = {}
        second, stamp = self._second, self._stamp
        out: list[str] = []
        add = out.append
        for fields, started, ended in lines:
            middle = middles.get(fields)
            if middle is None:
                method, raw_path, status, consumer, key_id = fields
                middle = middles[fields] = _MIDDLE % (
                    name,
                    method,
                    _printable(raw_path),
                    status,
                    consumer or "-",
                    key_id or "-",
                )
            at = ended + offset
            whole = int(at)
            if whole != second:
                second = whole
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole))
            add(_END % (stamp, int((at - whole) * 1000), middle, (ended - started) * 1000.0))
        self._second, self._stamp = second, stamp
        return "".join(out)

    def _json_line(
        self,
        name: str,
        method: str,
        raw_path: bytes,
        status: int,
        consumer: str | None,
        key_id: str | None,
        latency_ms: float,
        at: float,
    ) -> str:
        second = int(at)
        if second != self._json_second:
            self._json_second = second
            self._json_stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        path = _printable(raw_path)
        fields = {
            "time": f"{self._json_stamp}.{int((at - second) * 1000):03d}Z",
            "level": "INFO",
            "logger": name,
            "message": _FORMAT % (method, path, status, consumer or "-", key_id or "-", latency_ms),
            "method": method,
            "path": path,
            "status": status,
            "consumer": consumer,
            "key_id": key_id,
            "latency_ms": round(latency_ms, 3),
        }
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")) + "\n"

    def _record(
        self,
        method: str,
        raw_path: bytes,
        status: int,
        consumer: str | None,
        key_id: str | None,
        latency_ms: float,
        at: float,
    ) -> logging.LogRecord:
        logger = self._logger
        path = _printable(raw_path)
        # makeRecord, not logger.info: skips the caller lookup (a stack walk) and the `extra` copy.
        record = logger.makeRecord(
            logger.name,
            logging.INFO,
            __file__,
            0,
            _FORMAT,
            (method, path, status, consumer or "-", key_id or "-", latency_ms),
            None,
            "log",
        )
        record.created = at
        record.msecs = (at - int(at)) * 1000.0
        fields = record.__dict__
        fields["method"] = method
        fields["path"] = path
        fields["status"] = status
        fields["consumer"] = consumer
        fields["key_id"] = key_id
        fields["latency_ms"] = round(latency_ms, 3)
        return record

    def _hand(self, handler: logging.Handler, text: str, defer: bool) -> None:
        if not defer:
            self._emit(handler, text)
            return
        if self._writer is None:
            with self._started:
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_out, name="keyswap-access-log", daemon=True
                    )
                    self._writer.start()
                    atexit.register(self.flush)
        self._out.put((handler, text))

    @staticmethod
    def _emit(handler: logging.Handler, text: str) -> None:
        stream = getattr(handler, "stream", None)
        if stream is None:  # a FileHandler opened lazily (delay=True)
            stream = handler._open()  # type: ignore[attr-defined]
            handler.stream = stream  # type: ignore[attr-defined]
        handler.acquire()
        try:
            stream.write(text)
            handler.flush()
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": "access log batch"}))
        finally:
            handler.release()
