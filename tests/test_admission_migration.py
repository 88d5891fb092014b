"""Migration 2 on both backends: rows written by the schema-1 service are
backfilled with their normalized name and digest, and then match."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import urllib.parse
import uuid
from pathlib import Path

import psycopg2
import pytest

from storage import create_storage, postgres
from storage.migrations import POSTGRES, SQLITE, split_statements
from storage.reference import parse_reference

from pgcluster import create_database

H = "ab" * 32
OLD_ROWS = [
    (H, "myorg/apache2", ["2.4"]),
    ("quay.io/foo/app@sha256:" + "cd" * 32, "quay.io/foo/app", []),
    ("legacy", "index.docker.io/library/redis", ["7"]),
    ("bad", "Not A Repo", ["latest"]),
]


def old_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in split_statements(SQLITE[0].sql):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    for entry_id, name, tags in OLD_ROWS:
        conn.execute(
            "INSERT INTO images VALUES (?, ?, ?, 1, 1)", (entry_id, name, json.dumps(tags))
        )
    conn.close()


def old_postgres(url: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(POSTGRES[0].sql)
        cur.execute(postgres.SCHEMA_TABLE_SQL)
        cur.execute("INSERT INTO imagelist_schema VALUES (1)")
        now = dt.datetime.now(dt.UTC)
        for entry_id, name, tags in OLD_ROWS:
            cur.execute(
                "INSERT INTO images VALUES (%s, %s, %s, %s, %s)", (entry_id, name, tags, now, now)
            )
    conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Overrides conftest's: a database the schema-1 service left behind."""
    if request.param == "sqlite":
        old_sqlite(tmp_path / "old.db")
        return f"sqlite:///{tmp_path}/old.db"
    server = request.getfixturevalue("pg_server_url")
    url = create_database(server, f"imagelist_old_{uuid.uuid4().hex[:8]}")
    old_postgres(url)
    return url


async def allowed(api, ref: str) -> dict:
    reply = await api.get("/allowed?image=" + urllib.parse.quote(ref, safe=""))
    assert reply.status == 200, reply.body
    return reply.json


@pytest.mark.gen_test
async def test_old_rows_are_backfilled_and_match(api, caplog) -> None:
    # The migration ran while the app was built, and said what will not match.
    setup = [r for r in caplog.get_records("setup") if r.msg == "unmatchable_entries"]
    assert [r.count for r in setup] == [1], setup
    assert (await allowed(api, "docker.io/myorg/apache2:2.4"))["entry"]["id"] == H
    assert (await allowed(api, f"myorg/apache2@sha256:{H}"))["allowed"] is True
    digest_ref = "quay.io/foo/app:x@sha256:" + "cd" * 32
    assert (await allowed(api, digest_ref))["allowed"] is True
    assert (await allowed(api, "redis:7"))["entry"]["id"] == "legacy"
    assert (await allowed(api, "not-a-repo"))["allowed"] is False
    # old rows read back unchanged
    assert [i["id"] for i in await api.all_images("?sort=id")] == sorted(
        (r[0] for r in OLD_ROWS), reverse=True
    )


@pytest.mark.gen_test
async def test_migration_runs_once(ctx) -> None:
    # Reopening the migrated store applies nothing again and keeps the keys.
    again = create_storage(ctx.config.database_url)
    await again.open()
    try:
        assert await again.count() == len(OLD_ROWS)
        found = await again.match([parse_reference("myorg/apache2:2.4")])
        assert [e.id for e in found[0]] == [H]
    finally:
        await again.close()
