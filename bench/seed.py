"""Benchmark data: N entries that look like CI's, written in bulk.

The daemon's own storage class creates the schema (so the benchmark runs
against exactly the tables and indexes the daemon uses); the rows then go in
with one bulk statement per thousand, which is minutes faster than N PUTs
and stores the same columns, including the reference keys admission needs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg2
import psycopg2.extras

from storage import create_storage, sqlite_path
from storage.model import to_micros
from storage.reference import reference_keys

BATCH = 1000
# 2017-10-27T16:51:06Z, the README's example; one microsecond apart, so every
# sort order is fully determined.
EPOCH = dt.datetime(2017, 10, 27, 16, 51, 6, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    name: str
    tags: tuple[str, ...]
    at: dt.datetime

    @property
    def image(self) -> str:
        """A reference this entry allows (name:tag)."""
        return f"{self.name}:{self.tags[0]}"


def entry_id(i: int) -> str:
    """The i-th entry's id; pgbench's script computes the same in SQL."""
    return "sha256:" + hashlib.sha256(f"bench-{i}".encode()).hexdigest()


def entry(i: int) -> Entry:
    return Entry(
        id=entry_id(i),
        name=f"registry.example.com/team{i % 50}/app{i}",
        tags=("1.0", f"build-{i}", "stable"),
        at=EPOCH + dt.timedelta(microseconds=i),
    )


def entries(n: int) -> Iterator[Entry]:
    return (entry(i) for i in range(n))


def _batches(n: int) -> Iterator[list[Entry]]:
    batch: list[Entry] = []
    for e in entries(n):
        batch.append(e)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


async def create_schema(database_url: str) -> None:
    storage = create_storage(database_url)
    await storage.open()
    await storage.close()


def seed(database_url: str, n: int) -> None:
    """Create the schema as the daemon does, then insert n entries."""
    asyncio.run(create_schema(database_url))
    if database_url.startswith("sqlite:"):
        _seed_sqlite(sqlite_path(database_url), n)
    else:
        _seed_postgres(database_url, n)


def _seed_postgres(url: str, n: int) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            for batch in _batches(n):
                psycopg2.extras.execute_values(
                    cur,
                    # keys_stale = false: the keys are computed right here,
                    # as imagelist's own writes do.
                    "INSERT INTO images (id, name, norm_name, digest, keys_stale, tags,"
                    " created_at, updated_at) VALUES %s",
                    [
                        (
                            e.id,
                            e.name,
                            *reference_keys(e.name, e.id),
                            False,
                            list(e.tags),
                            e.at,
                            e.at,
                        )
                        for e in batch
                    ],
                    page_size=BATCH,
                )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE images")
    finally:
        conn.close()


def _seed_sqlite(path: str, n: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for batch in _batches(n):
            conn.executemany(
                "INSERT INTO images (id, name, norm_name, digest, tags, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.id,
                        e.name,
                        *reference_keys(e.name, e.id),
                        json.dumps(list(e.tags)),
                        to_micros(e.at),
                        to_micros(e.at),
                    )
                    for e in batch
                ],
            )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()
