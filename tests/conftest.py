"""Shared fixtures: a throwaway PostgreSQL, both backends, the real app."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from config import load_config  # noqa: E402
from handlers import AppContext, make_app  # noqa: E402
from handlers.metrics import Metrics  # noqa: E402
from imagelist import build_replica, build_storage  # noqa: E402

from pgcluster import PgCluster, create_database  # noqa: E402

EXTERNAL_PG = os.environ.get("IMAGELIST_TEST_DATABASE_URL")
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A PostgreSQL server for the session: the one named by
    IMAGELIST_TEST_DATABASE_URL, else a throwaway cluster started here."""
    if EXTERNAL_PG:
        yield EXTERNAL_PG
        return
    cluster = PgCluster().init()
    cluster.start()
    cluster.wait_ready()
    try:
        yield cluster.url()
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> str:
    """One database for the contract tests, emptied before each test."""
    return create_database(pg_server_url, f"imagelist_test_{uuid.uuid4().hex[:8]}")


def reset_postgres(url: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('images') IS NOT NULL")
        (exists,) = cur.fetchone()
        if exists:
            cur.execute("TRUNCATE images")
    conn.close()


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A private cluster this test may stop and restart."""
    if EXTERNAL_PG:
        pytest.skip("needs a cluster the test controls; unset IMAGELIST_TEST_DATABASE_URL")
    cluster = PgCluster().init()
    cluster.start()
    cluster.wait_ready()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/imagelist.db"
    url = request.getfixturevalue("pg_url")
    reset_postgres(url)
    return url


def make_config(database_url: str, *extra: str):
    return load_config(["--database-url", database_url, *extra], env={})


@pytest.fixture
def app_options() -> list[str]:
    """Extra command-line options for the app under test (override per module)."""
    return []


@pytest.fixture
def ctx(database_url: str, app_options: list[str], io_loop) -> Iterator[AppContext]:
    config = make_config(
        database_url, "--db-timeout", "2", "--db-connect-timeout", "1", *app_options
    )
    metrics = Metrics()
    storage = build_storage(config, metrics)
    io_loop.run_sync(storage.open)
    replica = build_replica(config, storage, metrics)
    io_loop.run_sync(replica.open)
    context = AppContext(config=config, storage=storage, metrics=metrics, replica=replica)
    yield context
    io_loop.run_sync(replica.close)
    io_loop.run_sync(storage.close)


@pytest.fixture
def app(ctx: AppContext):
    return make_app(ctx)


@pytest.fixture
def api(app, http_client, base_url):
    from client import Client

    return Client(http_client, base_url)
