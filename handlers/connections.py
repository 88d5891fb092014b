"""The HTTP server, bounded: at most --max-connections open connections,
and an accept loop that backs off when the process is out of descriptors.

Tornado's accept loop retries at once on EMFILE and logs every failure
(netutil.add_accept_handler): with the descriptor limit reached it spins
at 100% CPU and floods the log. Two guards here:

- a cap below the descriptor limit: at the cap, the connection that has
  waited longest without sending a complete request (an idle keep-alive
  connection, a slow or stalled sender) is closed to admit the new one, as
  nginx reuses idle keep-alive connections; when every connection is busy
  with a request, the new one is closed instead;
- a listening socket whose accept() turns EMFILE/ENFILE into "nothing to
  accept" and stops watching the socket for a while (Tornado has no hook
  for this: the socket object it calls accept() on is the one place).
"""

from __future__ import annotations

import errno
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

import structlog
from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

log = structlog.get_logger("imagelist.http")

# accept() errors that mean "out of descriptors or memory": retrying at
# once cannot succeed.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
PAUSE_MIN, PAUSE_MAX = 0.05, 1.0


class RateLimitedLog:
    """At most one line per `interval` seconds for one event; the lines
    skipped in between are counted in the next one."""

    def __init__(self, event: str, interval: float = 1.0) -> None:
        self.event = event
        self.interval = interval
        self._last = -float("inf")
        self._skipped = 0

    def warning(self, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._skipped += 1
            return
        self._last = now
        log.warning(self.event, suppressed=self._skipped, **fields)
        self._skipped = 0


class GuardedSocket(socket.socket):
    """A listening socket whose accept() pauses the accept loop, with a
    growing delay, while the process is out of descriptors."""

    _pause = 0.0
    _paused = False
    _log = RateLimitedLog("accept_failed")

    @classmethod
    def wrap(cls, sock: socket.socket) -> GuardedSocket:
        return cls(sock.family, sock.type, sock.proto, fileno=sock.detach())

    def accept(self) -> tuple[socket.socket, Any]:
        if self._paused:
            raise BlockingIOError(errno.EAGAIN, "accepting is paused")
        try:
            conn, address = super().accept()
        except OSError as exc:
            if exc.errno not in _EXHAUSTED:
                raise
            self._pause = min(PAUSE_MAX, max(PAUSE_MIN, self._pause * 2))
            self._log.warning(error=exc.strerror, retry_in_s=self._pause)
            self._stop_watching()
            raise BlockingIOError(errno.EAGAIN, "out of descriptors") from exc
        self._pause = 0.0
        return conn, address

    def _stop_watching(self) -> None:
        loop = IOLoop.current()
        fd = self.fileno()
        self._paused = True
        loop.update_handler(fd, 0)

        def resume() -> None:
            self._paused = False
            # Not if the server stopped (and closed the socket) meanwhile.
            if self.fileno() == fd:
                loop.update_handler(fd, IOLoop.READ)

        loop.call_later(self._pause, resume)


class _RequestTracker(httputil.HTTPMessageDelegate):
    """Tells the server when a connection's request has fully arrived."""

    def __init__(
        self, inner: httputil.HTTPMessageDelegate, server: LimitedHTTPServer, stream: IOStream
    ) -> None:
        self.inner = inner
        self.server = server
        self.stream = stream

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.server.request_complete(self.stream)
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()


class LimitedHTTPServer(HTTPServer):
    """An HTTPServer holding at most `max_connections` connections."""

    def initialize(self, *args: Any, max_connections: int = 0, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        # Open connections; those waiting for (the rest of) a request are
        # also in `waiting`, oldest first.
        self.open_streams: set[IOStream] = set()
        self.waiting: OrderedDict[IOStream, None] = OrderedDict()
        self._log = RateLimitedLog("connection_limit")

    def add_sockets(self, sockets: Any) -> None:
        """Listen on `sockets`; pass GuardedSocket.wrap()ped ones to keep
        using them (a plain socket is wrapped here, and detached)."""
        super().add_sockets(
            [s if isinstance(s, GuardedSocket) else GuardedSocket.wrap(s) for s in sockets]
        )

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if self.max_connections and len(self.open_streams) >= self.max_connections:
            if self.waiting:
                oldest, _ = self.waiting.popitem(last=False)
                self.open_streams.discard(oldest)
                oldest.close()
                self._log.warning(action="closed_idle", limit=self.max_connections)
            else:
                self._log.warning(action="refused_new", limit=self.max_connections)
                stream.close()
                return
        self.open_streams.add(stream)
        self.waiting[stream] = None
        super().handle_stream(stream, address)

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        stream: IOStream = server_conn.stream  # type: ignore[attr-defined]
        if stream in self.open_streams:
            # Between requests: waiting for the next one (keep-alive).
            self.waiting[stream] = None
            self.waiting.move_to_end(stream)
        return _RequestTracker(delegate, self, stream)

    def request_complete(self, stream: IOStream) -> None:
        self.waiting.pop(stream, None)

    def on_close(self, server_conn: object) -> None:
        stream = server_conn.stream  # type: ignore[attr-defined]
        self.open_streams.discard(stream)
        self.waiting.pop(stream, None)
        super().on_close(server_conn)
