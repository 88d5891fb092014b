"""The PostgreSQL pool: warm from the start, and the same connections under
load (no connect/disconnect churn), seen from the server's side."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg2
import pytest

from storage import NewEntry, create_storage


def backends(url: str, application: str) -> set[int]:
    """Server processes serving connections that carry `application`."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)
            )
            return {pid for (pid,) in cur.fetchall()}
    finally:
        conn.close()


@pytest.mark.gen_test(timeout=60)
async def test_pool_is_warm_and_keeps_its_connections_under_load(pg_url: str) -> None:
    application = f"imagelist-pool-{uuid.uuid4().hex[:8]}"
    url = f"{pg_url}?application_name={application}"
    storage = create_storage(url, pool_size=4)
    await storage.open()
    try:
        # Warm: all four are open before the first request.
        opened = backends(pg_url, application)
        assert len(opened) == 4
        assert storage.pool_stats().size == 4

        await storage.put(NewEntry("pool-test", "n"))
        for _ in range(3):
            # Fifty times more operations at once than connections.
            await asyncio.gather(*(storage.get("pool-test") for _ in range(200)))
        assert backends(pg_url, application) == opened
        stats = storage.pool_stats()
        assert stats.size == 4 and stats.in_use == 0 and stats.waits > 0
    finally:
        await storage.close()
    # Closed: the server processes exit (asynchronously after the disconnect).
    deadline = time.monotonic() + 10
    while backends(pg_url, application) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert backends(pg_url, application) == set()


def test_default_application_name_is_imagelist() -> None:
    from storage.postgres import split_hosts

    (dsn,), _ = split_hosts("postgresql://u@h/db", 3)
    assert "application_name=imagelist" in dsn
    (dsn,), _ = split_hosts("postgresql://u@h/db?application_name=mine", 3)
    assert "application_name=mine" in dsn
