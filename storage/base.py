"""The one storage interface both backends implement."""

from __future__ import annotations

import abc
import datetime as dt
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from storage.errors import NotFound
from storage.model import Image, JsonPage, ListQuery, NewImage, Position, to_micros
from storage.reference import ImageRef, normalize_name

log = logging.getLogger("imagelist.storage")

T = TypeVar("T")

#: Told about every storage operation: (operation, seconds, ok). Metrics hang
#: off this so that storage stays free of prometheus and tornado.
QueryObserver = Callable[[str, float, bool], None]


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


def observed(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Time a Storage method and report it to the store's observer. NotFound
    is an answer, not a failure; every other exception counts as one."""
    operation = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Storage, *args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        ok = False
        try:
            result = await fn(self, *args, **kwargs)
            ok = True
            return result
        except NotFound:
            ok = True
            raise
        finally:
            if self.observer is not None:
                self.observer(operation, time.perf_counter() - started, ok)

    return wrapper


class Storage(abc.ABC):
    """An image store. Every method raises only `storage.errors` types."""

    #: Short name for logs and metrics ("postgres" or "sqlite").
    kind: str = ""
    #: Optional callback told about every operation (see `observed`).
    observer: QueryObserver | None = None

    @abc.abstractmethod
    async def open(self) -> None:
        """Prepare the store. A database that is down is not an error here:
        the daemon starts anyway and the store retries on use."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the database answers a query, else StorageUnavailable."""

    @abc.abstractmethod
    async def get(self, image_id: str) -> Image: ...

    @abc.abstractmethod
    async def put(self, new: NewImage) -> Image:
        """Create, or update tags (only) of an existing id; return the stored row."""

    @abc.abstractmethod
    async def delete(self, image_id: str) -> None:
        """Remove the id; a missing id is not an error."""

    @abc.abstractmethod
    async def list_page(self, query: ListQuery) -> list[Image]:
        """At most `query.limit` entries in API order, strictly after `query.after`."""

    @abc.abstractmethod
    async def list_json(self, query: ListQuery) -> JsonPage:
        """`list_page`, rendered by the database as the API's JSON objects."""

    @abc.abstractmethod
    async def count(self) -> int: ...

    def pool_stats(self) -> PoolStats:
        """The connection pool now; cheap and synchronous (read at scrape time)."""
        return PoolStats(size=0, in_use=0, max_size=0, waits=0)

    @abc.abstractmethod
    async def match(self, refs: Sequence[ImageRef]) -> list[tuple[Image, ...]]:
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


def grouped_matches(count: int, rows: Iterable[tuple[int, Image]]) -> list[tuple[Image, ...]]:
    """`match`'s answer from (reference index, entry) rows in answer order."""
    found: list[list[Image]] = [[] for _ in range(count)]
    for i, image in rows:
        found[i].append(image)
    return [tuple(entries) for entries in found]


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


def warn_if_unmatchable(image: Image) -> None:
    """Old clients may store any name; one that is not a repository name is
    kept, but it can never allow an image, which its owner should learn."""
    if normalize_name(image.name) is None:
        log.warning(
            "entry %r has name %r, which is not a repository name: "
            "it will never match an admission decision",
            image.id,
            image.name,
        )


def position_of(sort: str, image: Image) -> Position:
    """The keyset position just past `image` in `sort` order."""
    return Position(sort=sort, value=image.sort_value(sort), id=image.id)
