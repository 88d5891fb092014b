"""The admission replica against a real PostgreSQL: it follows every writer
(two instances and SQL), through a killed LISTEN connection too."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Replica, create_replica, create_storage
from storage.model import NewEntry
from storage.postgres import PostgresStorage
from storage.reference import parse_reference, reference_keys
from storage.replica_postgres import APPLICATION_NAME

from pgcluster import create_database

TABLE_SQL = "SELECT id, name, tags, created_at, updated_at FROM images"


@contextlib.asynccontextmanager
async def instance(url: str) -> AsyncIterator[Replica]:
    """One more instance's store and replica."""
    storage = create_storage(url, pool_size=2, timeout=2, connect_timeout=1)
    await storage.open()
    replica = create_replica(storage, max_age=600)
    await replica.open()
    try:
        yield replica
    finally:
        await replica.close()
        await storage.close()


def table(url: str) -> set[tuple]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(TABLE_SQL)
        rows = {(r[0], r[1], tuple(r[2] or ()), r[3], r[4]) for r in cur.fetchall()}
    conn.close()
    return rows


def held(replica: Replica) -> set[tuple]:
    return {(e.id, e.name, e.tags, e.created_at, e.updated_at) for e in replica.index.entries()}


async def caught_up(replica: Replica, timeout: float = 30) -> None:
    """Until the replica proves itself current as of now (a heartbeat sent
    after every write so far)."""
    since = time.monotonic()
    deadline = since + timeout
    while True:
        age = replica.age()
        if replica.current() and age is not None and time.monotonic() - age > since:
            return
        assert time.monotonic() < deadline, "the replica never caught up"
        await asyncio.sleep(0.02)


def terminate_listeners(url: str) -> int:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (APPLICATION_NAME,),
        )
        (n,) = cur.fetchone()
    conn.close()
    return int(n)


def sql_writer(url: str, stop: threading.Event, seed: int) -> None:
    """Writes with SQL until told to stop, as another writer would."""
    rng = random.Random(seed)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        while not stop.is_set():
            key = f"w{rng.randrange(200)}"
            if rng.random() < 0.3:
                cur.execute("DELETE FROM images WHERE id = %s", (key,))
            else:
                cur.execute(
                    "INSERT INTO images (id, name, tags, created_at, updated_at) "
                    "VALUES (%s, 'quay.io/w/app', ARRAY[%s], now(), now()) "
                    "ON CONFLICT (id) DO UPDATE SET tags = EXCLUDED.tags, updated_at = now()",
                    (key, f"t{rng.randrange(5)}"),
                )
    conn.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_killed_listen_connection_reloads_and_misses_nothing(pg_server_url) -> None:
    url = create_database(pg_server_url, f"imagelist_kill_{uuid.uuid4().hex[:8]}")
    async with instance(url) as replica:
        await caught_up(replica)
        stop = threading.Event()
        writer = threading.Thread(target=sql_writer, args=(url, stop, 1))
        writer.start()
        try:
            for _ in range(3):
                await asyncio.sleep(0.3)
                assert await asyncio.to_thread(terminate_listeners, url) == 1
                # Reconnected, listening and reloaded while the writes go on.
                await caught_up(replica)
        finally:
            stop.set()
            await asyncio.to_thread(writer.join)
        await caught_up(replica)
        assert held(replica) == await asyncio.to_thread(table, url)
        assert len(held(replica)) > 10


OPS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "sql"]),
        st.sampled_from(["put", "delete", "rename"]),
        st.integers(0, 7),
        st.lists(st.sampled_from(["1", "2", "latest"]), max_size=3, unique=True),
    ),
    max_size=25,
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
def test_random_writes_through_two_instances_and_sql_leave_every_replica_equal_to_the_table(
    pg_url, io_loop, ops
) -> None:
    io_loop.run_sync(lambda: _random_writes(pg_url, ops), timeout=120)


async def _random_writes(url: str, ops: list) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    async with instance(url) as a, instance(url) as b:
        with conn.cursor() as cur:  # the schema exists now
            cur.execute("DELETE FROM images")
        replicas = {"a": a, "b": b}
        for actor, op, n, tags in ops:
            # Odd n: an id that is a digest (a rename by SQL makes it none).
            entry_id = f"sha256:{n:064x}" if n % 2 else f"id{n}"
            name = f"quay.io/p/app{n % 3}"
            if actor == "sql":
                with conn.cursor() as cur:
                    if op == "delete":
                        cur.execute("DELETE FROM images WHERE id = %s", (entry_id,))
                    elif op == "rename":  # an id changed by hand
                        cur.execute("UPDATE images SET id = id || 'x' WHERE id = %s", (entry_id,))
                    else:
                        cur.execute(
                            "INSERT INTO images (id, name, tags, created_at, updated_at) "
                            "VALUES (%s, %s, %s, now(), now()) ON CONFLICT (id) DO UPDATE "
                            "SET tags = EXCLUDED.tags, updated_at = now()",
                            (entry_id, name, tags),
                        )
                continue
            storage = replicas[actor].storage
            assert isinstance(storage, PostgresStorage)
            if op == "delete":
                await storage.delete(entry_id)
            else:
                await storage.put(NewEntry(entry_id, name, tuple(tags)))
        await caught_up(a)
        await caught_up(b)
        expected = table(url)
        assert held(a) == expected
        assert held(b) == expected
        # Each entry is indexed by the keys its name and id have, whoever
        # wrote it (SQL writes leave them to the replica and the sweep).
        for replica in (a, b):
            for e in replica.index.entries():
                assert (e.norm_name, e.digest) == reference_keys(e.name, e.id), e
        # ...and they decide as the table does.
        for replica in (a, b):
            for n in range(8):
                for tag in ("1", "2", "latest"):
                    ref = f"quay.io/p/app{n % 3}:{tag}"
                    want = any(
                        row[1] == f"quay.io/p/app{n % 3}" and tag in row[2] for row in expected
                    )
                    assert (replica.index.find(parse_reference(ref)) is not None) == want
    conn.close()
