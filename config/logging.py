"""structlog set-up: one JSON object per line on stdout, for every logger.

Tornado's, aiopg's and Python's own loggers (and warnings) are routed through
the same ProcessorFormatter, so nothing writes a non-JSON line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

from config.redact import Redactor


def setup_logging(
    log_format: str = "json", debug: bool = False, secrets: Iterable[str] = ()
) -> None:
    """`secrets` (the database password) are scrubbed from every line, as
    are bearer tokens and Authorization values (config.redact)."""
    redactor = Redactor(secrets)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_format == "console":
        # Colour codes only on a terminal, not in a pipe, file or the journal.
        renderer: structlog.typing.Processor = structlog.dev.ConsoleRenderer(
            colors=sys.stdout.isatty()
        )
        exc: list[structlog.typing.Processor] = []
        # The console renderer writes tracebacks itself: scrub its text.
        after: list[structlog.typing.Processor] = [redactor.rendered]
    else:
        renderer = structlog.processors.JSONRenderer(serializer=dumps_json)
        # Frame locals can hold tokens and passwords: never render them.
        exc = [structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))]
        after = []

    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exc,
            redactor,
            renderer,
            *after,
        ],
    )
    handler = (
        logging.StreamHandler(sys.stdout)
        if log_format == "console"
        else JsonLinesHandler(sys.stdout, redactor)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Tornado's access log would duplicate our own request line.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    route_uncaught_errors()


def dumps_json(value: Any, default: Callable[[Any], Any] | None = None, **_: Any) -> str:
    """structlog's JSON serializer: orjson (several times faster than json),
    falling back to json for what orjson refuses (integers over 64 bits)."""
    try:
        return orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value, default=default)


def utc_timestamp() -> str:
    """What structlog's TimeStamper(fmt="iso", utc=True) writes."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return now.isoformat(timespec="microseconds") + "Z"


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stdout handler of the JSON format.

    Besides log records it takes ready-made events (`write_event`): the
    request line, written once per request, skips the LogRecord and the
    processor chain, which cost more CPU than serving a lookup. The line is
    the one structlog would write, through the same stream and lock.
    """

    def __init__(self, stream: Any, redactor: Redactor | None = None) -> None:
        super().__init__(stream)
        self.redactor = redactor or Redactor()

    def write_event(self, logger: str, level: str, event: str, fields: dict[str, Any]) -> None:
        # Request fields come from the client (the path): scrubbed like any.
        self.redactor(None, level, fields)  # in place
        fields["event"] = event
        fields["level"] = level
        fields["logger"] = logger
        fields["timestamp"] = utc_timestamp()
        line = bounded_line(dumps_json(fields, repr)) + "\n"
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(line)
                self.stream.flush()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": event}))

    def format(self, record: logging.LogRecord) -> str:
        return bounded_line(super().format(record))


# journald splits a line over LineMax (48 KiB by default) into several
# records, and a split JSON line is no longer JSON: stay well below.
MAX_LINE = 16 * 1024
MAX_FIELD = 1024  # characters of one string, in a line that was too long
MAX_ITEMS = 20  # items of one list, in a line that was too long


def _shrunk(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD:
        return value[:MAX_FIELD] + f"...[{len(value) - MAX_FIELD} more characters]"
    if isinstance(value, list):
        items = [_shrunk(v) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"...[{len(value) - MAX_ITEMS} more items]")
        return items
    if isinstance(value, dict):
        return {k: _shrunk(v) for k, v in value.items()}
    return value


# JSON leaves these raw, but they end a line for Python's splitlines() and
# for many log viewers: one event would read as two lines.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def bounded_line(line: str) -> str:
    """`line` (one JSON object) as one line at most MAX_LINE long: Unicode
    line breaks escaped; long strings and lists cut, marked as cut, and
    the line says it was truncated."""
    line = _one_line(line)
    return _cut(line) if len(line) > MAX_LINE else line


def _one_line(line: str) -> str:
    return line if line.isascii() else line.translate(_LINE_BREAKS)


def _cut(line: str) -> str:
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError:
        fields = {"event": "unparsable_log_line", "text": line}
    if not isinstance(fields, dict):
        fields = {"event": "unparsable_log_line", "text": line}
    fields = _shrunk(fields)
    fields["truncated_from"] = len(line)
    shorter = _one_line(dumps_json(fields))
    if len(shorter) <= MAX_LINE:
        return shorter
    keep = ("event", "level", "logger", "timestamp", "request_id")
    minimal = {k: fields[k] for k in keep if k in fields} | {"truncated_from": len(line)}
    return _one_line(dumps_json(minimal))


def event_writer(logger: str) -> Callable[[str, str, dict[str, Any]], bool]:
    """A fast `write(level, event, fields)` for `logger`'s events when the
    JSON handler is installed; it returns False when the event must go
    through structlog instead (console format, or no JSON handler)."""
    std = logging.getLogger(logger)
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
    levels["error"] = logging.ERROR

    def write(level: str, event: str, fields: dict[str, Any]) -> bool:
        handlers = logging.getLogger().handlers
        if len(handlers) != 1 or not isinstance(handlers[0], JsonLinesHandler):
            return False
        if std.isEnabledFor(levels[level]):
            handlers[0].write_event(logger, level, event, fields)
        return True

    return write


def route_uncaught_errors() -> None:
    """Python prints uncaught exceptions (main thread, other threads, and
    "Exception ignored in ..." ones) to stderr as plain text: log them."""
    log = logging.getLogger("imagelist")

    def excepthook(
        typ: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        log.critical("uncaught_exception", exc_info=(typ, value, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            log.error(
                "uncaught_exception_in_thread",
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
                extra={"thread": args.thread.name if args.thread else None},
            )

    def unraisable_hook(args: sys.UnraisableHookArgs) -> None:
        if args.exc_value is not None:
            log.error(
                "unraisable_exception",
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
                extra={"context": args.err_msg or repr(args.object)},
            )

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
