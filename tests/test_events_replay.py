"""The audit trail replays to the table: random concurrent writes through
the real app and, on PostgreSQL, by SQL (upserts, multi-row updates, id and
name changes, deletes, rolled-back transactions) and the key sweep; on
SQLite by a second store on the same file (another daemon). Then replaying
every event from the start, in seq order, must give exactly the `images`
table (ids, names, tags), and each event's `tags_before` must be what the
replay holds for that id at that point."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
import urllib.parse

import psycopg2
import psycopg2.errors
import pytest

from storage.model import Event, EventQuery, NewEntry, Writer
from storage.sqlite import SqliteStorage

IDS = [f"r{i}" for i in range(6)] + [
    "quay.io/load/app@sha256:" + "ab" * 32,
    "quay.io/load/app:1",
]
NAME = "quay.io/load/app"
SECONDS = 3.0
#: SQL errors a random transaction may meet: it is rolled back and the writer goes on.
EXPECTED_SQL_ERRORS = (
    psycopg2.errors.UniqueViolation,
    psycopg2.errors.DeadlockDetected,
    psycopg2.errors.SerializationFailure,
    psycopg2.errors.LockNotAvailable,
)


async def all_events(ctx) -> list[Event]:
    got: list[Event] = []
    while page := await ctx.storage.events(EventQuery(after=got[-1].seq if got else 0, limit=1000)):
        got += page
    return got


def replay(events: list[Event]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The table the trail describes; fails on an event that contradicts
    what came before it."""
    state: dict[str, tuple[str, tuple[str, ...]]] = {}
    for e in events:
        where = f"event {e.seq} ({e.action} {e.image_id!r} by {e.actor})"
        if e.action == "created":
            assert e.image_id not in state, f"{where}: the id already exists"
            assert e.tags_before is None and e.tags_after is not None, where
            state[e.image_id] = (e.name, e.tags_after)
        elif e.action == "updated":
            assert e.image_id in state, f"{where}: no such id to update"
            assert e.tags_before == state[e.image_id][1], f"{where}: tags_before is not the state"
            assert e.tags_after is not None, where
            state[e.image_id] = (e.name, e.tags_after)
        else:
            assert e.image_id in state, f"{where}: no such id to delete"
            assert e.tags_before == state[e.image_id][1], f"{where}: tags_before is not the state"
            assert e.name == state[e.image_id][0], where
            del state[e.image_id]
    return state


async def api_writer(api, rng: random.Random, deadline: float) -> None:
    while time.monotonic() < deadline:
        entry_id = rng.choice(IDS)
        if rng.random() < 0.3:
            reply = await api.delete("/images/" + urllib.parse.quote(entry_id, safe=""))
            assert reply.status in (200, 204, 404, 503), reply.body
            continue
        body: dict = {"id": entry_id, "name": NAME}
        if rng.random() < 0.8:
            body["tags"] = [str(rng.randint(0, 3)) for _ in range(rng.randint(0, 2))]
        reply = await api.put(body)
        # 503: an SQL transaction held the row past --db-timeout (nothing written).
        assert reply.status in (200, 503), reply.body


def sql_writer(url: str, seed: int, deadline: float, errors: list[BaseException]) -> None:
    """Random transactions of one to three statements, a fifth rolled back."""
    rng = random.Random(seed)
    statements = [
        lambda: (
            "INSERT INTO images (id, name, tags) VALUES (%s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET tags = EXCLUDED.tags",
            (rng.choice(IDS), NAME, [str(rng.randint(0, 3))]),
        ),
        lambda: (
            "INSERT INTO images (id, name, tags) VALUES (%s, %s, '{}') ON CONFLICT DO NOTHING",
            (rng.choice(IDS), NAME),
        ),
        lambda: (
            "UPDATE images SET tags = array_append(tags, %s) WHERE id = ANY(%s)",
            (str(rng.randint(0, 3)), rng.sample(IDS, 3)),
        ),
        lambda: ("UPDATE images SET tags = tags WHERE id = %s", (rng.choice(IDS),)),
        lambda: ("DELETE FROM images WHERE id = ANY(%s)", (rng.sample(IDS, 2),)),
        lambda: ("UPDATE images SET id = %s WHERE id = %s", tuple(rng.sample(IDS, 2))),
        lambda: ("UPDATE images SET name = %s WHERE id = %s", (NAME + "2", rng.choice(IDS))),
    ]
    try:
        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = '500ms'")
            conn.commit()
            while time.monotonic() < deadline:
                try:
                    for _ in range(rng.randint(1, 3)):
                        cur.execute(*rng.choice(statements)())
                    if rng.random() < 0.2:
                        conn.rollback()
                    else:
                        conn.commit()
                except EXPECTED_SQL_ERRORS:
                    conn.rollback()
        conn.close()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


async def sweeper(ctx, deadline: float) -> None:
    while time.monotonic() < deadline:
        await ctx.storage.compute_stale_keys()
        await asyncio.sleep(0.01)


async def other_daemon(path: str, rng: random.Random, deadline: float) -> None:
    """Another imagelist store on the same SQLite file."""
    other = SqliteStorage(path)
    await other.open()
    try:
        writer = Writer(actor="other-daemon")
        while time.monotonic() < deadline:
            entry_id = rng.choice(IDS)
            if rng.random() < 0.3:
                await other.delete(entry_id, writer)
            else:
                await other.put(NewEntry(entry_id, NAME, (str(rng.randint(0, 3)),)), writer)
    finally:
        await other.close()


def table(ctx) -> dict[str, tuple[str, tuple[str, ...]]]:
    if ctx.storage.kind == "sqlite":
        conn = sqlite3.connect(ctx.storage.path)
        rows = [
            (i, n, tuple(json.loads(t)))
            for i, n, t in conn.execute("SELECT id, name, tags FROM images")
        ]
    else:
        conn = psycopg2.connect(ctx.config.database_url)
        with conn.cursor() as cur:
            cur.execute("SELECT id, name, tags FROM images")
            rows = [(i, n, tuple(t)) for i, n, t in cur.fetchall()]
    conn.close()
    return {i: (n, t) for i, n, t in rows}


@pytest.mark.gen_test(timeout=120)
async def test_replaying_the_trail_gives_the_table(api, ctx) -> None:
    rng = random.Random(20261204)
    deadline = time.monotonic() + SECONDS
    errors: list[BaseException] = []
    tasks = [api_writer(api, random.Random(rng.random()), deadline) for _ in range(3)]
    threads: list[threading.Thread] = []
    if ctx.storage.kind == "postgres":
        tasks.append(sweeper(ctx, deadline))
        threads = [
            threading.Thread(
                target=sql_writer, args=(ctx.config.database_url, seed, deadline, errors)
            )
            for seed in range(3)
        ]
    else:
        tasks.append(other_daemon(ctx.storage.path, random.Random(rng.random()), deadline))
    for thread in threads:
        thread.start()
    try:
        await asyncio.gather(*tasks)
    finally:
        for thread in threads:
            await asyncio.to_thread(thread.join)
    assert not errors, errors
    events = await all_events(ctx)
    actors = {e.actor for e in events}
    assert "anonymous" in actors and len(actors) == 2, actors
    assert replay(events) == table(ctx)
