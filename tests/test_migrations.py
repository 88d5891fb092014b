"""Schema history: released migrations never change, a changed reference
normalization comes with a migration that recomputes keys, and schema
creation at start-up works with several instances at once."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.parse
import uuid

import psycopg2
import pytest

from storage import NewEntry, StorageUnavailable, create_storage
from storage.migrations import POSTGRES, SQLITE, Migration
from storage.postgres import MIGRATION_LOCK_KEY
from storage.reference import reference_keys

from daemon import storage_refusal
from pgcluster import create_database

# SHA-256 of every released migration's frozen text, per backend, in order.
# Append the digest of a new migration when it is released; never edit one.
RELEASED = {
    "postgres": [
        "9a1bc7bb4e60e920fbe4b0a3e200f630a4ddd787c95f802e6ea34e9ba9e1c7f4",
        "abf00fc4bbf1dc118776c88a24f79352e8640d278d6fcf90dcfed909d150bbeb",
        "0f5d3c3f4af29e55df07adfcb3e6150cab400d386d7bd823901d4e9ed08c02d0",
        "95ffbd48057b1fff72798bb293a6ad5763cb2bfe93c33afbbed00a960c75f574",
        "f8ad406244baa1d65b5b52c8f9f47a52650ee1d6eb3e922d8d7965e502d7b6a3",
        "6e7ca82b2e36fd948fa7a4772813a1bf8ec38b99ba5a5eed8dc5e4ba8edb16f3",
        "7e228b2564c49543c20d2cdc470cf0f085e4ab23583c0272aad2ba93047c0915",
    ],
    "sqlite": [
        "6586c257ab619afa73f818f36bb63176464b5ddcc36b0a7049424e6299f32a31",
        "8783e96e74a5f01ea6aa9f77595cc2d14e271028e2116f95b3e520567af288ca",
        "82ba66e330951ee694b8f7ce68ad32a3b3886b84597f092b8fcfa8f17785ee72",
    ],
}
BACKENDS = {"postgres": POSTGRES, "sqlite": SQLITE}


def digest(migration: Migration) -> str:
    return hashlib.sha256(migration.frozen_text().encode()).hexdigest()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_released_migrations_never_change(backend: str) -> None:
    migrations = BACKENDS[backend]
    released = RELEASED[backend]
    assert len(migrations) >= len(released), "a released migration was removed"
    for number, expected in enumerate(released, start=1):
        assert digest(migrations[number - 1]) == expected, (
            f"{backend} migration {number} changed after its release: add a new migration instead"
        )
    unrecorded = [digest(m) for m in migrations[len(released) :]]
    assert not unrecorded, f"record the new {backend} migrations in RELEASED: {unrecorded}"


# What reference_keys() answers for a sample of names and ids, hashed, for
# each migration that recomputes the keys: the normalization that migration
# stored. A different answer today means stored keys are stale.
KEY_SAMPLES = [
    ("nginx", "ab" * 32),
    ("library/nginx", "sha256:" + "ab" * 32),
    ("docker.io/myorg/apache2", "sha384:" + "cd" * 48),
    ("index.docker.io/library/redis", "legacy"),
    ("quay.io/foo/app", "quay.io/foo/app@sha256:" + "ef" * 32),
    ("localhost:5000/a/b", "other/repo@sha512:" + "01" * 64),
    ("Not A Repo", "x"),
    ("nginx:1.25", "AB" * 32),
    ("myorg/app@sha256:" + "ab" * 32, "not-a-digest@sha256:zz"),
    ("registry.example.com:443/team/app", "sha256:" + "ab" * 31),
]
NORMALIZATIONS = {
    # backend -> {migration number with recompute_keys: digest of the answers}
    "postgres": {2: "1022b4d3276442ba92d7be045150da4b9f062f67ec4ba8b2fa0b9ff623adbbdc"},
    "sqlite": {2: "1022b4d3276442ba92d7be045150da4b9f062f67ec4ba8b2fa0b9ff623adbbdc"},
}


def normalization_digest() -> str:
    answers = [reference_keys(name, entry_id) for name, entry_id in KEY_SAMPLES]
    return hashlib.sha256(repr(answers).encode()).hexdigest()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_changed_normalization_comes_with_a_migration(backend: str) -> None:
    recomputing = [n for n, m in enumerate(BACKENDS[backend], start=1) if m.recompute_keys]
    assert sorted(NORMALIZATIONS[backend]) == recomputing
    assert NORMALIZATIONS[backend][recomputing[-1]] == normalization_digest(), (
        "reference_keys() answers differently from when the keys were last "
        f"recomputed: append a {backend} migration with recompute_keys=True and "
        "record this digest for it"
    )


@pytest.mark.gen_test(timeout=60)
async def test_instances_starting_together_migrate_once(pg_server_url: str) -> None:
    url = create_database(pg_server_url, f"imagelist_mig_{uuid.uuid4().hex[:8]}")
    stores = [create_storage(url, pool_size=2) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        # Every instance can write, and they all see one table.
        await asyncio.gather(*(s.put(NewEntry(f"i{n}", "n")) for n, s in enumerate(stores)))
        assert await stores[0].count() == 6
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM imagelist_schema")
        assert cur.fetchall() == [(len(POSTGRES),)]
    conn.close()


@pytest.mark.gen_test
async def test_sqlite_store_reopens_an_existing_file(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    first = create_storage(url)
    await first.open()
    await first.put(NewEntry("a", "n", ("t",)))
    await first.close()
    second = create_storage(url)
    await second.open()
    try:
        image = await second.get("a")
        assert image.tags == ("t",)
    finally:
        await second.close()


# A database the configured role may not create tables in (PostgreSQL 15+
# grants no CREATE on schema public to other roles) made the start-up
# migration raise InsufficientPrivilege out of open(): the daemon died with an
# "uncaught_exception" traceback instead of saying what was wrong.
def test_a_database_the_role_cannot_migrate_is_refused_with_a_clear_message(
    pg_server_url: str,
) -> None:
    url = create_database(pg_server_url, f"imagelist_nopriv_{uuid.uuid4().hex[:8]}")
    admin = psycopg2.connect(url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS imagelist_nopriv")
        cur.execute("CREATE ROLE imagelist_nopriv LOGIN")
        cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    admin.close()
    parts = urllib.parse.urlsplit(url)
    netloc = "imagelist_nopriv@" + parts.netloc.rpartition("@")[2]
    failed = storage_refusal("--database-url", parts._replace(netloc=netloc).geturl())
    assert "permission denied" in failed["error"]


# Migrations ran under the per-query statement_timeout (--db-timeout, 5 s by
# default): migration 3 rewrites every row, so on a large table it was cut
# off, rolled back and tried again at every connect, for ever, and at
# start-up aiopg's CancelledError killed the daemon. A tiny --db-timeout
# makes a modest table "large" here.
@pytest.mark.gen_test(timeout=120)
async def test_a_migration_may_take_longer_than_the_query_timeout(pg_server_url: str) -> None:
    url = create_database(pg_server_url, f"imagelist_bigmig_{uuid.uuid4().hex[:8]}")
    first = create_storage(url)
    await first.open()
    await first.close()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO images (id, name, tags, created_at, updated_at)"
            " SELECT 'id' || n, 'nginx', '{latest}', now(), now()"
            " FROM generate_series(1, 60000) AS n"
        )
        # Back to the schema before migration 3 (its trigger and function gone).
        cur.execute("DROP TRIGGER images_entry_json ON images")
        cur.execute("DROP FUNCTION imagelist_entry_json_v1()")
        cur.execute("UPDATE imagelist_schema SET version = 2")
    conn.close()
    store = create_storage(url, timeout=0.1)
    await store.open()
    try:
        assert await store.count() == 60000
    finally:
        await store.close()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM imagelist_schema")
        assert cur.fetchall() == [(len(POSTGRES),)]
        cur.execute("SELECT count(*) FROM images WHERE entry_json IS NULL")
        assert cur.fetchone() == (0,)
    conn.close()


# A second instance starting while another holds the migration lock waited
# out statement_timeout and died of aiopg's CancelledError; it now starts,
# answers 503s, and connects once the lock is free.
@pytest.mark.gen_test(timeout=60)
async def test_an_instance_waiting_on_the_migration_lock_starts_and_recovers(
    pg_server_url: str,
) -> None:
    url = create_database(pg_server_url, f"imagelist_lock_{uuid.uuid4().hex[:8]}")
    other = psycopg2.connect(url)
    with other.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    store = create_storage(url, timeout=0.5)
    try:
        await store.open()
        with pytest.raises(StorageUnavailable):
            await store.count()
        other.close()
        await asyncio.sleep(1.5)  # past the store's retry interval
        assert await store.count() == 0
    finally:
        other.close()
        await store.close()


# The audit trail's trigger runs at commit; a migration that changes entries
# and then alters their table in the same transaction found those events
# still pending, which PostgreSQL refuses. A next migration of that shape
# (run here as if released after today's) must apply, its changes recorded.
@pytest.mark.gen_test(timeout=60)
async def test_a_migration_may_change_entries_and_then_alter_their_table(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import storage.postgres

    url = create_database(pg_server_url, f"imagelist_evmig_{uuid.uuid4().hex[:8]}")
    first = create_storage(url)
    await first.open()
    await first.put(NewEntry("a", "a/b", ("1",)))
    await first.close()
    later = Migration(
        "UPDATE images SET tags = tags || '{migrated}';"
        " ALTER TABLE images ADD COLUMN IF NOT EXISTS later integer"
    )
    monkeypatch.setattr(storage.postgres, "POSTGRES", (*POSTGRES, later))
    store = create_storage(url)
    await store.open()
    try:
        assert (await store.get("a")).tags == ("1", "migrated")
    finally:
        await store.close()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT action, tags_after FROM image_events ORDER BY seq")
        assert cur.fetchall() == [("created", ["1"]), ("updated", ["1", "migrated"])]
    conn.close()
