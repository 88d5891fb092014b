#!/usr/bin/env python3
"""imagelist daemon entry point: parse config, build the parts, serve."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import sys
import time
from collections.abc import Sequence

import structlog
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from config import Config, ConfigError, load_config
from config.logging import setup_logging
from config.systemd import notify, watchdog_interval
from config.tls import ReloadableTls
from config.tokens import TokenFileError, TokenRegistry
from config.watch import FileWatcher
from handlers import AppContext, make_app
from handlers.metrics import Metrics
from storage import Replica, Storage, StorageError, create_replica, create_storage

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


def load_tokens(config: Config, metrics: Metrics) -> TokenRegistry | None:
    """The token registry, or None (auth off); TokenFileError refuses start-up."""
    if not config.tokens_file:
        log.warning("auth_disabled", reason="no --tokens-file: PUT and DELETE are unauthenticated")
        return None
    tokens = TokenRegistry(config.tokens_file, metrics)
    tokens.load()
    return tokens


def watch_tokens(ctx: AppContext) -> FileWatcher | None:
    """Reload the tokens file on change (watchdog) and on SIGHUP."""
    tokens = ctx.tokens
    if tokens is None:
        return None
    watcher = FileWatcher(tokens.path, tokens.reload, IOLoop.current())
    watcher.start()
    ctx.reload_hooks.append(lambda: tokens.reload("sighup", force=True))
    # A change between the start-up load and the watch would go unseen.
    tokens.reload("startup")
    return watcher


def build_storage(config: Config, metrics: Metrics) -> Storage:
    """The store the configuration names, reporting to `metrics`."""
    return create_storage(
        config.database_url,
        pool_size=config.db_pool_size,
        timeout=config.db_timeout,
        connect_timeout=config.db_connect_timeout,
        observer=metrics.observe_query,
    )


def build_replica(config: Config, storage: Storage, metrics: Metrics) -> Replica:
    """The admission replica of `storage`, reporting to `metrics`."""
    return create_replica(storage, max_age=config.replica_max_age, observer=metrics.observe_replica)


async def serve(config: Config) -> int:
    metrics = Metrics()
    try:
        tokens = load_tokens(config, metrics)
    except TokenFileError as exc:
        log.error("tokens_file_invalid", error=str(exc))
        return 2
    storage = build_storage(config, metrics)
    try:
        await storage.open()
    except (StorageError, OSError) as exc:
        log.error("storage_open_failed", storage=storage.kind, error=str(exc))
        return 1
    # Fills in the background: start-up does not wait for the database.
    replica = build_replica(config, storage, metrics)
    await replica.open()
    ctx = AppContext(
        config=config, storage=storage, metrics=metrics, tokens=tokens, replica=replica
    )
    ssl_options: ssl.SSLContext | None = None
    if config.certfile and config.keyfile:
        try:
            tls = ReloadableTls(config.certfile, config.keyfile)
        except (OSError, ssl.SSLError) as exc:
            log.error("tls_setup_failed", error=str(exc))
            await replica.close()
            await storage.close()
            return 1
        ssl_options = tls.context
        ctx.reload_hooks.append(tls.reload)
    server = HTTPServer(
        make_app(ctx),
        ssl_options=ssl_options,
        max_body_size=config.max_body_size * 16,
        idle_connection_timeout=60,
        body_timeout=30,
    )
    try:
        sockets = bind_sockets(
            config.listen_port, address=config.listen_host or None, reuse_port=config.reuse_port
        )
    except OSError as exc:
        log.error(
            "listen_failed", listen=f"{config.listen_host}:{config.listen_port}", error=str(exc)
        )
        await replica.close()
        await storage.close()
        return 1
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, ctx.reload)
    watcher = watch_tokens(ctx)
    # Announced only now: the sockets listen and every signal handler is in
    # place (a SIGHUP sent on seeing this would otherwise kill the daemon).
    log.info(
        "listening", host=config.listen_host or "*", port=port, storage=storage.kind, tls=config.tls
    )
    sd_notify(f"READY=1\nSTATUS=listening on port {port}")
    interval = watchdog_interval()
    pinger = asyncio.create_task(watchdog_pings(interval)) if interval else None
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.stop()
    sd_notify("STOPPING=1")
    log.info("stopping", inflight=ctx.inflight)
    await drain(ctx, server, config.shutdown_timeout)
    await replica.close()
    await storage.close()
    if pinger is not None:
        pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"imagelist: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, config.debug)
    return asyncio.run(serve(config))


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
