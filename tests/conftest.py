"""Shared fixtures: a throwaway PostgreSQL, both backends, the real app."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from handlers import AppContext  # noqa: E402
from imagelist import RunningApp  # noqa: E402

from helpers import running_app  # noqa: E402
from pgcluster import PgCluster, create_database, reset_postgres  # noqa: E402

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


@pytest.fixture
def app_options() -> list[str]:
    """Extra command-line options for the app under test (override per module)."""
    return []


@pytest.fixture
def running(database_url: str, app_options: list[str], io_loop) -> Iterator[RunningApp]:
    """The app under test, opened and closed by the daemon's own assembly."""
    opened = running_app(database_url, *app_options)
    yield io_loop.run_sync(opened.__aenter__)
    io_loop.run_sync(lambda: opened.__aexit__(None, None, None))


@pytest.fixture
def ctx(running: RunningApp) -> AppContext:
    return running.ctx


@pytest.fixture
def http_server(running: RunningApp):
    """Replaces pytest-tornado's: the assembly's own server."""
    return running.server


@pytest.fixture
def base_url(running: RunningApp) -> str:
    return running.url


@pytest.fixture
def api(http_client, base_url):
    from client import Client

    return Client(http_client, base_url)
