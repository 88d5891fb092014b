"""Embedded SQLite backend: the zero-setup default.

All sqlite3 calls run on one dedicated worker thread that owns the
connection, so the IOLoop never blocks on disk I/O and the connection is
never shared between threads. WAL with `synchronous=FULL`: a write is
acknowledged only after it is on disk, so it survives kill -9 and power loss.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from storage.base import PoolStats, QueryObserver, Row, Storage
from storage.errors import OutOfScope, StorageUnavailable
from storage.legacy import Survey
from storage.migrations import SQLITE, KeyBackfill, split_statements
from storage.model import Entry, Event, NewEntry, Writer, from_micros, to_micros
from storage.reference import Reference
from storage.sql import (
    SELECT_COLUMNS,
    SQLITE_JSON_COLUMN,
    backend_statements,
    named,
    write_params,
)

T = TypeVar("T")

SURVEY_SQL = "SELECT id, name, tags FROM images ORDER BY id"
KEYS_PAGE_SQL = "SELECT id, name FROM images WHERE id > :after ORDER BY id LIMIT :limit"
SET_KEYS_SQL = "UPDATE images SET norm_name = ?, digest = ? WHERE id = ?"

log = logging.getLogger("imagelist.storage")


def recompute_keys(conn: sqlite3.Connection) -> None:
    """Every entry's reference keys, page by page in id order (inside the
    migration's transaction)."""
    backfill = KeyBackfill()
    while keys := backfill.plan(conn.execute(KEYS_PAGE_SQL, backfill.page_params()).fetchall()):
        conn.executemany(
            SET_KEYS_SQL, [(norm, digest, entry_id) for entry_id, norm, digest in keys]
        )


# Tags NULL (a PUT without tags) keeps an existing entry as it is, as the Go
# service did.
UPSERT_SQL = f"""
INSERT INTO images (id, name, norm_name, digest, tags, created_at, updated_at)
VALUES (:id, :name, :norm_name, :digest, coalesce(:tags, '[]'), :now, :now)
ON CONFLICT (id) DO UPDATE SET
    tags = coalesce(:tags, images.tags),
    updated_at = CASE WHEN :tags IS NULL THEN images.updated_at
                      ELSE max(:now, images.updated_at) END
RETURNING {SELECT_COLUMNS}
"""
# As in storage/postgres.py: per reference, the newest allowing entry and,
# for a tag reference, the newest repo-digest id of each repository spelling.
# The references arrive as one JSON array of [name, tag, digest] triples.
GUARD_SQL = "SELECT name FROM images WHERE id = :id"
# The entry as it was, for the audit event; read inside the write's
# transaction, which holds the write lock (BEGIN IMMEDIATE).
BEFORE_SQL = "SELECT name, tags FROM images WHERE id = :id"
DELETE_SQL = "DELETE FROM images WHERE id = :id RETURNING name, tags"
EVENT_SQL = """
INSERT INTO image_events (at, action, image_id, name, tags_before, tags_after, actor, request_id)
VALUES (:at, :action, :image_id, :name, :tags_before, :tags_after, :actor, :request_id)
"""
PRUNE_SQL = """
DELETE FROM image_events WHERE seq IN (
    SELECT seq FROM image_events WHERE at < :before ORDER BY at LIMIT :limit
)
"""
MATCH_SQL = f"""
WITH q(i, name, tag, digest) AS (
    SELECT key, json_extract(value, '$[0]'), json_extract(value, '$[1]'),
           json_extract(value, '$[2]')
    FROM json_each(:refs)
)
SELECT i, {SELECT_COLUMNS} FROM (
    SELECT q.i AS i, images.*,
           row_number() OVER (PARTITION BY q.i ORDER BY images.updated_at DESC, images.id DESC)
               AS rank,
           q.digest IS NULL AND images.digest IS NOT NULL AND instr(images.id, '@') > 0
               AS may_pin,
           row_number() OVER (PARTITION BY q.i, substr(images.id, 1, instr(images.id, '@'))
                              ORDER BY images.updated_at DESC, images.id DESC)
               AS spelling_rank
    FROM q JOIN images ON images.norm_name = q.name
     AND CASE WHEN q.digest IS NOT NULL THEN images.digest = q.digest
              ELSE EXISTS (SELECT 1 FROM json_each(images.tags) AS t WHERE t.value = q.tag) END
)
WHERE rank = 1 OR (may_pin AND spelling_rank = 1)
ORDER BY i, updated_at DESC, id DESC
"""


def _now_micros() -> int:
    return to_micros(dt.datetime.now(dt.UTC))


class SqliteStorage(Storage):
    kind = "sqlite"
    statements = backend_statements(named, entry_json=SQLITE_JSON_COLUMN, match=MATCH_SQL)

    def __init__(self, path: str, *, observer: QueryObserver | None = None) -> None:
        self.path = path
        self.observer = observer
        self._conn: sqlite3.Connection | None = None
        # The "pool" is one connection on one thread: operations queue for it.
        self._pending = 0
        self._waits = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="imagelist-sqlite"
        )

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                raise StorageUnavailable("the SQLite store is not open")
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                # Disk full, I/O error, locked by another process: all
                # transient from the client's point of view.
                raise StorageUnavailable(f"SQLite error: {exc}") from exc

        if self._pending:
            self._waits += 1
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        finally:
            self._pending -= 1

    async def run_on_connection(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the store's own connection and thread (for storage's
        other modules; sqlite3 errors become StorageUnavailable)."""
        return await self._run(fn)

    def pool_stats(self) -> PoolStats:
        is_open = self._conn is not None
        return PoolStats(
            size=int(is_open), in_use=min(self._pending, 1), max_size=1, waits=self._waits
        )

    async def open(self) -> None:
        def connect() -> None:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"SQLite {self.path}: {exc}") from exc
            try:
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                self._migrate(conn)
            except sqlite3.Error as exc:
                # Not a database, locked, read-only: the daemon refuses to
                # start naming the file, rather than dying with a traceback.
                conn.close()
                raise StorageUnavailable(f"SQLite {self.path}: {exc}") from exc
            self._conn = conn
            # Where the data lives, said once: the default path is not obvious.
            log.info(
                "storage_opened", extra={"storage": self.kind, "path": os.path.abspath(self.path)}
            )

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def survey(self) -> Survey:
        def look() -> Survey:
            if not os.path.exists(self.path):
                return Survey("none", 0, len(SQLITE), {}, [], [])
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                rows = conn.execute(SURVEY_SQL).fetchall() if version else []
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"SQLite {self.path}: {exc}") from exc
            finally:
                conn.close()
            return Survey(
                "imagelist" if version else "none",
                version,
                len(SQLITE),
                {},
                [],
                [(r[0], r[1], tuple(json.loads(r[2]))) for r in rows],
            )

        return await asyncio.get_running_loop().run_in_executor(self._executor, look)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for number, migration in enumerate(SQLITE[version:], start=version + 1):
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                if migration.recompute_keys:
                    recompute_keys(conn)
                conn.execute(f"PRAGMA user_version = {number:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)

    # -- the driver primitives ------------------------------------------------

    async def _fetch_all(self, sql: str, params: Mapping[str, object]) -> list[Row]:
        return await self._run(lambda c: c.execute(sql, params).fetchall())

    async def _fetch_one(self, sql: str, params: Mapping[str, object]) -> Row | None:
        row: Row | None = await self._run(lambda c: c.execute(sql, params).fetchone())
        return row

    async def _execute(self, sql: str, params: Mapping[str, object]) -> None:
        await self._run(lambda c: c.execute(sql, params))

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` in one transaction, holding the write lock
        from its start (BEGIN IMMEDIATE), so what `fn` reads stays true
        until it commits; any exception rolls it back."""

        def transaction(c: sqlite3.Connection) -> T:
            c.execute("BEGIN IMMEDIATE")
            try:
                result = fn(c)
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            return result

        return await self._run(transaction)

    @staticmethod
    def _guard(c: sqlite3.Connection, entry_id: str, name: str | None, writer: Writer) -> bool:
        """Raise OutOfScope unless `writer` may write the stored entry (or,
        when there is none, a new one named `name`; None: nothing to
        create); whether the entry exists."""
        stored = c.execute(GUARD_SQL, {"id": entry_id}).fetchone()
        checked = name if stored is None else stored[0]
        if checked is not None and not writer.allows(checked):
            raise OutOfScope(writer.actor, checked)
        return stored is not None

    @staticmethod
    def _record(
        c: sqlite3.Connection,
        writer: Writer,
        action: str,
        entry_id: str,
        name: str,
        before: str | None,
        after: str | None,
    ) -> None:
        """The audit event of a change, in the change's transaction."""
        c.execute(
            EVENT_SQL,
            {
                "at": _now_micros(),
                "action": action,
                "image_id": entry_id,
                "name": name,
                "tags_before": before,
                "tags_after": after,
                "actor": writer.actor,
                "request_id": writer.request_id,
            },
        )

    async def _upsert(self, new: NewEntry, given: Writer) -> tuple[Row, bool]:
        params = {
            **write_params(new),
            "tags": None if new.tags is None else json.dumps(list(new.tags), ensure_ascii=False),
            "now": _now_micros(),
        }

        def upsert(c: sqlite3.Connection) -> tuple[Row, bool]:
            writer = given.now()  # in the write lock: after any wait for it
            if writer.may_write is not None:
                self._guard(c, new.id, new.name, writer)
            stored = c.execute(BEFORE_SQL, {"id": new.id}).fetchone()
            row: Row = c.execute(UPSERT_SQL, params).fetchone()
            self._record(
                c,
                writer,
                "created" if stored is None else "updated",
                new.id,
                row[1],
                None if stored is None else stored[1],
                row[2],
            )
            return row, stored is None

        return await self._write(upsert)

    async def _delete(self, entry_id: str, given: Writer) -> bool:
        def delete(c: sqlite3.Connection) -> bool:
            writer = given.now()  # in the write lock: after any wait for it
            if writer.may_write is not None and not self._guard(c, entry_id, None, writer):
                return False
            deleted = c.execute(DELETE_SQL, {"id": entry_id}).fetchone()
            if deleted is None:
                return False
            self._record(c, writer, "deleted", entry_id, deleted[0], deleted[1], None)
            return True

        return await self._write(delete)

    def _to_event(self, row: Row) -> Event:
        return Event(
            seq=row[0],
            at=from_micros(row[1]),
            action=row[2],
            image_id=row[3],
            name=row[4],
            tags_before=None if row[5] is None else tuple(json.loads(row[5])),
            tags_after=None if row[6] is None else tuple(json.loads(row[6])),
            actor=row[7],
            request_id=row[8],
        )

    async def _prune_events(self, before: dt.datetime, limit: int) -> int:
        params = {"before": to_micros(before), "limit": limit}
        return await self._write(lambda c: c.execute(PRUNE_SQL, params).rowcount)

    def _to_entry(self, row: Row) -> Entry:
        return Entry(
            id=row[0],
            name=row[1],
            tags=tuple(json.loads(row[2])),
            created_at=from_micros(row[3]),
            updated_at=from_micros(row[4]),
        )

    def _match_params(self, refs: Sequence[Reference]) -> dict[str, object]:
        # One JSON array of [name, tag, digest] triples (see MATCH_SQL).
        return {"refs": json.dumps([[r.name, r.tag, r.digest] for r in refs])}
