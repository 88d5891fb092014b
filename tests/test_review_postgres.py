"""Review regressions that only PostgreSQL can show (locks, statement timeouts)."""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid

import psycopg2
import pytest

from storage import StorageUnavailable, create_storage
from storage.migrations import POSTGRES
from storage.postgres import MIGRATION_LOCK_KEY

from conftest import reset_postgres
from daemon import storage_refusal
from pgcluster import create_database


@pytest.fixture
def database_url(pg_url: str) -> str:
    reset_postgres(pg_url)
    return pg_url


def lock_images(database_url: str) -> psycopg2.extensions.connection:
    """An admin's transaction holding the images table (a VACUUM FULL, a
    forgotten psql session): every query waits for it."""
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute("LOCK TABLE images IN ACCESS EXCLUSIVE MODE")
    return conn


# A query that outlived statement_timeout (--db-timeout) made aiopg raise
# CancelledError in place of the QueryCanceled error; nothing mapped that, so
# the client got a 500 "internal error" and the log a traceback.
@pytest.mark.gen_test(timeout=90)
async def test_a_query_outliving_the_db_timeout_is_a_503_then_recovers(api, database_url) -> None:
    assert (await api.put({"id": "a", "name": "nginx"})).status == 200
    conn = lock_images(database_url)
    try:
        for request in (
            api.get("/images/a", timeout=30),
            api.get("/images", timeout=30),
            api.put({"id": "b", "name": "nginx"}, timeout=30),
            api.get("/allowed?image=nginx", timeout=30),
        ):
            reply = await request
            assert reply.status == 503, reply.body
            assert "error" in reply.json
    finally:
        conn.rollback()
        conn.close()
    reply = await api.get("/images/a")
    assert reply.status == 200, reply.body
    # Nothing that failed was written.
    assert (await api.get("/images/b")).status == 404


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
