#!/usr/bin/env python3
"""imagelist daemon entry point: parse config, build the parts, serve."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import structlog
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from config import Config, ConfigError, load_config, upgrade
from config.dsn import password_of
from config.fdlimit import default_max_connections, raise_nofile_limit
from config.logging import setup_logging
from config.metrics import Metrics
from config.systemd import notify, watchdog_interval
from config.tls import ReloadableTls
from config.tokens import TokenFileError, TokenRegistry, show_tokens
from config.watch import FileWatcher
from handlers import AppContext, make_app
from handlers.connections import GuardedSocket, LimitedHTTPServer
from storage import Replica, Storage, StorageError, create_replica, create_storage
from storage.retention import prune_events_forever
from storage.sweep import sweep_stale_keys

log = structlog.get_logger("imagelist")


def sd_notify(state: str) -> None:
    """Tell systemd; a broken notify socket must not take the service down."""
    try:
        if notify(state):
            log.debug("sd_notify", state=state)
    except OSError as exc:
        log.warning("sd_notify_failed", state=state, error=str(exc))


async def watchdog_pings(interval: float) -> None:
    # Pinged from the loop itself, so a wedged loop stops the pings and
    # systemd restarts the service.
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def drain(ctx: AppContext, server: HTTPServer, timeout: float) -> None:
    """Stop listening, let in-flight requests finish (bounded), then close."""
    server.stop()
    deadline = time.monotonic() + timeout
    while ctx.inflight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - cheap poll
        await asyncio.sleep(0.05)
    if ctx.inflight:
        log.warning("shutdown_timeout", inflight=ctx.inflight)
    await server.close_all_connections()


class StartupError(Exception):
    """A part of the app could not be opened: the daemon logs `event` with
    `fields` and exits with `status`, instead of a traceback."""

    def __init__(self, event: str, status: int, **fields: object) -> None:
        super().__init__(event)
        self.event = event
        self.status = status
        self.fields = fields


@dataclass(frozen=True)
class RunningApp:
    """What `assemble` opened: the app's parts and the server listening for it."""

    ctx: AppContext
    server: HTTPServer
    port: int

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the app."""
        config = self.ctx.config
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(  # noqa: S104
            config.listen_host, config.listen_host
        )
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if config.tls else 'http'}://{host}:{self.port}"


def load_tokens(config: Config, metrics: Metrics) -> TokenRegistry | None:
    """The token registry, or None (auth off); an unusable file refuses start-up."""
    if not config.tokens_file:
        log.warning("auth_disabled", reason="no --tokens-file: PUT and DELETE are unauthenticated")
        return None
    tokens = TokenRegistry(config.tokens_file, metrics)
    try:
        tokens.load()
    except TokenFileError as exc:
        raise StartupError("tokens_file_invalid", 2, error=str(exc)) from None
    return tokens


def watch_tokens(ctx: AppContext) -> FileWatcher | None:
    """Reload the tokens file on change (watchdog) and on SIGHUP."""
    tokens = ctx.tokens
    if tokens is None:
        return None
    watcher = FileWatcher(tokens.path, tokens.reload, IOLoop.current())
    watcher.start()

    def reload_forced() -> None:
        tokens.reload("sighup", force=True)

    ctx.reload_hooks.append(reload_forced)
    # A change between the start-up load and the watch would go unseen.
    tokens.reload("startup")
    return watcher


def connection_limit(config: Config) -> int:
    """--max-connections, or what fits under the descriptor limit, which
    is first raised to the hard limit."""
    soft, hard, error = raise_nofile_limit()
    if error:
        log.warning("fd_limit_not_raised", soft=soft, hard=hard, error=error)
    limit = config.max_connections or default_max_connections(soft, config.db_pool_size)
    if limit > soft:
        log.warning("max_connections_above_fd_limit", max_connections=limit, fd_limit=soft)
    log.info("connection_limit", max_connections=limit, fd_limit=soft)
    return limit


def build_storage(config: Config, metrics: Metrics) -> Storage:
    """The store the configuration names, reporting to `metrics`: every
    operation's latency and, at scrape time, its pool."""
    storage = create_storage(
        config.database_url,
        pool_size=config.db_pool_size,
        timeout=config.db_timeout,
        connect_timeout=config.db_connect_timeout,
        observer=metrics.observe_query,
    )
    metrics.watch_storage(storage)
    storage.on_event = metrics.observe_event
    return storage


def build_replica(config: Config, storage: Storage, metrics: Metrics) -> Replica:
    """The admission replica of `storage`, reporting to `metrics`: counters
    as it goes and, at scrape time, its size and age."""
    replica = create_replica(
        storage, max_age=config.replica_max_age, observer=metrics.observe_replica
    )
    metrics.watch_replica(replica)
    return replica


def load_tls(config: Config, ctx: AppContext) -> ssl.SSLContext | None:
    """The listening socket's TLS context (reloaded on SIGHUP), or None."""
    if not (config.certfile and config.keyfile):
        return None
    try:
        tls = ReloadableTls(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError("tls_setup_failed", 1, error=str(exc)) from None
    ctx.reload_hooks.append(tls.reload)
    return tls.context


def listen(config: Config, server: HTTPServer) -> int:
    """Bind the configured address (port 0: any free port); the port bound."""
    try:
        sockets = [
            GuardedSocket.wrap(s)
            for s in bind_sockets(
                config.listen_port, address=config.listen_host or None, reuse_port=config.reuse_port
            )
        ]
    except OSError as exc:
        raise StartupError(
            "listen_failed",
            1,
            listen=f"{config.listen_host}:{config.listen_port}",
            error=str(exc),
        ) from None
    server.add_sockets(sockets)
    return int(sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def assemble(config: Config) -> AsyncIterator[RunningApp]:
    """Open every part of the app, listening, and close them all on exit, in
    reverse order: stop watching, drain in-flight requests, close the replica
    and the store.

    The daemon (`serve`) and the in-process tests share this, so a test runs
    the app exactly as it is deployed. StartupError when a part cannot open.
    """
    async with contextlib.AsyncExitStack() as stack:
        metrics = Metrics()
        tokens = load_tokens(config, metrics)
        storage = build_storage(config, metrics)
        stack.push_async_callback(storage.close)
        try:
            await storage.open()
        except (StorageError, OSError) as exc:
            raise StartupError(
                "storage_open_failed", 1, storage=storage.kind, error=str(exc)
            ) from None
        # Fills in the background: start-up does not wait for the database.
        replica = build_replica(config, storage, metrics)
        stack.push_async_callback(replica.close)
        await replica.open()
        ctx = AppContext(
            config=config, storage=storage, metrics=metrics, tokens=tokens, replica=replica
        )
        server = LimitedHTTPServer(
            make_app(ctx),
            max_connections=connection_limit(config),
            ssl_options=load_tls(config, ctx),
            # Routes that take a body raise it for their request (BodyHandler).
            max_body_size=config.max_body_size,
            idle_connection_timeout=60,
            body_timeout=30,
        )
        port = listen(config, server)
        stack.push_async_callback(drain, ctx, server, config.shutdown_timeout)
        watcher = watch_tokens(ctx)
        if watcher is not None:
            stack.callback(watcher.stop)
        yield RunningApp(ctx=ctx, server=server, port=port)


async def cancel(task: asyncio.Task[None]) -> None:
    # Cancelled again until it ends: Python 3.11's wait_for (inside aiopg)
    # drops a cancellation that arrives as its query completes.
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_action(config: Config) -> int:
    """`--migrate` / `--migrate-dry-run`: run against the database and exit."""
    storage = build_storage(config, Metrics())
    try:
        return await upgrade.run(config.action, storage)
    except StorageError as exc:
        log.error("migrate_failed", storage=storage.kind, error=str(exc))
        return 1
    finally:
        await storage.close()


async def serve(config: Config) -> int:
    if config.legacy_env:
        log.warning(
            "legacy_environment",
            variables=list(config.legacy_env),
            hint="the Go service's variables; rename each to IMAGELIST_<NAME>",
        )
    if config.action != "serve":
        return await run_action(config)
    pinger: asyncio.Task[None] | None = None
    try:
        async with assemble(config) as running:
            # Rows other writers add get their reference keys; stopped
            # before the app drains and its store closes.
            sweeper = asyncio.create_task(sweep_stale_keys(running.ctx.storage))
            # The audit trail's retention, at start and hourly.
            pruner = asyncio.create_task(
                prune_events_forever(
                    running.ctx.storage,
                    config.events_retention_days,
                    running.ctx.metrics.observe_pruned,
                )
            )
            try:
                pinger = await run_until_stopped(running)
            finally:
                await cancel(pruner)
                await cancel(sweeper)
    except StartupError as exc:
        log.error(exc.event, **exc.fields)
        return exc.status
    finally:
        # Pings go on while the app drains: systemd still watches a stopping unit.
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
    log.info("stopped")
    return 0


async def run_until_stopped(running: RunningApp) -> asyncio.Task[None] | None:
    """Signals and sd_notify around the running app, until SIGTERM/SIGINT;
    the watchdog pinger, if systemd wants one, for the caller to stop."""
    ctx, config = running.ctx, running.ctx.config
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, ctx.reload)
    # Announced only now: the sockets listen and every signal handler is in
    # place (a SIGHUP sent on seeing this would otherwise kill the daemon).
    log.info(
        "listening",
        host=config.listen_host or "*",
        port=running.port,
        storage=ctx.storage.kind,
        tls=config.tls,
    )
    sd_notify(f"READY=1\nSTATUS=listening on port {running.port}")
    interval = watchdog_interval()
    pinger = asyncio.create_task(watchdog_pings(interval)) if interval else None
    await stop.wait()
    sd_notify("STOPPING=1")
    log.info("stopping", inflight=ctx.inflight)
    return pinger


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"imagelist: {exc}", file=sys.stderr)
        return 2
    if config.action == "show-tokens" and config.tokens_file:
        # Answered from the file alone: no logging set-up, no database.
        status, lines = show_tokens(config.tokens_file)
        print("\n".join(lines), file=sys.stderr if status else sys.stdout)
        return status
    setup_logging(config.log_format, config.debug, secrets=[password_of(config.database_url) or ""])
    return asyncio.run(serve(config))


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
