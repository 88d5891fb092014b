"""Helpers the test modules share (fixtures live in conftest.py): the app
assembled in-process, bounded waits, daemon options and certificates."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop

from config import Config, load_config
from imagelist import RunningApp, assemble

from client import Client

T = TypeVar("T")


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


#: Starts the app on first call: its client and the running app.
Start = Callable[[], Awaitable[tuple[Client, RunningApp]]]


@contextmanager
def app_starter(
    io_loop: IOLoop,
    database_url: str,
    *options: str,
    seeds: tuple[dict[str, Any], ...] = (),
    headers: dict[str, str] | None = None,
) -> Iterator[Start]:
    """For a fixture whose test starts the app itself (after preparing files
    it reads): the app with `options`, holding `seeds` written with
    `headers`; closed when the fixture ends."""
    stack = AsyncExitStack()
    http = AsyncHTTPClient(force_instance=True)

    async def begin() -> tuple[Client, RunningApp]:
        running = await stack.enter_async_context(running_app(database_url, *options))
        api = Client(http, running.url)
        for seed in seeds:
            assert (await api.put(seed, headers=headers)).status == 200
        return api, running

    try:
        yield begin
    finally:
        http.close()
        io_loop.run_sync(stack.aclose)


# -- waiting (bounded polling) -----------------------------------------------------

#: Seconds a condition may take to hold. It only catches hangs: the usual
#: case is milliseconds, and a loaded machine must not turn it into a failure.
DEADLINE = 20.0


def wait_for(probe: Callable[[], T], expected: T, timeout: float = DEADLINE) -> None:
    """Poll `probe()` until it returns `expected`; fail with the last answer."""
    deadline = time.monotonic() + timeout
    while (got := probe()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r}, expected {expected!r} after {timeout}s")
        time.sleep(0.05)


async def eventually(
    probe: Callable[[], Awaitable[T]], expected: T, timeout: float = DEADLINE
) -> None:
    """`wait_for` on the IOLoop, for a probe that is a coroutine."""
    deadline = time.monotonic() + timeout
    while (got := await probe()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r}, expected {expected!r} after {timeout}s")
        await asyncio.sleep(0.05)


# -- daemons and their files ---------------------------------------------------------


def sqlite_args(tmp_path: Path) -> list[str]:
    """The options of a daemon on its own SQLite file in `tmp_path`."""
    return ["--database-url", f"sqlite:///{tmp_path}/imagelist.db"]


def make_cert(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate and key for `name` and 127.0.0.1 (openssl)."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl not found: install the Debian package `openssl`"
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext",
            f"subjectAltName=DNS:{name},IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def raw_exchange(port: int, payload: bytes) -> bytes:
    """Send `payload` on a raw TCP connection, then EOF; everything answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # no more is coming: the server sees EOF
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)
