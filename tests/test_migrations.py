"""Schema creation at start-up, including several instances at once."""

from __future__ import annotations

import asyncio
import uuid

import psycopg2
import pytest

from storage import NewImage, create_storage
from storage.postgres import MIGRATIONS

from conftest import create_database


@pytest.mark.gen_test(timeout=60)
async def test_instances_starting_together_migrate_once(pg_server_url: str) -> None:
    url = create_database(pg_server_url, f"imagelist_mig_{uuid.uuid4().hex[:8]}")
    stores = [create_storage(url, pool_size=2) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        # Every instance can write, and they all see one table.
        await asyncio.gather(*(s.put(NewImage(f"i{n}", "n")) for n, s in enumerate(stores)))
        assert await stores[0].count() == 6
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM imagelist_schema")
        assert cur.fetchall() == [(len(MIGRATIONS),)]
    conn.close()


@pytest.mark.gen_test
async def test_sqlite_store_reopens_an_existing_file(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    first = create_storage(url)
    await first.open()
    await first.put(NewImage("a", "n", ("t",)))
    await first.close()
    second = create_storage(url)
    await second.open()
    try:
        image = await second.get("a")
        assert image.tags == ("t",)
    finally:
        await second.close()
