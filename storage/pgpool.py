"""A small pool of aiopg connections that works with what it has.

aiopg's own pool fails the whole request when a connection died while idle
(`assert not conn.closed` in `_acquire`: a 500 after pg_terminate_backend)
and, kept warm with minsize = maxsize, tries to reopen every missing
connection on every acquire: with the server at max_connections one lost
backend made every request fail. Here a dead connection is dropped when it
is found, a missing one is reopened one at a time when a request needs it,
and a request that cannot open one waits for a connection another request
releases. The caller (PostgresStorage._run) already limits the number of
holders to `maxsize` with a FIFO semaphore, so this pool never queues more
than that.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg2.extensions

Connect = Callable[[], Awaitable[Any]]


class NoConnection(Exception):
    """No connection could be had within the pool's timeout."""


def _looks_dead(conn: Any) -> bool:
    """An idle connection has nothing to read unless the server hung up
    (pg_terminate_backend, a restart): its socket is then readable.
    poll(), not select(): descriptors may be numbered past FD_SETSIZE."""
    if conn.closed:
        return True
    try:
        poller = select.poll()
        poller.register(conn.raw.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg2.InterfaceError):
        return True


class ConnectionPool:
    def __init__(
        self,
        connect: Connect,
        *,
        maxsize: int,
        timeout: float,
        errors: tuple[type[BaseException], ...],
        retry_interval: float = 1.0,
    ) -> None:
        self._connect = connect
        self.maxsize = maxsize
        self._timeout = timeout
        self._errors = errors
        self._retry_interval = retry_interval
        self._idle: deque[Any] = deque()
        self._used: set[Any] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._last_connect_failure = -float("inf")
        self._closing = False

    @property
    def size(self) -> int:
        return len(self._idle) + len(self._used)

    @property
    def freesize(self) -> int:
        return len(self._idle)

    async def fill(self) -> None:
        """Open connections up to `maxsize`. Fewer is fine (the server may be
        short of slots); none raises the connect error."""
        while self.size < self.maxsize:
            try:
                conn = await self._open()
            except self._errors:
                if self.size == 0:
                    raise
                return
            self._idle.append(conn)

    async def _open(self) -> Any:
        self._opening += 1
        try:
            return await self._connect()
        except self._errors:
            self._last_connect_failure = time.monotonic()
            raise
        finally:
            self._opening -= 1

    def _take_idle(self) -> Any | None:
        while self._idle:
            conn = self._idle.popleft()
            if _looks_dead(conn):
                conn.close()
                continue
            self._used.add(conn)
            return conn
        return None

    async def acquire(self, fresh: bool = False) -> Any:
        """A live connection. `fresh`: a newly opened one if the server gives
        one (for the retry after a connection died), else any live one."""
        deadline = time.monotonic() + self._timeout
        while True:
            if self._closing:
                raise NoConnection("the pool is closed")
            if not fresh and (conn := self._take_idle()) is not None:
                return conn
            if self._may_open(fresh):
                if fresh and self.size + self._opening >= self.maxsize and self._idle:
                    self._idle.popleft().close()  # make room for the fresh one
                try:
                    conn = await self._open()
                except self._errors:
                    if self.size == 0:
                        raise  # nothing to wait for: an outage
                else:
                    self._used.add(conn)
                    return conn
                fresh = False
                continue
            fresh = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoConnection(
                    f"no database connection within {self._timeout:g} s "
                    f"({self.size} of {self.maxsize} open)"
                )
            await self._wait_release(remaining)

    def _may_open(self, fresh: bool) -> bool:
        if self.size == 0:
            return True
        if time.monotonic() - self._last_connect_failure < self._retry_interval:
            # The server just refused one (no free slot?): use ours meanwhile.
            return False
        return fresh or self.size + self._opening < self.maxsize

    async def _wait_release(self, timeout: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, min(timeout, self._retry_interval))
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self, conn: Any, discard: bool = False) -> None:
        """Give `conn` back; `discard` (or a broken or mid-transaction
        connection) closes it instead."""
        self._used.discard(conn)
        broken = (
            discard
            or self._closing
            or conn.closed
            or conn.raw.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE
        )
        if broken:
            conn.close()
        else:
            self._idle.append(conn)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def close(self) -> None:
        """Close idle connections now, used ones as they come back."""
        self._closing = True
        while self._idle:
            self._idle.popleft().close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def terminate(self) -> None:
        """Close every connection, used ones included."""
        self.close()
        for conn in list(self._used):
            conn.close()
        self._used.clear()
