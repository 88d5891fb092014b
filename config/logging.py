"""structlog set-up: one JSON object per line on stdout, for every logger.

Tornado's, aiopg's and Python's own loggers (and warnings) are routed through
the same ProcessorFormatter, so nothing writes a non-JSON line.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType

import structlog
from structlog.tracebacks import ExceptionDictTransformer


def setup_logging(log_format: str = "json", debug: bool = False) -> None:
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
    else:
        renderer = structlog.processors.JSONRenderer()
        # Frame locals can hold tokens and passwords: never render them.
        exc = [structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))]

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
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Tornado's access log would duplicate our own request line.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    route_uncaught_errors()


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
