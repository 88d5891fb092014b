"""Shared fixtures: a throwaway PostgreSQL, both backends, the real app, and
the few pieces of async test support the suite needs.

Async tests: `@pytest.mark.gen_test` (optionally `timeout=` seconds) runs an
`async def` test on a fresh Tornado IOLoop (`io_loop` fixture). This used to
come from pytest-tornado, whose last release (2020) needs pkg_resources (so
setuptools < 82) and Tornado's deprecated make_current(); the same marker
and fixture names are provided here in a few lines on tornado.testing.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop
from tornado.testing import get_async_test_timeout

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from handlers import AppContext  # noqa: E402
from imagelist import RunningApp  # noqa: E402

from helpers import running_app  # noqa: E402
from pgcluster import PgCluster, create_database, reset_postgres  # noqa: E402

EXTERNAL_PG = os.environ.get("IMAGELIST_TEST_DATABASE_URL")
BACKENDS = ["sqlite", "postgres"]


# -- async tests on a Tornado IOLoop ---------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gen_test(timeout=None): run this async test on the io_loop fixture's loop"
    )


@pytest.fixture
def io_loop() -> Iterator[IOLoop]:
    """A fresh IOLoop (and asyncio loop) per test, closed after it."""
    loop = IOLoop(make_current=False)
    asyncio.set_event_loop(loop.asyncio_loop)
    yield loop
    loop.close(all_fds=True)
    asyncio.set_event_loop(None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Every async test runs on a loop, asked for or not.
    if item.get_closest_marker("gen_test") and "io_loop" not in item.fixturenames:
        item.fixturenames.append("io_loop")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    marker = pyfuncitem.get_closest_marker("gen_test")
    if marker is None or not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = inspect.signature(pyfuncitem.obj).parameters
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    timeout = marker.kwargs.get("timeout", get_async_test_timeout())
    pyfuncitem.funcargs["io_loop"].run_sync(lambda: pyfuncitem.obj(**kwargs), timeout=timeout)
    return True


@pytest.fixture
def http_client(io_loop: IOLoop) -> Iterator[AsyncHTTPClient]:
    client = AsyncHTTPClient(force_instance=True)
    yield client
    client.close()


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
def base_url(running: RunningApp) -> str:
    return running.url


@pytest.fixture
def api(http_client, base_url):
    from client import Client

    return Client(http_client, base_url)
