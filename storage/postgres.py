"""PostgreSQL backend on aiopg connections, pooled in storage/pgpool.py.

Failure handling: the pool is created lazily and re-created when it has
no live connection left, so the daemon starts and keeps serving 503s while the
database is down and recovers by itself. Connect and query times are
bounded. Multi-host DSNs are followed host by host here, because aiopg
cannot follow libpq's own host fallback (with the first host down it
watches the socket libpq already gave up on).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import aiopg
import psycopg2
import psycopg2.errors
from psycopg2.extensions import make_dsn, parse_dsn

import storage.legacy as legacy
from storage.base import KEYS_BATCH, PoolStats, QueryObserver, Row, Storage
from storage.errors import (
    Invalid,
    OutOfScope,
    StorageError,
    StorageMisconfigured,
    StorageUnavailable,
)
from storage.migrations import POSTGRES, KeyBackfill
from storage.model import Entry, Event, ListQuery, NewEntry, Writer, from_micros
from storage.pgpool import ConnectionPool, NoConnection
from storage.reference import Reference, reference_keys
from storage.sql import SELECT_COLUMNS, backend_statements, list_params, pyformat, write_params

log = logging.getLogger("imagelist.storage")
T = TypeVar("T")

# Seconds aiopg waits for an answer beyond the server's statement_timeout.
CLIENT_TIMEOUT_MARGIN = 1.0

# Seconds aiopg lets one migration statement run (the server has no limit
# then): generous, since a migration touches every row.
MIGRATION_TIMEOUT = 3600.0

# Serialises schema changes across every instance sharing the database.
MIGRATION_LOCK_KEY = 0x696D676C  # "imgl"

KEYS_PAGE_SQL = "SELECT id, name FROM images WHERE id > %(after)s ORDER BY id LIMIT %(limit)s"
SET_KEYS_SQL = """
UPDATE images SET norm_name = k.norm_name, digest = k.digest
FROM unnest(%(ids)s::text[], %(names)s::text[], %(digests)s::text[]) AS k(id, norm_name, digest)
WHERE images.id = k.id
"""


# Keys imagelist computed itself: no audit event (storage/migrations.py),
# for this transaction only.
KEYS_MARK_SQL = "SELECT set_config('imagelist.keys', 'on', true)"


async def recompute_keys(cur: Any) -> None:
    """Every entry's reference keys, page by page in id order (inside the
    migration's transaction and lock)."""
    backfill = KeyBackfill()
    await cur.execute(KEYS_MARK_SQL)

    async def page() -> list[tuple[str, str]]:
        await cur.execute(KEYS_PAGE_SQL, backfill.page_params())
        return list(await cur.fetchall())

    while keys := backfill.plan(await page()):
        ids, names, digests = zip(*keys, strict=True)
        await cur.execute(
            SET_KEYS_SQL, {"ids": list(ids), "names": list(names), "digests": list(digests)}
        )


SCHEMA_TABLE_SQL = "CREATE TABLE IF NOT EXISTS imagelist_schema (version integer NOT NULL)"
LOCK_SQL = "SELECT pg_advisory_xact_lock(%(key)s)"
VERSION_SQL = "SELECT coalesce(max(version), 0) FROM imagelist_schema"
SET_VERSION_SQL = "DELETE FROM imagelist_schema; INSERT INTO imagelist_schema VALUES (%(v)s)"
READ_ONLY_SQL = "SHOW transaction_read_only"

# Tags NULL (a PUT without tags) keeps the entry as it is, as the Go service
# did. The keys computed here are for the name in the request, so they
# replace the stored ones only when that is the stored name (which fixes a
# row another writer left without keys).
_INSERT = """
INSERT INTO images (id, name, norm_name, digest, keys_stale, tags, created_at, updated_at)
VALUES (%(id)s, %(name)s, %(norm_name)s, %(digest)s, false,
        coalesce(%(tags)s::text[], '{}'), now(), now())
"""
UPSERT_SQL = f"""{_INSERT}
ON CONFLICT (id) DO UPDATE SET
    tags = coalesce(%(tags)s::text[], images.tags),
    updated_at = CASE WHEN %(tags)s::text[] IS NULL THEN images.updated_at
                      ELSE greatest(now(), images.updated_at) END,
    norm_name = CASE WHEN images.name = EXCLUDED.name THEN EXCLUDED.norm_name
                     ELSE images.norm_name END,
    digest = CASE WHEN images.name = EXCLUDED.name THEN EXCLUDED.digest ELSE images.digest END,
    keys_stale = images.keys_stale AND images.name <> EXCLUDED.name
RETURNING {SELECT_COLUMNS}, (xmax = 0) AS created
"""
# Before a write's statements: who the audit trail names (the event trigger
# reads both, storage/migrations.py), for this transaction only.
WRITER_SQL = """
BEGIN;
SELECT set_config('imagelist.actor', %(actor)s, true),
       set_config('imagelist.request_id', %(request_id)s, true)
"""
# The oldest first, a bounded batch at a time; the one deleter the
# append-only guard lets through (imagelist.prune, this transaction only).
PRUNE_SQL = """
BEGIN;
SELECT set_config('imagelist.prune', 'on', true);
DELETE FROM image_events WHERE seq IN (
    SELECT seq FROM image_events WHERE at < %(before)s ORDER BY at LIMIT %(limit)s
);
"""
# A scoped writer creates only where no row is: a row another writer
# created since its check is not touched but locked (ON CONFLICT DO UPDATE
# locks the conflicting row even when its WHERE is false, waiting for its
# writer to commit), so it can be checked against the scope, and stays as
# checked until commit. Without the lock, another writer's create and
# delete could keep the row appearing and vanishing between a check and an
# insert, and the scoped write would never settle.
INSERT_OR_LOCK_SQL = f"""{_INSERT}
ON CONFLICT (id) DO UPDATE SET tags = images.tags WHERE false
RETURNING {SELECT_COLUMNS}
"""
# The stored name a scoped write is checked against, locked until commit.
GUARD_SQL = "SELECT name FROM images WHERE id = %(id)s FOR UPDATE"
# A batch of rows another writer left without keys; SKIP LOCKED so that
# instances sweeping at once share the work instead of repeating it.
STALE_KEYS_SQL = """
SELECT id, name FROM images WHERE keys_stale ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""
# Only where the name is still the one the keys were computed from.
SET_STALE_KEYS_SQL = """
UPDATE images SET norm_name = k.norm_name, digest = k.digest, keys_stale = false
FROM unnest(%(ids)s::text[], %(names)s::text[], %(norms)s::text[], %(digests)s::text[])
     AS k(id, name, norm_name, digest)
WHERE images.id = k.id AND images.name = k.name
"""
# For each reference, the entries that allow it, newest first: the newest
# (the decision) and, for a tag reference, every entry that could pin it
# (storage.pinning): the newest repo-digest id of each repository spelling
# (the id's text before '@'; one spelling normalizes one way), so a tag
# listed by thousands of old entries still returns a handful of rows.
MATCH_SQL = f"""
SELECT i, {SELECT_COLUMNS} FROM (
    SELECT q.i, images.*,
           row_number() OVER (PARTITION BY q.i ORDER BY images.updated_at DESC, images.id DESC)
               AS rank,
           q.digest IS NULL AND images.digest IS NOT NULL AND strpos(images.id, '@') > 0
               AS may_pin,
           row_number() OVER (PARTITION BY q.i, split_part(images.id, '@', 1)
                              ORDER BY images.updated_at DESC, images.id DESC)
               AS spelling_rank
    FROM unnest(%(idx)s::int[], %(names)s::text[], %(tags)s::text[], %(digests)s::text[])
         AS q(i, name, tag, digest)
    JOIN images ON images.norm_name = q.name
     AND CASE WHEN q.digest IS NOT NULL THEN images.digest = q.digest
              ELSE q.tag = ANY(images.tags) END
) AS matched
WHERE rank = 1 OR (may_pin AND spelling_rank = 1)
ORDER BY i, updated_at DESC, id DESC
"""

# Errors that mean "this connection or server is unusable right now".
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    psycopg2.errors.ReadOnlySqlTransaction,
    OSError,
    asyncio.TimeoutError,
)

# Of those, the ones a second attempt on a fresh connection cannot help.
_NOT_RETRIED = (psycopg2.errors.ReadOnlySqlTransaction, asyncio.TimeoutError)

# Server answers that no amount of waiting heals: wrong credentials, an
# unknown role or database, an sslmode the server cannot meet. Refused
# connections, timeouts and "too many clients" are outages: retried.
_PERMANENT = re.compile(
    r"authentication failed|no password supplied|no pg_hba\.conf entry"
    r'|role ".*" does not exist|database ".*" does not exist'
    r"|permission denied for database|does not support SSL",
)
_LIBPQ_PREFIX = re.compile(r"^connection to server (at|on socket) .*? failed: ")


def describe_connect_error(dsn: str, exc: BaseException) -> tuple[str, bool]:
    """One line naming the server (never the password) and its reason, and
    whether the error is permanent (configuration, not an outage)."""
    params = parse_dsn(dsn)
    where = f"{params.get('host') or 'local socket'}:{params.get('port') or 5432}"
    reason = _LIBPQ_PREFIX.sub("", " ".join(str(exc).split())) or type(exc).__name__
    if isinstance(exc, psycopg2.OperationalError) and _PERMANENT.search(reason):
        user, dbname = params.get("user", "(default)"), params.get("dbname", "(default)")
        return f"{where} refused user {user!r} on database {dbname!r}: {reason}", True
    return f"{where}: {reason}", False


def split_hosts(dsn: str, connect_timeout: float) -> tuple[list[str], bool]:
    """One single-host DSN per host of a (possibly multi-host) DSN, and
    whether the caller must insist on a writable server."""
    params: dict[str, str] = parse_dsn(dsn)
    want_rw = params.pop("target_session_attrs", "any") in ("read-write", "primary")
    params.setdefault("connect_timeout", str(max(1, int(connect_timeout))))
    # Names our connections in pg_stat_activity (and in the pool tests).
    params.setdefault("application_name", "imagelist")
    hosts = params.pop("host", "").split(",")
    ports = params.pop("port", "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        raise ValueError("the DSN lists a different number of hosts and ports")
    out = []
    for host, port in zip(hosts, ports, strict=True):
        single = dict(params)
        if host:
            single["host"] = host
        if port:
            single["port"] = port
        out.append(make_dsn(**single))
    return out, want_rw


def _query_canceled() -> bool:
    """Whether the CancelledError being handled is aiopg's stand-in for a
    QueryCanceled (statement_timeout) rather than a cancellation of the task."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


class PostgresStorage(Storage):
    kind = "postgres"
    statements = backend_statements(pyformat, entry_json="entry_json", match=MATCH_SQL)

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        timeout: float = 5.0,
        connect_timeout: float = 3.0,
        retry_interval: float = 1.0,
        observer: QueryObserver | None = None,
    ) -> None:
        self.observer = observer
        self._waits = 0
        self._hosts, self._want_rw = split_hosts(dsn, connect_timeout)
        self._pool_size = pool_size
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._pool: ConnectionPool | None = None
        self._pool_dsn = self._hosts[0]
        self._pool_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(pool_size)
        self._last_failure = 0.0
        self._last_error = "not connected yet"
        self._closed = False

    @property
    def timeout(self) -> float:
        """Seconds a query may take (--db-timeout)."""
        return self._timeout

    # -- connection management -------------------------------------------

    async def open(self) -> None:
        try:
            await self._get_pool()
        except StorageMisconfigured as exc:
            # Waiting cannot heal it: refuse to start (at run time it is a
            # 503 like any outage, and retried, as an admin may fix it).
            raise StorageError(str(exc)) from None
        except StorageUnavailable as exc:
            log.warning(
                "storage_unavailable",
                extra={"storage": self.kind, "error": str(exc), "effect": "retrying on use"},
            )
        except psycopg2.Error as exc:
            # Reached, but refused the schema (permission denied, ...): a
            # StorageError, which the daemon reports and exits on.
            raise StorageError(f"database error: {str(exc.pgerror or exc).strip()}") from exc

    async def close(self) -> None:
        self._closed = True
        await self._drop_pool(terminate=True)

    async def _drop_pool(self, terminate: bool = False) -> None:
        """Forget the pool: idle connections close now, used ones when
        their request ends (`terminate`: at once)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate() if terminate else pool.close()

    async def _get_pool(self) -> ConnectionPool:
        pool = self._pool  # (a local: another task may set it while this one waits)
        if pool is not None:
            return pool
        # Fail fast while the database is known to be down, instead of every
        # request queueing behind a fresh connection attempt.
        if time.monotonic() - self._last_failure < self._retry_interval:
            raise StorageUnavailable(self._last_error)
        async with self._pool_lock:
            if self._pool is not None:
                return self._pool
            if self._closed:
                raise StorageUnavailable("the store is closed")
            errors, permanent = [], False
            for dsn in self._hosts:
                try:
                    pool = await self._connect(dsn)
                except _CONNECTION_ERRORS as exc:
                    message, refused = describe_connect_error(dsn, exc)
                    errors.append(message)
                    permanent = permanent or refused
                    continue
                except asyncio.CancelledError:
                    # e.g. waiting for the migration lock another instance holds
                    if not _query_canceled():
                        raise
                    errors.append("statement timeout while connecting")
                    continue
                self._pool = pool
                self._pool_dsn = dsn
                return pool
            self._last_failure = time.monotonic()
            self._last_error = "database unavailable: " + "; ".join(errors)
            if permanent:
                raise StorageMisconfigured(self._last_error)
            raise StorageUnavailable(self._last_error)

    def _open(self, dsn: str, **extra: Any) -> Awaitable[Any]:
        return aiopg.connect(
            dsn,
            # The server's statement_timeout is the query bound: it leaves
            # the connection usable. aiopg's own timer is the backstop for a
            # server that stopped answering; were it to fire first (as it
            # did, at the same value), it would close the connection and the
            # slow query would be retried.
            timeout=self._timeout + CLIENT_TIMEOUT_MARGIN,
            enable_hstore=False,
            enable_json=False,
            enable_uuid=False,
            options=f"-c statement_timeout={int(self._timeout * 1000)} -c timezone=UTC",
            **extra,
        )

    async def connect_dedicated(self, application_name: str) -> aiopg.Connection:
        """A connection of its own, outside the pool (a LISTEN needs one that
        stays with its listener), to the server the pool uses, with the
        schema migrated. StorageUnavailable when there is none."""
        await self._get_pool()
        try:
            conn: aiopg.Connection = await self._open(
                self._pool_dsn, application_name=application_name
            )
            return conn
        except _CONNECTION_ERRORS as exc:
            raise StorageUnavailable(
                f"database unavailable: {str(exc).strip() or type(exc).__name__}"
            ) from exc

    async def _connect(self, dsn: str) -> ConnectionPool:
        pool = ConnectionPool(
            lambda: self._open(dsn),
            maxsize=self._pool_size,
            timeout=self._timeout,
            errors=_CONNECTION_ERRORS,
            retry_interval=self._retry_interval,
        )
        try:
            # Warm: opened up front and kept, so load never waits for a
            # connect; fewer than --db-pool-size is fine.
            await pool.fill()
            conn = await pool.acquire()
            try:
                if self._want_rw:
                    async with conn.cursor() as cur:
                        await cur.execute(READ_ONLY_SQL)
                        (read_only,) = await cur.fetchone()
                    if read_only == "on":
                        raise psycopg2.OperationalError("server is read-only")
                async with conn.cursor(timeout=MIGRATION_TIMEOUT) as cur:
                    await self._migrate(cur)
            finally:
                pool.release(conn)
        except BaseException:
            pool.terminate()
            raise
        return pool

    @staticmethod
    async def _migrate(cur: Any) -> None:
        """Bring the schema up to date: one transaction under one lock, so
        several instances starting at once migrate once, and a migration
        that fails changes nothing (and is logged as applied by none)."""
        started = time.monotonic()
        applied: list[int] = []
        adopted: int | None = None
        await cur.execute("BEGIN")
        try:
            await cur.execute(LOCK_SQL, {"key": MIGRATION_LOCK_KEY})
            # The audit trail's trigger is deferred to commit; a migration
            # that changes rows and then alters the table would find its
            # events still pending (which PostgreSQL refuses): they are
            # recorded as each statement ends instead. Numbering stays in
            # commit order: the trigger's lock is held until commit.
            await cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
            await cur.execute(SCHEMA_TABLE_SQL)
            await cur.execute(VERSION_SQL)
            (version,) = await cur.fetchone()
            if version < len(POSTGRES):
                # A migration rewrites every row: --db-timeout bounds queries,
                # not this (it would be cut off and retried for ever). The
                # lock wait above stays bounded.
                await cur.execute("SET LOCAL statement_timeout = 0")
            if version == 0 and (await legacy.inspect_table(cur)).kind != "none":
                # Not ours (ours comes with imagelist_schema): the Go
                # service's table, converted to what migration 1 creates.
                adopted = await legacy.adopt(cur)
            for number, migration in enumerate(POSTGRES[version:], start=version + 1):
                await cur.execute(migration.sql)
                if migration.recompute_keys:
                    await recompute_keys(cur)
                await cur.execute(SET_VERSION_SQL, {"v": number})
                applied.append(number)
            await cur.execute("COMMIT")
        except BaseException:
            if not cur.connection.closed:
                await cur.execute("ROLLBACK")
            raise
        for number in applied:
            log.info("schema_migrated", extra={"version": number})
        if adopted is not None:
            log.info(
                "legacy_schema_adopted",
                extra={"rows": adopted, "seconds": round(time.monotonic() - started, 3)},
            )

    async def migrate(self) -> None:
        try:
            await self._get_pool()
        except psycopg2.Error as exc:
            raise StorageError(f"database error: {str(exc.pgerror or exc).strip()}") from exc

    async def survey(self) -> legacy.Survey:
        async def op(cur: Any) -> legacy.Survey:
            await cur.execute("BEGIN")
            try:
                return await legacy.survey(cur, len(POSTGRES))
            finally:
                await cur.execute("ROLLBACK")

        return await self._run_unmigrated(op)

    async def _run_unmigrated(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run `op(cursor)` on a connection of its own, without migrating
        (the pool migrates on connect): for looking before migrating."""
        errors = []
        for dsn in self._hosts:
            try:
                async with (
                    aiopg.connect(dsn, timeout=MIGRATION_TIMEOUT, enable_hstore=False) as conn,
                    conn.cursor() as cur,
                ):
                    if self._want_rw:
                        await cur.execute(READ_ONLY_SQL)
                        if (await cur.fetchone())[0] == "on":
                            raise psycopg2.OperationalError("server is read-only")
                    return await op(cur)
            except _CONNECTION_ERRORS as exc:
                errors.append(str(exc).strip() or type(exc).__name__)
            except psycopg2.Error as exc:
                raise StorageError(f"database error: {str(exc.pgerror or exc).strip()}") from exc
        raise StorageUnavailable("database unavailable: " + "; ".join(errors))

    async def _run(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run `op(cursor)` on a pooled connection, first in first served."""
        # aiopg's pool hands a released connection to whichever task asks
        # next, not to the one that waited longest: under load some requests
        # starve for seconds. A FIFO semaphore of the pool's size queues them
        # fairly in front of it, so aiopg itself never has to wait.
        slots = self._slots
        if slots.locked():
            self._waits += 1
            try:
                await asyncio.wait_for(slots.acquire(), self._timeout)
            except TimeoutError:
                # Busy, not broken: keep the pool and its connections.
                raise StorageUnavailable(
                    f"database busy: no free connection within {self._timeout:g} s"
                ) from None
        else:
            await slots.acquire()
        try:
            return await self._run_on_pool(op)
        except asyncio.CancelledError:
            # aiopg raises CancelledError in place of QueryCanceled, i.e. when
            # the server's statement_timeout fired (a lock wait, a slow
            # query): that is a database that did not answer in time. A real
            # cancellation of this task (wait_for, shutdown) goes on as one.
            if not _query_canceled():
                raise
            raise StorageUnavailable(
                f"database did not answer within {self._timeout:g} s"
            ) from None
        finally:
            slots.release()

    async def _run_on_pool(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run `op(cursor)`; when its connection died (a restart,
        pg_terminate_backend), drop it and retry once on a fresh one: every
        operation here is idempotent. A query that timed out is not retried:
        the server did not answer within --db-timeout, and asking again
        (a frozen server accepts connections) would only double the wait."""
        for attempt in (1, 2):
            pool = await self._get_pool()
            try:
                conn = await pool.acquire(fresh=attempt == 2)
            except NoConnection as exc:
                # Busy, not broken: keep the pool and its connections.
                raise StorageUnavailable(f"database busy: {exc}") from None
            except _CONNECTION_ERRORS as exc:
                # Not one connection left and none to be had: an outage.
                await self._lost(pool, exc)
                raise AssertionError("unreachable") from exc
            try:
                async with conn.cursor() as cur:
                    result = await op(cur)
            except _CONNECTION_ERRORS as exc:
                pool.release(conn, discard=True)
                if attempt == 2 or isinstance(exc, _NOT_RETRIED):
                    await self._lost(pool, exc)
            except psycopg2.DataError as exc:
                pool.release(conn)
                raise Invalid(f"invalid request: {str(exc).strip()}") from exc
            except psycopg2.Error as exc:
                pool.release(conn)
                raise StorageError(f"database error: {exc.pgerror or exc}") from exc
            except BaseException:
                pool.release(conn)
                raise
            else:
                pool.release(conn)
                return result
        raise AssertionError("unreachable")

    async def _lost(self, pool: ConnectionPool, exc: BaseException) -> NoReturn:
        """A 503 for a connection error; the pool is dropped (and the host
        chosen again: a failover) only when it has no live connection left
        or reached a read-only server, never for one dead connection."""
        reason = str(exc).strip() or type(exc).__name__
        gone = pool.size == 0 or isinstance(exc, psycopg2.errors.ReadOnlySqlTransaction)
        if gone and pool is self._pool:
            await self._drop_pool()
            self._last_failure = time.monotonic()
            self._last_error = f"database unavailable: {reason}"
        raise StorageUnavailable(f"database unavailable: {reason}") from exc

    def pool_stats(self) -> PoolStats:
        pool = self._pool
        if pool is None:
            return PoolStats(size=0, in_use=0, max_size=self._pool_size, waits=self._waits)
        return PoolStats(
            size=pool.size,
            in_use=pool.size - pool.freesize,
            max_size=pool.maxsize or self._pool_size,
            waits=self._waits,
        )

    # -- the driver primitives ------------------------------------------------

    async def _fetch_all(self, sql: str, params: Mapping[str, object]) -> list[Row]:
        async def op(cur: Any) -> list[Row]:
            await cur.execute(sql, params)
            return list(await cur.fetchall())

        return await self._run(op)

    async def _fetch_one(self, sql: str, params: Mapping[str, object]) -> Row | None:
        async def op(cur: Any) -> Row | None:
            await cur.execute(sql, params)
            row: Row | None = await cur.fetchone()
            return row

        return await self._run(op)

    async def _execute(self, sql: str, params: Mapping[str, object]) -> None:
        async def op(cur: Any) -> None:
            await cur.execute(sql, params)

        await self._run(op)

    async def _write(self, writer: Writer, op: Callable[[Any, Writer], Awaitable[T]]) -> T:
        """Run `op(cursor, writer)` in one transaction, `writer` as its token
        stands once the connection is held. OutOfScope rolls it back; any
        other failure leaves the connection mid-transaction, and the pool
        closes such a connection rather than reuse it."""

        async def transaction(cur: Any) -> T:
            w = writer.now()
            await cur.execute(WRITER_SQL, {"actor": w.actor, "request_id": w.request_id or ""})
            try:
                result = await op(cur, w)
            except OutOfScope:
                await cur.execute("ROLLBACK")
                raise
            await cur.execute("COMMIT")
            return result

        return await self._run(transaction)

    async def _upsert(self, new: NewEntry, writer: Writer) -> tuple[Row, bool]:
        params = {**write_params(new), "tags": None if new.tags is None else list(new.tags)}

        async def upsert(cur: Any, writer: Writer) -> tuple[Row, bool]:
            if writer.may_write is not None:
                await cur.execute(GUARD_SQL, params)
                stored = await cur.fetchone()
                if stored is None:
                    if not writer.allows(new.name):
                        raise OutOfScope(writer.actor, new.name)
                    await cur.execute(INSERT_OR_LOCK_SQL, params)
                    created: Row | None = await cur.fetchone()
                    if created is not None:
                        return created, True
                    # Another writer created the id since the check: its row
                    # is locked now, and this statement's snapshot sees it.
                    await cur.execute(GUARD_SQL, params)
                    stored = await cur.fetchone()
                    if stored is None:  # cannot happen: the row is locked
                        raise StorageError("the entry vanished under a scoped write's lock")
                if not writer.allows(stored[0]):
                    raise OutOfScope(writer.actor, stored[0])
            await cur.execute(UPSERT_SQL, params)
            row: Row | None = await cur.fetchone()
            if row is None:  # RETURNING always returns the row
                raise StorageError("the upsert returned no row")
            # xmax is 0 in the row version an INSERT made, and the updating
            # transaction's id in one ON CONFLICT DO UPDATE made.
            return row[:-1], bool(row[-1])

        return await self._write(writer, upsert)

    async def _delete(self, entry_id: str, writer: Writer) -> bool:
        params = {"id": entry_id}

        async def delete(cur: Any, writer: Writer) -> bool:
            if writer.may_write is not None:
                await cur.execute(GUARD_SQL, params)
                stored = await cur.fetchone()
                if stored is None:
                    return False
                if not writer.allows(stored[0]):
                    raise OutOfScope(writer.actor, stored[0])
            await cur.execute(self.statements.delete, params)
            return bool(await cur.fetchall())

        return await self._write(writer, delete)

    def _to_event(self, row: Row) -> Event:
        return Event(
            seq=row[0],
            at=row[1].astimezone(dt.UTC),
            action=row[2],
            image_id=row[3],
            name=row[4],
            tags_before=None if row[5] is None else tuple(row[5]),
            tags_after=None if row[6] is None else tuple(row[6]),
            actor=row[7],
            request_id=row[8],
        )

    async def _prune_events(self, before: dt.datetime, limit: int) -> int:
        async def op(cur: Any) -> int:
            try:
                await cur.execute(PRUNE_SQL, {"before": before, "limit": limit})
                pruned = int(cur.rowcount)
                await cur.execute("COMMIT")
            except BaseException:
                if not cur.connection.closed:
                    await cur.execute("ROLLBACK")
                raise
            return pruned

        return await self._run(op)

    def _to_entry(self, row: Row) -> Entry:
        return Entry(
            id=row[0],
            name=row[1],
            tags=tuple(row[2] or ()),
            created_at=row[3].astimezone(dt.UTC),
            updated_at=row[4].astimezone(dt.UTC),
        )

    def _list_params(self, query: ListQuery) -> dict[str, object]:
        # Timestamps are compared as timestamptz, not as the cursor's integer.
        if query.sort in ("created_at", "updated_at"):
            return list_params(query, lambda v: from_micros(int(v)))
        return list_params(query)

    def _match_params(self, refs: Sequence[Reference]) -> dict[str, object]:
        return {
            "idx": list(range(len(refs))),
            "names": [r.name for r in refs],
            "tags": [r.tag for r in refs],
            "digests": [r.digest for r in refs],
        }

    async def compute_stale_keys(self, limit: int = KEYS_BATCH) -> int:
        async def op(cur: Any) -> int:
            await cur.execute("BEGIN")
            try:
                await cur.execute(STALE_KEYS_SQL, {"limit": limit})
                rows: list[tuple[str, str]] = list(await cur.fetchall())
                if rows:
                    keys = [reference_keys(name, entry_id) for entry_id, name in rows]
                    await cur.execute(KEYS_MARK_SQL)
                    await cur.execute(
                        SET_STALE_KEYS_SQL,
                        {
                            "ids": [entry_id for entry_id, _ in rows],
                            "names": [name for _, name in rows],
                            "norms": [norm for norm, _ in keys],
                            "digests": [digest for _, digest in keys],
                        },
                    )
                await cur.execute("COMMIT")
            except BaseException:
                if not cur.connection.closed:
                    await cur.execute("ROLLBACK")
                raise
            return len(rows)

        return await self._run(op)
