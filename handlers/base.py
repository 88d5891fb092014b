"""BaseHandler: request id, JSON bodies and errors, request logging."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from http.client import responses
from typing import Any

import orjson
import structlog
import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPServerRequest

from config.logging import event_writer
from handlers.context import AppContext
from handlers.errors import CHALLENGE, ApiError, map_exception
from handlers.paging import ascii_digits
from storage.errors import OutOfScope, Revoked
from storage.model import ANONYMOUS, Writer

log = structlog.get_logger("imagelist.http")
# The request line's fast path (see config.logging.JsonLinesHandler).
_write_event = event_writer("imagelist.http")
auth_log = structlog.get_logger("imagelist.auth")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_HANDLER_METHODS = ("get", "head", "post", "delete", "patch", "put", "options")
_BEARER = re.compile(r"^Bearer +([^\s]+) *$", re.IGNORECASE)
CLIENT_CLOSED_REQUEST = 499


# Every handler streams its request body, so a route that takes none can
# refuse one from its headers instead of Tornado buffering it first.
@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    #: The route as declared, for logs and metrics (never the raw path).
    route: str = "unmatched"
    #: The methods that take a request body here (see BodyHandler).
    body_methods: frozenset[str] = frozenset()

    ctx: AppContext
    request_id: str
    token_name: str | None = None
    #: What the token may write (config.scopes.Scope.allows); None: everything.
    may_write: Callable[[str], bool] | None = None
    #: The request line is written once (a handler may still finish after
    #: its client left).
    request_logged: bool = False

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.started = time.perf_counter()
        self.token_name = None
        self.may_write = None
        self._presented = b""
        self.ctx.inflight += 1
        self.ctx.metrics.inflight.inc()
        self._counted = True
        self._answer: tuple[BaseException, ApiError | None] | None = None
        sent = self.request.headers.get("X-Request-ID", "")
        self.request_id = sent if _REQUEST_ID.match(sent) else os.urandom(16).hex()
        self.set_header("X-Request-ID", self.request_id)

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        if hasattr(self, "request_id"):
            self.set_header("X-Request-ID", self.request_id)

    def compute_etag(self) -> None:
        # Entries change under clients; hashing every body buys nothing.
        return None

    def on_finish(self) -> None:
        self._release()

    def on_connection_close(self) -> None:
        # Tornado's own version fails a streamed body's pending read. A
        # request whose connection closes before its response is finished
        # never reaches on_finish: it is released here instead.
        super().on_connection_close()
        if self._counted:
            # The client hung up before the answer (mid-body, or while we
            # worked): nginx's 499 "client closed request", in the metrics
            # and the request log, never the 200 that was never sent.
            self.set_status(CLIENT_CLOSED_REQUEST)
            log_request(self)
        self._release()

    def _release(self) -> None:
        """The request is over (finished, or its connection gone): count it
        once, whichever of the two Tornado reports, or both."""
        if not self._counted:
            return
        self._counted = False
        self.ctx.inflight -= 1
        self.ctx.metrics.inflight.dec()
        self.ctx.metrics.observe_request(
            self.route,
            self.request.method or "",
            self.get_status(),
            time.perf_counter() - self.started,
        )

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # Tornado's version answers with its own message, which quotes the
        # raw bytes; this one says what is wrong in the client's terms.
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the URL path is not valid UTF-8") from None

    def connection(self) -> HTTP1Connection:
        """The request's connection: Tornado's HTTPServer only makes HTTP/1 ones."""
        connection = self.request.connection
        if not isinstance(connection, HTTP1Connection):
            raise TypeError(f"unexpected connection type {type(connection).__name__}")
        return connection

    def prepare(self) -> None:
        self.refuse_unwanted_body()

    def refuse_unwanted_body(self) -> None:
        """413 for a body on a method that takes none, before reading it."""
        method = self.request.method or ""
        if method in self.body_methods or method not in self.allowed_methods():
            return  # a body is welcome, or the method gets its 405
        headers = self.request.headers
        length = headers.get("Content-Length", "0")
        if "Transfer-Encoding" in headers or not (ascii_digits(length) and int(length) == 0):
            raise ApiError(413, f"{method} {self.route} takes no request body")

    def data_received(self, chunk: bytes) -> None:
        """A refused body's bytes still arrive (until the connection closes): dropped."""

    def query(self, name: str) -> str | None:
        """The last `name` query parameter, exactly as sent.

        Tornado's get_query_argument silently deletes control characters;
        here they reach validation and are rejected there instead.
        """
        values = self.request.query_arguments.get(name)
        if not values:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(
                400, f"query parameter {name} is not valid UTF-8", {"parameter": name}
            ) from None

    # -- responses ---------------------------------------------------------

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(value))

    def allowed_methods(self) -> list[str]:
        cls = type(self)
        methods = [
            m.upper()
            for m in _HANDLER_METHODS
            if m != "head" and getattr(cls, m) is not getattr(tornado.web.RequestHandler, m)
        ]
        return [*methods, "HEAD"] if "GET" in methods else methods

    async def head(self, *args: str) -> None:
        """HEAD is GET without its body, on every route that answers GET
        (Tornado sends a HEAD response's headers only, Content-Length kept)."""
        if "GET" not in self.allowed_methods():
            raise tornado.web.HTTPError(405)
        answer = self.get(*args)
        if answer is not None:
            await answer

    def answer_for(self, exc: BaseException | None) -> ApiError | None:
        """`map_exception(exc)`, worked out once per error: Tornado hands the
        same error to log_exception and then to write_error."""
        if exc is None:
            return None
        if self._answer is None or self._answer[0] is not exc:
            self._answer = (exc, map_exception(exc))
        return self._answer[1]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        answer = self.answer_for(exc)
        details: dict[str, object] | None = None
        if answer is not None:
            status_code, message, details = answer.status, answer.message, answer.details
            for name, value in answer.headers.items():
                self.set_header(name, value)
        elif status_code < 500:
            # Tornado's own errors (a malformed request): its log_message is
            # for the log, and may quote raw input; the client gets the reason.
            message = responses.get(status_code, "client error")
        else:
            message = "internal error"
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
            message = f"method {self.request.method} not allowed here"
        self.set_status(status_code)
        body: dict[str, object] = {"error": message, "request_id": self.request_id}
        if details:
            body["details"] = details
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if isinstance(value, OutOfScope):
            # Every write route reaches storage, which raises this before
            # writing: one place logs and counts each refused write.
            auth_log.warning(
                "auth_forbidden",
                request_id=self.request_id,
                token=value.actor,
                repository=value.name,
                method=self.request.method,
                route=self.route,
            )
            self.ctx.metrics.token_forbidden_writes.labels(value.actor).inc()
        elif isinstance(value, Revoked):
            auth_log.warning(
                "auth_rejected", request_id=self.request_id, reason="revoked", token=value.actor
            )
        answer = self.answer_for(value)
        if answer is not None and answer.expected:
            if answer.status >= 500:
                log.warning("request_failed", request_id=self.request_id, error=str(value))
            return
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return
        log.error("unhandled_exception", request_id=self.request_id, exc_info=(typ, value, tb))

    # -- authentication --------------------------------------------------------

    def authorize_write(self) -> None:
        """Require a valid bearer token when auth is on (`--tokens-file`).

        Write handlers call this before reading the body, so an
        unauthenticated request gets 401 whatever it sent. The token's
        name goes into the request log line; the token itself goes nowhere.
        """
        tokens = self.ctx.tokens
        if tokens is None:
            return
        header = self.request.headers.get("Authorization")
        if header is None:
            auth_log.warning("auth_rejected", request_id=self.request_id, reason="missing")
            raise ApiError(
                401,
                "authorization required: send Authorization: Bearer <token>",
                headers=CHALLENGE,
            )
        match = _BEARER.match(header)
        if match is None:
            auth_log.warning("auth_rejected", request_id=self.request_id, reason="malformed")
            raise ApiError(
                401, "malformed Authorization header; expected Bearer <token>", headers=CHALLENGE
            )
        # Tornado decodes header bytes as latin-1: this gets the sent bytes back.
        self._presented = match.group(1).encode("latin-1")
        verdict = tokens.check(self._presented)
        if not verdict.ok:
            auth_log.warning(
                "auth_rejected",
                request_id=self.request_id,
                reason=verdict.reason,
                token=verdict.name,
            )
            raise ApiError(401, "invalid or disabled token", headers=CHALLENGE)
        self.token_name = verdict.name
        self.may_write = None if verdict.scope is None else verdict.scope.allows

    def writer(self) -> Writer:
        """Who this write is for: the token, the request, and the
        repositories the token's scopes allow, as storage records and checks
        them (the stored name, in the write's transaction).

        The token was checked when the headers arrived; a PUT's body may
        take up to the body timeout (30 s) to follow, and the write may wait
        for the database. Storage asks `current` once it holds the write's
        transaction, so a token revoked or narrowed meanwhile writes
        nothing."""
        return Writer(
            actor=self.token_name or ANONYMOUS.actor,
            request_id=self.request_id,
            may_write=self.may_write,
            current=None if self.ctx.tokens is None else self._current_writer,
        )

    def _current_writer(self) -> Writer | None:
        """This request's writer as the token set in force now sees it (None:
        its token no longer writes). Storage calls it once it holds the
        write's transaction, possibly on its worker thread: it only reads."""
        tokens = self.ctx.tokens
        verdict = tokens.check(self._presented) if tokens is not None else None
        if verdict is None or not verdict.ok or verdict.name is None:
            return None
        return Writer(
            actor=verdict.name,
            request_id=self.request_id,
            may_write=None if verdict.scope is None else verdict.scope.allows,
        )

    # -- request bodies ------------------------------------------------------

    def too_large(self) -> ApiError:
        limit = self.ctx.config.max_body_size
        return ApiError(413, f"request body larger than {limit} bytes")


@tornado.web.stream_request_body
class BodyHandler(BaseHandler):
    """A handler that takes a JSON body, with a size limit answered in JSON.

    Tornado's own limit answers a bare 400 and drops the connection, so
    the body is streamed and measured here; Tornado's limit stays as the
    backstop (16x) for a chunked body that never ends.
    """

    body_methods = frozenset({"PUT", "POST"})

    def prepare(self) -> None:
        self.refuse_unwanted_body()
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        limit = self.ctx.config.max_body_size
        length = self.request.headers.get("Content-Length")
        if length is not None and ascii_digits(length) and int(length) > limit:
            raise self.too_large()
        self.connection().set_max_body_size(limit * 16)

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.ctx.config.max_body_size:
            self._too_large = True
            self._chunks.clear()
        elif not self._too_large:
            self._chunks.append(chunk)

    def json_body(self) -> Any:
        """The parsed body; 413 when over the limit, 400 when not JSON."""
        if self._too_large:
            raise self.too_large()
        try:
            return orjson.loads(b"".join(self._chunks))
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"malformed JSON body: {exc}") from None


def request_summary(handler: tornado.web.RequestHandler) -> dict[str, Any]:
    """The fields of the one log line each request gets."""
    request: HTTPServerRequest = handler.request
    fields: dict[str, Any] = {
        "method": request.method,
        "route": getattr(handler, "route", "unmatched"),
        "path": request.path,
        "status": handler.get_status(),
        "duration_ms": round(request.request_time() * 1000, 3),
        "remote": request.remote_ip,
    }
    if isinstance(handler, BaseHandler):
        fields["request_id"] = handler.request_id
        if handler.token_name is not None:
            fields["token"] = handler.token_name
    return fields


def log_request(handler: tornado.web.RequestHandler) -> None:
    if isinstance(handler, BaseHandler):
        if handler.request_logged:
            return
        handler.request_logged = True
    status = handler.get_status()
    level = "error" if status >= 500 else "warning" if status >= 400 else "info"
    fields = request_summary(handler)
    if not _write_event(level, "request", fields):
        getattr(log, level)("request", **fields)
