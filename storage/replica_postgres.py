"""Keeps an admission replica current from PostgreSQL, by LISTEN/NOTIFY.

A trigger (migration 6 in storage/migrations.py) announces every changed id,
whoever wrote it. One dedicated connection, outside the pool, LISTENs on
the IOLoop; the feed re-reads each announced id and applies the row as it
is now (so the order notices are applied in does not matter, and a burst
of changes to one id costs one read).

- LISTEN first, then load: a change committed during the load is announced
  to us and re-read after it.
- Every HEARTBEAT seconds a round trip on the same connection proves that
  every change committed before it was sent has been received; that is
  what "current" means (a frozen server or a dead network is noticed by a
  heartbeat that does not come back within its timeout).
- The connection lost (server restart, pg_terminate_backend, failover):
  reconnect with backoff, LISTEN, reload in full and swap at once. Until
  then the replica is unsynced and ages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psycopg2

from storage.base import Row
from storage.errors import StorageUnavailable
from storage.migrations import CHANGES_CHANNEL, RELOAD_CHANNEL
from storage.postgres import PostgresStorage
from storage.replica import (
    IndexBuilder,
    LoadClock,
    Replica,
    ReplicaEntry,
    ReplicaFeed,
    replica_entry,
)

log = logging.getLogger("imagelist.replica")

#: Seconds between proofs of currency while nothing else happens.
HEARTBEAT = 0.5
#: Reconnect backoff, seconds: first and largest wait.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0
#: Rows per FETCH during a full load: the driver holds one page of rows at
#: a time (their garbage, freed between pages, is what a load adds to the
#: process's memory beyond the replica itself), and the IOLoop runs other
#: work between pages.
LOAD_PAGE = 2000
#: More announced ids than this in one batch: reload in full instead.
RELOAD_ABOVE = 5000

#: How the feed's connection shows in pg_stat_activity.
APPLICATION_NAME = "imagelist-replica"
#: What the replica keeps of a row (storage.replica.ReplicaEntry), the
#: timestamps as integer microseconds: no datetime objects per row to make
#: and throw away.
ROW_COLUMNS = (
    "id, name, tags,"
    " (extract(epoch FROM created_at) * 1000000)::int8,"
    " (extract(epoch FROM updated_at) * 1000000)::int8,"
    " norm_name, digest"
)
LISTEN_SQL = f"LISTEN {CHANGES_CHANNEL}; LISTEN {RELOAD_CHANNEL}"
LOAD_BEGIN_SQL = (
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
    f"DECLARE imagelist_replica NO SCROLL CURSOR FOR SELECT {ROW_COLUMNS} FROM images"
)
LOAD_FETCH_SQL = f"FETCH {LOAD_PAGE} FROM imagelist_replica"
LOAD_END_SQL = "COMMIT"
FETCH_IDS_SQL = f"SELECT {ROW_COLUMNS} FROM images WHERE id = ANY(%(ids)s)"
HEARTBEAT_SQL = "SELECT 1"

_LOST: tuple[type[BaseException], ...] = (
    psycopg2.Error,
    OSError,
    TimeoutError,
    StorageUnavailable,
)


def _entry(raw: Row, shared: dict[str, str] | None = None) -> ReplicaEntry:
    """A replica entry from a row of ROW_COLUMNS."""
    return replica_entry(raw[0], raw[1], raw[2] or (), raw[3], raw[4], raw[5], raw[6], shared)


class PostgresFeed(ReplicaFeed):
    def __init__(self, storage: PostgresStorage, heartbeat: float = HEARTBEAT) -> None:
        self.storage = storage
        self.heartbeat = heartbeat
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pending: set[str] = set()
        self._reload_wanted = False
        self._followed = False
        self._closing = False

    @property
    def current_window(self) -> float:
        """How long one heartbeat's proof lasts: until the next one is due
        and has had its timeout to come back."""
        return self.heartbeat + self.storage.timeout + 1.5

    async def start(self, replica: Replica) -> None:
        self._task = asyncio.create_task(self._run(replica), name="imagelist-replica-feed")

    async def close(self) -> None:
        task = self._task
        self._closing = True
        # Cancelled again until it ends: Python 3.11's wait_for (inside
        # aiopg) drops a cancellation that arrives as its query completes.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("replica_feed_failed", exc_info=task.exception())

    def refetch(self, entry_id: str) -> None:
        self._pending.add(entry_id)
        self._wake.set()

    # -- the loop ------------------------------------------------------------------

    async def _run(self, replica: Replica) -> None:
        backoff = BACKOFF_FIRST
        while not self._closing:
            try:
                conn = await self.storage.connect_dedicated(APPLICATION_NAME)
            except _LOST as exc:
                replica.mark_unsynced(_describe(exc))
                replica.mark_unreachable()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self._followed = False
            try:
                await self._follow(conn, replica)
            except _LOST as exc:
                replica.mark_unsynced(_describe(exc))
            except Exception:
                # Never let the feed die: the replica would age out silently.
                log.exception("replica_feed_failed")
                replica.mark_unsynced("internal error")
            finally:
                conn.close()
            # A connection that worked until now is retried at once: a
            # killed session or a restart is the common case, not a loop.
            backoff = BACKOFF_FIRST if self._followed else min(backoff * 2, BACKOFF_MAX)
            await asyncio.sleep(backoff)

    async def _follow(self, conn: Any, replica: Replica) -> None:
        notifies = conn.notifies
        # One read of the notice queue stays outstanding across waits: a
        # read cancelled just as it took a notice would lose that notice.
        getter: asyncio.Future[Any] | None = None
        try:
            async with conn.cursor() as cur:
                await cur.execute(LISTEN_SQL)
                await self._load(cur, replica)
                replica.following = self._followed = True
                next_beat = time.monotonic() + self.heartbeat
                while not self._closing:
                    if getter is None:
                        getter = asyncio.ensure_future(notifies.get())
                    if not self._pending and not getter.done():
                        await self._wait(getter, next_beat)
                    if getter.done():
                        self._note(getter.result())  # raises once the connection is lost
                        getter = None
                    await self._drain(notifies)
                    if time.monotonic() >= next_beat:
                        proven_at = time.monotonic()
                        await cur.execute(HEARTBEAT_SQL)
                        await cur.fetchone()
                        await self._drain(notifies)
                        await self._apply(cur, replica)
                        replica.mark_current(proven_at)
                        next_beat = time.monotonic() + self.heartbeat
                    else:
                        await self._apply(cur, replica)
        finally:
            if getter is not None:
                getter.cancel()
                await asyncio.gather(getter, return_exceptions=True)

    async def _wait(self, getter: asyncio.Future[Any], until: float) -> None:
        """Until a notice arrives, a local write asks for a re-read, or `until`."""
        self._wake.clear()
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                {getter, wake},
                timeout=max(0.0, until - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            wake.cancel()
            await asyncio.gather(wake, return_exceptions=True)

    async def _drain(self, notifies: Any) -> None:
        """Note every notice already received, without waiting."""
        while not notifies.empty():
            self._note(await notifies.get())

    def _note(self, notify: Any) -> None:
        if notify.channel == RELOAD_CHANNEL:
            self._reload_wanted = True
        else:
            self._pending.add(notify.payload)

    async def _apply(self, cur: Any, replica: Replica) -> None:
        """Re-read every id noted so far, or reload when that is cheaper."""
        ids, self._pending = self._pending, set()
        if self._reload_wanted or len(ids) > RELOAD_ABOVE:
            self._reload_wanted = False
            await self._load(cur, replica)
            return
        if not ids:
            return
        await cur.execute(FETCH_IDS_SQL, {"ids": list(ids)})
        found = {entry.id: entry for entry in map(_entry, await cur.fetchall())}
        for entry_id in ids:
            replica.apply(entry_id, found.get(entry_id))

    async def _load(self, cur: Any, replica: Replica) -> None:
        """Every row, from one snapshot taken after LISTEN, swapped in whole.

        A server-side cursor in one REPEATABLE READ transaction: every page
        comes from the same snapshot (pages by key in separate statements
        would need that transaction anyway) and the server reads the table
        once, in its own order, without sorting it."""
        clock = LoadClock()
        proven_at = time.monotonic()
        mark = replica.load_mark()
        self._reload_wanted = False
        builder = IndexBuilder()
        shared = builder.shared
        await cur.execute(LOAD_BEGIN_SQL)
        try:
            while True:
                await cur.execute(LOAD_FETCH_SQL)
                page = await cur.fetchall()
                for raw in page:
                    builder.add(_entry(raw, shared))
                if len(page) < LOAD_PAGE:
                    break
                del page  # before the next page arrives, not after
            await cur.execute(LOAD_END_SQL)
        except BaseException:
            with contextlib.suppress(Exception):
                if not cur.connection.closed:
                    await cur.execute("ROLLBACK")
            raise
        replica.replace(builder, clock, proven_at, mark)


def _describe(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
