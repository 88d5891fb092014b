"""Keeps an admission replica current from the embedded SQLite store.

Another process may write the same file (a second instance, the sqlite3
shell). `PRAGMA data_version` changes exactly when another connection has
committed, and costs microseconds: it is read before every decision, and
the replica is reloaded in full when it moved. The store's own writes do
not move it; they reach the replica through `Storage.on_change`. A replica
checked this way is the table, so a denial needs no confirmation.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection
from dataclasses import dataclass

from storage.base import Row
from storage.errors import StorageError
from storage.replica import (
    IndexBuilder,
    LoadClock,
    Replica,
    ReplicaEntry,
    ReplicaFeed,
    replica_entry,
)
from storage.sqlite import SqliteStorage

ROW_COLUMNS = "id, name, tags, created_at, updated_at, norm_name, digest"
VERSION_SQL = "PRAGMA data_version"
LOAD_SQL = f"SELECT {ROW_COLUMNS} FROM images"
FETCH_ID_SQL = f"SELECT {ROW_COLUMNS} FROM images WHERE id = ?"


def _entry(raw: Row, shared: dict[str, str] | None = None) -> ReplicaEntry:
    """A replica entry from a row of ROW_COLUMNS."""
    return replica_entry(raw[0], raw[1], json.loads(raw[2]), raw[3], raw[4], raw[5], raw[6], shared)


#: Rows read at a time during a full load (its transient memory).
LOAD_PAGE = 2000


@dataclass(frozen=True, slots=True)
class _Changes:
    #: Every row, when another connection committed since the last check.
    rows: IndexBuilder | None
    #: The rows asked for by id (absent: deleted).
    fetched: dict[str, Row | None]


class SqliteFeed(ReplicaFeed):
    exact = True

    def __init__(self, storage: SqliteStorage) -> None:
        self.storage = storage
        self._replica: Replica | None = None
        self._pending: set[str] = set()
        # Read and written on the store's thread only.
        self._version: int | None = None

    async def start(self, replica: Replica) -> None:
        self._replica = replica
        try:
            await self.refresh()
        except StorageError as exc:
            replica.mark_unsynced(str(exc))

    async def close(self) -> None:
        self._replica = None

    def refetch(self, entry_id: str) -> None:
        self._pending.add(entry_id)

    async def refresh(self) -> None:
        replica = self._replica
        if replica is None:
            return
        ids, self._pending = self._pending, set()
        clock = LoadClock()
        proven_at = time.monotonic()
        mark = replica.load_mark()
        try:
            changes = await self.storage.run_on_connection(lambda c: self._changes(c, ids))
        except BaseException:
            self._pending |= ids
            replica.mark_unsynced("SQLite store unreadable")
            raise
        if changes.rows is not None:
            replica.replace(changes.rows, clock, proven_at, mark)
        for entry_id, raw in changes.fetched.items():
            replica.apply(entry_id, None if raw is None else _entry(raw))
        replica.following = True
        replica.mark_current(proven_at)

    def _changes(self, conn: sqlite3.Connection, ids: Collection[str]) -> _Changes:
        (version,) = conn.execute(VERSION_SQL).fetchone()
        rows = None
        if version != self._version:
            # Read after the version: a commit in between is in the rows
            # too, and moves the version again, so it is reloaded twice at
            # worst and never missed.
            rows = _load(conn)
            self._version = version
        fetched = {i: conn.execute(FETCH_ID_SQL, (i,)).fetchone() for i in ids}
        return _Changes(rows, fetched)


def _load(conn: sqlite3.Connection) -> IndexBuilder:
    """Every row into a new index's builder, a page at a time, on the
    store's thread (one statement: one snapshot)."""
    builder = IndexBuilder()
    shared = builder.shared
    cursor = conn.execute(LOAD_SQL)
    while page := cursor.fetchmany(LOAD_PAGE):
        for raw in page:
            builder.add(_entry(raw, shared))
    return builder
