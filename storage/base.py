"""The one storage interface both backends implement."""

from __future__ import annotations

import abc
import datetime as dt
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson

from storage.errors import NotFound, OutOfScope
from storage.legacy import Survey
from storage.model import (
    ANONYMOUS,
    Entry,
    Event,
    EventQuery,
    JsonPage,
    ListQuery,
    NewEntry,
    Position,
    Writer,
    to_micros,
)
from storage.reference import Reference, normalize_name
from storage.sql import Statements, list_key, list_params

log = logging.getLogger("imagelist.storage")

T = TypeVar("T")

#: Entries whose reference keys one `compute_stale_keys` call computes at
#: most: bounds the time a sweep holds a connection (~50 ms per 1,000).
KEYS_BATCH = 1000
P = ParamSpec("P")
S = TypeVar("S", bound="Storage")

#: Told about every storage operation: (operation, seconds, ok). Metrics hang
#: off this so that storage stays free of prometheus and tornado.
QueryObserver = Callable[[str, float, bool], None]

#: Told about every audit event a write through this store committed: the
#: action. Writers outside imagelist (psql) record events it never sees.
EventListener = Callable[[str], None]

#: Audit events one `prune_events` statement deletes at most: bounds the
#: time a prune holds a connection and the rows it locks.
PRUNE_BATCH = 1000

#: Told about every write through a store once it is committed: the id, and
#: the entry as stored (None: deleted). The admission replica hangs off this.
ChangeListener = Callable[[str, Entry | None], None]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A backend's connection pool right now, in backend-neutral terms."""

    #: Connections open now.
    size: int
    #: Connections handed out to an operation now.
    in_use: int
    #: The most connections the pool will open.
    max_size: int
    #: Operations so far that had to wait because every connection was busy.
    waits: int


def observed(
    fn: Callable[Concatenate[S, P], Awaitable[T]],
) -> Callable[Concatenate[S, P], Awaitable[T]]:
    """Time a Storage method and report it to the store's observer. NotFound
    and OutOfScope are answers, not failures; every other exception counts
    as one."""
    operation = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        started = time.perf_counter()
        ok = False
        try:
            result = await fn(self, *args, **kwargs)
            ok = True
            return result
        except (NotFound, OutOfScope):
            ok = True
            raise
        finally:
            if self.observer is not None:
                self.observer(operation, time.perf_counter() - started, ok)

    return wrapper


Row = tuple[Any, ...]


class Storage(abc.ABC):
    """A store of entries. Every method raises only `storage.errors` types.

    The operations are written once here, over a few primitives each
    backend implements for its driver (`_fetch_all`, `_fetch_one`,
    `_execute`, `_upsert`, `_to_entry`) and its SQL (`statements`).
    """

    #: Short name for logs and metrics ("postgres" or "sqlite").
    kind: str = ""
    #: Optional callback told about every operation (see `observed`).
    observer: QueryObserver | None = None
    #: Optional callback told about every committed write (see ChangeListener).
    on_change: ChangeListener | None = None
    #: Optional callback told about every audit event written (EventListener).
    on_event: EventListener | None = None
    statements: Statements

    # -- lifecycle -----------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Prepare the store. A database that is down is not an error here:
        the daemon starts anyway and the store retries on use."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def migrate(self) -> None:
        """Bring the schema up to date now, or raise: unlike `open`, a
        database that is down is an error here (`imagelist --migrate`)."""
        await self.open()

    @abc.abstractmethod
    async def survey(self) -> Survey:
        """What migrating would find and do (`--migrate-dry-run`); changes nothing."""

    @abc.abstractmethod
    def pool_stats(self) -> PoolStats:
        """The connection pool now; cheap and synchronous (read at scrape time)."""

    # -- per-driver primitives ------------------------------------------------

    @abc.abstractmethod
    async def _fetch_all(self, sql: str, params: Mapping[str, object]) -> list[Row]: ...

    @abc.abstractmethod
    async def _fetch_one(self, sql: str, params: Mapping[str, object]) -> Row | None: ...

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Mapping[str, object]) -> None: ...

    @abc.abstractmethod
    async def _upsert(self, new: NewEntry, writer: Writer) -> tuple[Row, bool]:
        """Insert `new`, or set the tags of its existing id (`new.tags` None:
        keep the entry as it is); the stored row, and whether it was
        created. In one transaction, raise OutOfScope unless `writer` may
        write the stored name (or, creating, `new.name`), and record the
        audit event (created or updated) for `writer`."""

    @abc.abstractmethod
    async def _delete(self, entry_id: str, writer: Writer) -> bool:
        """Remove the id; whether it existed. In one transaction, raise
        OutOfScope unless `writer` may write the stored name, and record
        the audit event when the id existed."""

    @abc.abstractmethod
    def _to_event(self, row: Row) -> Event:
        """An event from the columns `storage.sql.EVENT_COLUMNS` names."""

    @abc.abstractmethod
    async def _prune_events(self, before: dt.datetime, limit: int) -> int:
        """Delete at most `limit` of the oldest events from before `before`
        in one statement; how many."""

    @abc.abstractmethod
    def _to_entry(self, row: Row) -> Entry:
        """An entry from the columns `storage.sql.SELECT_COLUMNS` names."""

    @abc.abstractmethod
    def _match_params(self, refs: Sequence[Reference]) -> dict[str, object]:
        """The references, as the backend's `statements.match` takes them."""

    def _list_params(self, query: ListQuery) -> dict[str, object]:
        """Bound parameters of a page query (a backend may convert the keyset value)."""
        return list_params(query)

    # -- the operations --------------------------------------------------------

    @observed
    async def ping(self) -> None:
        """Return when the database answers a query, else StorageUnavailable."""
        await self._fetch_one(self.statements.ping, {})

    @observed
    async def get(self, entry_id: str) -> Entry:
        row = await self._fetch_one(self.statements.get, {"id": entry_id})
        if row is None:
            raise NotFound(entry_id)
        return self._to_entry(row)

    @observed
    async def put(self, new: NewEntry, writer: Writer = ANONYMOUS) -> Entry:
        """Create, or update tags (only) of an existing id; return the stored
        row. `new.tags` None keeps an existing entry as it is (and creates
        one without tags), as the Go service did. OutOfScope when `writer`
        may not write the entry; then nothing is written."""
        row, created = await self._upsert(new, writer)
        stored = self._to_entry(row)
        warn_if_unmatchable(stored)
        if self.on_change is not None:
            self.on_change(stored.id, stored)
        if self.on_event is not None:
            self.on_event("created" if created else "updated")
        return stored

    @observed
    async def delete(self, entry_id: str, writer: Writer = ANONYMOUS) -> bool:
        """Remove the id; whether it existed (a missing id is not an error).
        OutOfScope when `writer` may not write the entry; then nothing is
        deleted."""
        deleted = await self._delete(entry_id, writer)
        if deleted and self.on_change is not None:
            self.on_change(entry_id, None)
        if deleted and self.on_event is not None:
            self.on_event("deleted")
        return deleted

    @observed
    async def events(self, query: EventQuery) -> list[Event]:
        """At most `query.limit` audit events, oldest first, with a sequence
        number greater than `query.after`, of `query.image_id` and
        `query.actor` when given."""
        sql = self.statements.events[(query.image_id is not None, query.actor is not None)]
        params = {
            "after": query.after,
            "limit": query.limit,
            "image_id": query.image_id,
            "actor": query.actor,
        }
        return [self._to_event(r) for r in await self._fetch_all(sql, params)]

    @observed
    async def prune_events(self, before: dt.datetime, limit: int = PRUNE_BATCH) -> int:
        """Delete at most `limit` audit events from before `before`, oldest
        first, in one short statement; how many (fewer than `limit`: done)."""
        return await self._prune_events(before, limit)

    @observed
    async def count(self) -> int:
        row = await self._fetch_one(self.statements.count, {})
        return int(row[0]) if row is not None else 0

    @observed
    async def list_page(self, query: ListQuery) -> list[Entry]:
        """At most `query.limit` entries in API order, strictly after `query.after`."""
        sql = self.statements.list[list_key(query)]
        return [self._to_entry(r) for r in await self._fetch_all(sql, self._list_params(query))]

    @observed
    async def list_json(self, query: ListQuery) -> JsonPage:
        """`list_page`, rendered by the database as the API's JSON objects."""
        sql = self.statements.list_json[list_key(query)]
        rows = await self._fetch_all(sql, self._list_params(query))
        return json_page(query.sort, [r[0] for r in rows])

    @observed
    async def match(self, refs: Sequence[Reference]) -> list[tuple[Entry, ...]]:
        """For each reference, the entries that allow it, newest first (by
        `updated_at`, then the greatest id, the same on both backends); ()
        when none does. One indexed query whatever the number of references.

        An entry allows `name:tag` when its normalized name is `name` and it
        lists `tag`; it allows `name@digest` when its normalized name is
        `name` and its id stands for `digest` (storage.reference.id_digest).

        Not every allowing entry comes back, only what decisions need: the
        first is the newest, the entry that decides; for a tag reference
        the rest include every entry storage.pinning.pin_digest could
        choose (the newest repo-digest id of each spelling of a repository).
        """
        found: list[list[Entry]] = [[] for _ in refs]
        if refs:
            # Rows come in answer order: by reference, newest first.
            for row in await self._fetch_all(self.statements.match, self._match_params(refs)):
                found[row[0]].append(self._to_entry(row[1:]))
        return [tuple(entries) for entries in found]

    async def compute_stale_keys(self, limit: int = KEYS_BATCH) -> int:
        """Compute the reference keys (storage.reference.reference_keys) of
        at most `limit` entries that another writer (SQL, the Go service)
        left without them; return how many. Until then such an entry allows
        nothing. Only PostgreSQL has other writers: the SQLite file is
        imagelist's alone, and its writes compute their keys."""
        return 0

    async def iter_json_pages(self, query: ListQuery) -> AsyncIterator[JsonPage]:
        """Every matching entry as JSON text, one bounded page at a time:
        what streaming the whole list is made of.

        Keyset paging rather than one long-lived server-side cursor: between
        pages no connection is held, so a slow reader cannot pin a pooled
        connection, and memory stays at one page whatever the table size.
        """
        after = query.after
        while True:
            page = await self.list_json(
                ListQuery(sort=query.sort, name=query.name, after=after, limit=query.limit)
            )
            if page.count:
                yield page
            if page.count < query.limit or page.last is None:
                return
            after = page.last


def json_page(sort: str, objects: list[str]) -> JsonPage:
    """A JsonPage from the database's JSON text of each entry; the keyset
    position is read back from the last one."""
    if not objects:
        return JsonPage(body=b"", count=0, last=None)
    last = orjson.loads(objects[-1])
    value: str | int = last[sort]
    if sort in ("created_at", "updated_at"):
        value = to_micros(dt.datetime.fromisoformat(last[sort]))
    return JsonPage(
        body=",".join(objects).encode(),
        count=len(objects),
        last=Position(sort=sort, value=value, id=last["id"]),
    )


def warn_if_unmatchable(entry: Entry) -> None:
    """Old clients may store any name; one that is not a repository name is
    kept, but it can never allow an image, which its owner should learn."""
    if normalize_name(entry.name) is None:
        log.warning(
            "unmatchable_entry",
            extra={
                "entry_id": entry.id,
                "entry_name": entry.name,
                "effect": "its name is not a repository name: it never allows an image",
            },
        )


def position_of(sort: str, entry: Entry) -> Position:
    """The keyset position just past `entry` in `sort` order."""
    return Position(sort=sort, value=entry.sort_value(sort), id=entry.id)
