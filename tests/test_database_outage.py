"""PostgreSQL down or hung under a running app, and coming back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import psycopg2
import pytest

from daemon import Daemon
from helpers import eventually
from pgcluster import PgCluster


@pytest.fixture
def database_url(pg_cluster: PgCluster) -> str:
    return pg_cluster.url()


async def status_of(api, path: str) -> int:
    return (await api.get(path)).status


def assert_503(reply) -> None:
    assert reply.status == 503, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    assert "unavailable" in reply.json["error"] or "did not answer" in reply.json["error"]


@pytest.mark.gen_test(timeout=90)
async def test_stopped_database_gives_503s_and_recovers_by_itself(api, pg_cluster) -> None:
    assert (await api.put({"id": "kept", "name": "n"})).status == 200
    pg_cluster.stop()

    assert_503(await api.get("/health/ping", timeout=10))
    assert_503(await api.get("/images", timeout=10))
    assert_503(await api.get("/images/kept", timeout=10))
    assert_503(await api.put({"id": "lost", "name": "n"}, timeout=10))
    assert_503(await api.delete("/images/kept", timeout=10))
    assert (await api.get("/health/live")).status == 200

    pg_cluster.start()
    await eventually(lambda: status_of(api, "/health/ping"), 200)
    assert (await api.get("/images/kept")).status == 200
    assert (await api.get("/images/lost")).status == 404  # the failed PUT wrote nothing
    assert (await api.put({"id": "after", "name": "n"})).status == 200


@pytest.mark.gen_test(timeout=90)
async def test_restarted_database_is_used_again_without_errors(api, pg_cluster) -> None:
    """Pooled connections die with a restart; the retry hides that from clients."""
    for i in range(5):
        await api.put({"id": f"r{i}", "name": "n"})
    pg_cluster.stop()
    pg_cluster.start()
    pg_cluster.wait_ready()
    reply = await api.get("/images")
    assert reply.status == 200 and len(reply.json) == 5


def cluster_pids(cluster: PgCluster) -> list[int]:
    with open(os.path.join(cluster.data, "postmaster.pid")) as f:
        main = int(f.readline())
    children = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True)
    return [main, *(int(p) for p in children.stdout.split())]


@pytest.mark.gen_test(timeout=90)
async def test_hung_database_answers_503_within_the_timeouts(api, pg_cluster) -> None:
    """A frozen server (SIGSTOP) accepts TCP but never answers: every call
    must still return, bounded by --db-timeout / --db-connect-timeout."""
    assert (await api.put({"id": "x", "name": "n"})).status == 200
    pids = cluster_pids(pg_cluster)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        assert_503(await api.get("/images/x", timeout=15))
        assert_503(await api.get("/health/ping", timeout=15))
        assert_503(await api.put({"id": "y", "name": "n"}, timeout=15))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    await eventually(lambda: status_of(api, "/images/x"), 200)


def test_daemon_starts_with_the_database_down_and_recovers(pg_cluster: PgCluster) -> None:
    pg_cluster.stop()
    with Daemon("--database-url", pg_cluster.url(), "--db-connect-timeout", "1") as d:
        status, body, _ = d.request("GET", "/health/ping")
        assert status == 503 and body["error"]
        status, body, _ = d.request("PUT", "/images", {"id": "a", "name": "n"})
        assert status == 503
        pg_cluster.start()
        d.wait_status("/health/ping", 200)
        # The schema is created once the database is reachable.
        status, body, _ = d.request("PUT", "/images", {"id": "a", "name": "n"})
        assert status == 200, body
    assert not any(e.get("level") == "error" and "Traceback" in str(e) for e in d.logs())


def test_multi_host_dsn_follows_the_writable_server(pg_cluster: PgCluster) -> None:
    """An HA DSN lists every node; only the writable one is used, and a
    failover to another node is followed without a restart."""
    standby = pg_cluster  # made read-only below, like a hot standby
    primary = PgCluster().init()
    primary.start()
    primary.wait_ready()
    try:
        _set_read_only(standby, True)
        dsn = (
            f"host=127.0.0.1,127.0.0.1 port={standby.port},{primary.port} user=postgres "
            "dbname=postgres target_session_attrs=read-write"
        )
        with Daemon("--database-url", dsn, "--db-connect-timeout", "1") as d:
            assert d.request("PUT", "/images", {"id": "one", "name": "n"})[0] == 200
            assert _ids(primary) == ["one"]

            # Failover: the primary dies, the standby is promoted (made writable).
            primary.stop()
            _set_read_only(standby, False)
            deadline = time.monotonic() + 20
            while d.request("PUT", "/images", {"id": "two", "name": "n"})[0] != 200:
                assert time.monotonic() < deadline, "never failed over"
                time.sleep(0.2)
            assert "two" in _ids(standby)
    finally:
        primary.destroy()


def _set_read_only(cluster: PgCluster, on: bool) -> None:
    conn = psycopg2.connect(cluster.url())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
        cur.execute("SELECT pg_reload_conf()")
        # Existing sessions keep their setting: end them, as a promotion would.
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname IS NOT NULL"
        )
    conn.close()


def _ids(cluster: PgCluster) -> list[str]:
    conn = psycopg2.connect(cluster.url())
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('images') IS NOT NULL")
        if not cur.fetchone()[0]:
            return []
        cur.execute("SELECT id FROM images ORDER BY id")
        rows = [r[0] for r in cur.fetchall()]
    conn.close()
    return rows


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
    assert (await api.put({"id": "a", "name": "nginx", "tags": ["1"]})).status == 200
    # From a thread: the LOCK waits for every transaction reading the table,
    # and the replica's load (in flight just after start-up) is one, which
    # only this IOLoop can finish. Waited for here, it hung the test.
    conn = await asyncio.to_thread(lock_images, database_url)
    try:
        for request in (
            api.get("/images/a", timeout=30),
            api.get("/images", timeout=30),
            api.put({"id": "b", "name": "nginx"}, timeout=30),
        ):
            reply = await request
            assert reply.status == 503, reply.body
            assert "error" in reply.json
        # Admission is decided by the replica meanwhile: a listed image from
        # memory, an unlisted one denied when its confirmation times out.
        reply = await api.get("/allowed?image=nginx:1", timeout=30)
        assert reply.status == 200 and reply.json["allowed"] is True, reply.body
        reply = await api.get("/allowed?image=nginx:2", timeout=30)
        assert reply.status == 200 and reply.json["allowed"] is False, reply.body
    finally:
        conn.rollback()
        conn.close()
    reply = await api.get("/images/a")
    assert reply.status == 200, reply.body
    # Nothing that failed was written.
    assert (await api.get("/images/b")).status == 404
