"""The audit trail on PostgreSQL: writers other than imagelist (psql, the
old Go service) are recorded under their database role, events are
append-only, and sequence numbers follow commit order, so a reader paging
by seq while writers commit never skips nor repeats an event."""

from __future__ import annotations

import asyncio
import random
import threading
import urllib.parse
import uuid

import psycopg2
import psycopg2.errors
import pytest
from test_upgrade import GoService

from storage.model import EventQuery, NewEntry, Writer

from pgcluster import reset_postgres


@pytest.fixture
def database_url(pg_url: str) -> str:
    reset_postgres(pg_url)
    return pg_url


def sql(url: str, *statements: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.close()


def as_role(url: str, role: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}").geturl()


async def actions(ctx) -> list[tuple[str, str, str]]:
    return [(e.action, e.image_id, e.actor) for e in await ctx.storage.events(EventQuery())]


@pytest.mark.gen_test
async def test_sql_writes_are_recorded_under_their_role(api, ctx) -> None:
    url = ctx.config.database_url
    role = f"admin_{uuid.uuid4().hex[:8]}"
    # A role that may write images and nothing else: the trigger records
    # its events with the owner's rights.
    sql(
        url,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON images TO {role}",
    )
    try:
        mine = as_role(url, role)
        await asyncio.to_thread(
            sql,
            mine,
            "INSERT INTO images (id, name, tags) VALUES ('p1', 'quay.io/team-a/app', '{1.4}')",
            "UPDATE images SET tags = '{1.4,1.5}' WHERE id = 'p1'",
            "UPDATE images SET tags = tags WHERE id = 'p1'",  # no change: nothing
            "DELETE FROM images WHERE id = 'p1'",
            "DELETE FROM images WHERE id = 'p1'",  # nothing left: nothing
        )
        got = await ctx.storage.events(EventQuery())
        assert [(e.action, e.image_id, e.actor, e.request_id) for e in got] == [
            ("created", "p1", role, None),
            ("updated", "p1", role, None),
            ("deleted", "p1", role, None),
        ]
        assert got[1].tags_before == ("1.4",) and got[1].tags_after == ("1.4", "1.5")
        # It can neither read nor change the trail.
        for statement in ("SELECT * FROM image_events", "DELETE FROM image_events"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                await asyncio.to_thread(sql, mine, statement)
    finally:
        sql(url, f"REVOKE ALL ON images FROM {role}", f"DROP ROLE {role}")


@pytest.mark.gen_test
async def test_an_id_changed_by_sql_is_the_old_one_deleted_and_the_new_one_created(
    api, ctx
) -> None:
    await ctx.storage.put(NewEntry("old", "a/b", ("1",)), Writer(actor="ci"))
    await asyncio.to_thread(
        sql, ctx.config.database_url, "UPDATE images SET id = 'new', tags = '{2}' WHERE id = 'old'"
    )
    got = await ctx.storage.events(EventQuery())
    assert [(e.action, e.image_id, e.actor, e.tags_before, e.tags_after) for e in got] == [
        ("created", "old", "ci", None, ("1",)),
        ("deleted", "old", "postgres", ("1",), None),
        ("created", "new", "postgres", None, ("2",)),
    ]
    # Who follows the old id learns it is gone.
    reply = await api.get("/events?image_id=old")
    assert [e["action"] for e in reply.json] == ["created", "deleted"]


@pytest.mark.gen_test
async def test_a_truncate_is_a_deleted_event_per_entry(api, ctx) -> None:
    for entry_id in ("t2", "t1"):
        await ctx.storage.put(NewEntry(entry_id, "a/b", ("1",)), Writer(actor="ci"))
    await asyncio.to_thread(sql, ctx.config.database_url, "TRUNCATE images")
    got = await ctx.storage.events(EventQuery())
    assert [(e.action, e.image_id, e.actor) for e in got] == [
        ("created", "t2", "ci"),
        ("created", "t1", "ci"),
        ("deleted", "t1", "postgres"),
        ("deleted", "t2", "postgres"),
    ]
    assert got[-1].tags_before == ("1",) and got[-1].tags_after is None


@pytest.mark.gen_test
async def test_the_trail_is_append_only_even_for_the_owner(api, ctx) -> None:
    await ctx.storage.put(NewEntry("a", "a/b", ("1",)), Writer(actor="ci"))
    url = ctx.config.database_url
    for statement in (
        "UPDATE image_events SET actor = 'someone else'",
        "DELETE FROM image_events",
        "TRUNCATE image_events",
    ):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="append-only"):
            await asyncio.to_thread(sql, url, statement)
    assert await actions(ctx) == [("created", "a", "ci")]


@pytest.mark.gen_test
async def test_the_old_services_writes_are_recorded(api, ctx) -> None:
    go = GoService(ctx.config.database_url)
    try:
        await asyncio.to_thread(go.put, "go-1", "myorg/fromgo", ["v1"])
        await asyncio.to_thread(go.put, "go-1", "ignored", ["v2"])
        await asyncio.to_thread(go.put, "go-1", "ignored", None)  # no statement at all
        await asyncio.to_thread(go.run, "delete", "go-1")
    finally:
        go.close()
    assert await actions(ctx) == [
        ("created", "go-1", "postgres"),
        ("updated", "go-1", "postgres"),
        ("deleted", "go-1", "postgres"),
    ]


@pytest.mark.gen_test
async def test_derived_column_updates_are_no_events(api, ctx) -> None:
    url = ctx.config.database_url
    # A rename by SQL is a change; the keys the sweep then computes are not.
    await ctx.storage.put(NewEntry("k", "a/b", ("1",)), Writer(actor="ci"))
    await asyncio.to_thread(sql, url, "UPDATE images SET name = 'c/d' WHERE id = 'k'")
    assert await ctx.storage.compute_stale_keys() == 1
    await asyncio.to_thread(sql, url, "UPDATE images SET entry_json = NULL")
    assert await actions(ctx) == [("created", "k", "ci"), ("updated", "k", "postgres")]
    # imagelist's own PUT of an existing entry is always recorded, even one
    # without tags (which leaves the row as it is).
    await ctx.storage.put(NewEntry("k", "c/d"), Writer(actor="ci"))
    assert (await actions(ctx))[-1] == ("updated", "k", "ci")


@pytest.mark.gen_test
async def test_keys_set_by_sql_are_a_change(api, ctx) -> None:
    """The reference keys decide what an entry allows: SQL that sets them
    (instead of the sweep computing them) changes the allowlist, and is
    recorded."""
    url = ctx.config.database_url
    await ctx.storage.put(NewEntry("k", "quay.io/team-a/app", ("1",)), Writer(actor="ci"))
    allowed = "docker.io/library/evil:1"
    assert not (await api.get("/allowed?image=" + allowed)).json["allowed"]
    await asyncio.to_thread(
        sql, url, "UPDATE images SET norm_name = 'docker.io/library/evil' WHERE id = 'k'"
    )
    # It now allows another repository's image (once the replica heard).
    for _ in range(100):
        if (await api.get("/allowed?image=" + allowed)).json["allowed"]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the keys set by SQL never allowed the image")
    assert await actions(ctx) == [("created", "k", "ci"), ("updated", "k", "postgres")]
    await asyncio.to_thread(sql, url, "UPDATE images SET digest = 'sha256:' || repeat('a', 64)")
    assert len(await actions(ctx)) == 3
    # The sweep's computing of stale keys is still no event.
    await asyncio.to_thread(sql, url, "UPDATE images SET keys_stale = true")
    assert await ctx.storage.compute_stale_keys() == 1
    assert len(await actions(ctx)) == 3


# -- commit order ---------------------------------------------------------------

EVENTS_WANTED = 10_000
# Per SQL transaction: 3 entries created, one updated twice.
PER_TRANSACTION = 5


def sql_writer(url: str, name: str, stop: threading.Event, errors: list[BaseException]) -> None:
    """Transactions that stay open a random moment after their changes: the
    order they commit in is not the order they wrote in."""
    try:
        conn = psycopg2.connect(url)
        rng = random.Random(name)
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO images (id, name, tags) VALUES (%s, 'quay.io/load/app', '{0}')",
                (name,),
            )
            conn.commit()
            n = 0
            while not stop.is_set():
                n += 1
                for k in range(3):
                    cur.execute(
                        "INSERT INTO images (id, name, tags)"
                        " VALUES (%s, 'quay.io/load/app', '{1}')",
                        (f"{name}-{n}-{k}",),
                    )
                cur.execute("UPDATE images SET tags = %s WHERE id = %s", ([str(n)], name))
                cur.execute("UPDATE images SET tags = %s WHERE id = %s", ([f"{n}b"], name))
                cur.execute("SELECT pg_sleep(%s)", (rng.random() * 0.003,))
                conn.commit()
        conn.close()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


@pytest.mark.gen_test(timeout=300)
async def test_paging_while_writers_commit_skips_and_repeats_nothing(api, ctx) -> None:
    url = ctx.config.database_url
    stop = threading.Event()
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=sql_writer, args=(url, f"w{i}", stop, errors)) for i in range(4)
    ]
    for thread in threads:
        thread.start()

    async def imagelist_writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await ctx.storage.put(NewEntry(f"api-{n}", "quay.io/load/app", ("1",)), Writer())

    api_writer = asyncio.create_task(imagelist_writer())
    seen: list[int] = []
    after = 0
    try:
        while True:
            reply = await api.get(f"/events?after={after}&limit=1000")
            assert reply.status == 200, reply.body
            page = [e["seq"] for e in reply.json]
            seen += page
            after = page[-1] if page else after
            if len(seen) >= EVENTS_WANTED and not stop.is_set():
                stop.set()
                for thread in threads:
                    await asyncio.to_thread(thread.join)
                await api_writer
                continue  # read on to the end of what they committed
            if not page:
                if stop.is_set():
                    break
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        await api_writer
    assert not errors, errors
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT seq FROM image_events ORDER BY seq")
        stored = [seq for (seq,) in cur.fetchall()]
    conn.close()
    assert len(seen) == len(set(seen)), "an event was read twice"
    missed = sorted(set(stored) - set(seen))
    assert not missed, f"{len(missed)} events committed behind the reader were skipped"
    assert seen == stored and len(stored) >= EVENTS_WANTED
