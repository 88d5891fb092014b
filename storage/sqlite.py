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
from collections.abc import Callable, Sequence
from typing import TypeVar

from storage.base import (
    PoolStats,
    QueryObserver,
    Storage,
    grouped_matches,
    json_page,
    observed,
    warn_if_unmatchable,
)
from storage.errors import NotFound, StorageUnavailable
from storage.model import Image, JsonPage, ListQuery, NewImage, from_micros, to_micros
from storage.reference import ImageRef, reference_keys
from storage.sql import (
    SELECT_COLUMNS,
    SQLITE_JSON_COLUMN,
    all_list_sql,
    list_key,
    list_params,
    write_params,
)

T = TypeVar("T")
log = logging.getLogger("imagelist.storage")

REFERENCE_KEYS_SQL = (
    "ALTER TABLE images ADD COLUMN norm_name TEXT",
    "ALTER TABLE images ADD COLUMN digest TEXT",
    "CREATE INDEX IF NOT EXISTS images_norm_name_digest ON images (norm_name, digest)",
)
BACKFILL_PAGE_SQL = "SELECT id, name FROM images WHERE id > :after ORDER BY id LIMIT :limit"
BACKFILL_SET_SQL = "UPDATE images SET norm_name = :norm_name, digest = :digest WHERE id = :id"
BACKFILL_PAGE = 1000


def add_reference_keys(conn: sqlite3.Connection) -> None:
    """Migration 2: each entry's normalized name and digest, indexed, so an
    admission decision is one index lookup; existing rows are backfilled
    here because the normalization is the Python reference grammar."""
    for statement in REFERENCE_KEYS_SQL:
        conn.execute(statement)
    after, unmatchable = "", 0
    while True:
        rows = conn.execute(BACKFILL_PAGE_SQL, {"after": after, "limit": BACKFILL_PAGE}).fetchall()
        if not rows:
            break
        updates = []
        for image_id, name in rows:
            norm_name, digest = reference_keys(name, image_id)
            unmatchable += norm_name is None
            updates.append({"id": image_id, "norm_name": norm_name, "digest": digest})
        conn.executemany(BACKFILL_SET_SQL, updates)
        after = rows[-1][0]
    if unmatchable:
        log.warning(
            "%d stored entries have a name that is not a repository name; "
            "they will never match an admission decision",
            unmatchable,
        )


# Versioned migrations, applied in order; PRAGMA user_version records progress.
MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    """
    CREATE TABLE IF NOT EXISTS images (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        tags        TEXT NOT NULL,      -- JSON array of strings
        created_at  INTEGER NOT NULL,   -- microseconds since the epoch, UTC
        updated_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS images_updated_at ON images (updated_at, id);
    CREATE INDEX IF NOT EXISTS images_created_at ON images (created_at, id);
    CREATE INDEX IF NOT EXISTS images_name ON images (name, id);
    """,
    add_reference_keys,
)

UPSERT_SQL = f"""
INSERT INTO images (id, name, norm_name, digest, tags, created_at, updated_at)
VALUES (:id, :name, :norm_name, :digest, :tags, :now, :now)
ON CONFLICT (id) DO UPDATE SET tags = excluded.tags,
                               updated_at = max(:now, images.updated_at)
RETURNING {SELECT_COLUMNS}
"""
GET_SQL = f"SELECT {SELECT_COLUMNS} FROM images WHERE id = :id"
DELETE_SQL = "DELETE FROM images WHERE id = :id"
COUNT_SQL = "SELECT count(*) FROM images"
PING_SQL = "SELECT 1"
LIST_SQL = all_list_sql(lambda name: f":{name}")
LIST_JSON_SQL = all_list_sql(lambda name: f":{name}", SQLITE_JSON_COLUMN)
# As in storage/postgres.py: per reference, the newest allowing entry and,
# for a tag reference, the newest repo-digest id of each repository spelling.
# The references arrive as one JSON array of [name, tag, digest] triples.
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


def _row_to_image(row: tuple) -> Image:
    return Image(
        id=row[0],
        name=row[1],
        tags=tuple(json.loads(row[2])),
        created_at=from_micros(row[3]),
        updated_at=from_micros(row[4]),
    )


def _now_micros() -> int:
    return to_micros(dt.datetime.now(dt.UTC))


class SqliteStorage(Storage):
    kind = "sqlite"

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

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                if isinstance(script, str):
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                else:
                    script(conn)
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

    @observed
    async def ping(self) -> None:
        await self._run(lambda c: c.execute(PING_SQL).fetchone())

    @observed
    async def get(self, image_id: str) -> Image:
        row = await self._run(lambda c: c.execute(GET_SQL, {"id": image_id}).fetchone())
        if row is None:
            raise NotFound(image_id)
        return _row_to_image(row)

    @observed
    async def put(self, new: NewImage) -> Image:
        params = {
            **write_params(new),
            "tags": json.dumps(list(new.tags), ensure_ascii=False),
            "now": _now_micros(),
        }

        def upsert(c: sqlite3.Connection) -> tuple:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute(UPSERT_SQL, params).fetchone()
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            return row

        stored = _row_to_image(await self._run(upsert))
        warn_if_unmatchable(stored)
        return stored

    @observed
    async def delete(self, image_id: str) -> None:
        await self._run(lambda c: c.execute(DELETE_SQL, {"id": image_id}))

    async def _list_rows(self, sql: str, query: ListQuery) -> list[tuple]:
        params = list_params(query)
        return await self._run(lambda c: c.execute(sql, params).fetchall())

    @observed
    async def list_page(self, query: ListQuery) -> list[Image]:
        sql = LIST_SQL[list_key(query)]
        return [_row_to_image(r) for r in await self._list_rows(sql, query)]

    @observed
    async def list_json(self, query: ListQuery) -> JsonPage:
        sql = LIST_JSON_SQL[list_key(query)]
        return json_page(query.sort, [r[0] for r in await self._list_rows(sql, query)])

    @observed
    async def count(self) -> int:
        (n,) = await self._run(lambda c: c.execute(COUNT_SQL).fetchone())
        return int(n)

    @observed
    async def match(self, refs: Sequence[ImageRef]) -> list[tuple[Image, ...]]:
        if not refs:
            return []
        payload = json.dumps([[r.name, r.tag, r.digest] for r in refs])
        rows = await self._run(lambda c: c.execute(MATCH_SQL, {"refs": payload}).fetchall())
        return grouped_matches(len(refs), ((row[0], _row_to_image(row[1:])) for row in rows))
