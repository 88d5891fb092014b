"""Review regressions that only PostgreSQL can show (locks, statement timeouts)."""

from __future__ import annotations

import psycopg2
import pytest

from conftest import reset_postgres


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

