"""Helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from config import Config, load_config
from imagelist import RunningApp, assemble


def make_config(database_url: str, *extra: str) -> Config:
    """A Config from these options alone: the environment is not read."""
    return load_config(["--database-url", database_url, *extra], env={})


@asynccontextmanager
async def running_app(database_url: str, *options: str) -> AsyncIterator[RunningApp]:
    """The app as the daemon assembles it, on a free port, with short
    database timeouts so outage tests stay quick."""
    config = make_config(
        database_url,
        "--listen",
        "127.0.0.1:0",
        "--db-timeout",
        "2",
        "--db-connect-timeout",
        "1",
        *options,
    )
    async with assemble(config) as running:
        yield running
