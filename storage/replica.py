"""The admission replica: every entry's decision data in memory, kept live.

An admission decision is a dictionary lookup here instead of a database
round trip, and it keeps being answered while the database is away. A feed
per backend keeps the replica current (storage/replica_postgres.py follows
PostgreSQL's NOTIFY; storage/replica_sqlite.py checks SQLite's
`data_version`); `Replica.match` decides how far to trust it:

- current (the feed has proved it is caught up within the last moment): an
  entry the replica has allows; a reference it would deny is confirmed
  against the database first, so an entry written a millisecond ago through
  another instance is never refused because its notice is still in flight;
- not current, but current at most `max_age` seconds ago: the database
  decides while it answers; when it does not, the replica does (a listed
  image stays allowed, an unlisted one denied) instead of a 503;
- never loaded, or older than `max_age`: the database decides, and its
  failure is the caller's StorageUnavailable (503), as without a replica.

Only decisions use the replica. The REST API reads and writes the database.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from storage.errors import StorageError, StorageUnavailable
from storage.memory import release_free_memory
from storage.model import Entry, EntryView, from_micros, to_micros
from storage.reference import Reference, reference_keys

if TYPE_CHECKING:
    from storage.base import Storage

log = logging.getLogger("imagelist.replica")

#: Seconds a decision waits for the database to confirm a denial (or, while
#: the replica is not current, to decide) before the replica's answer stands.
CONFIRM_TIMEOUT = 1.0
#: After the database failed to answer a decision, seconds during which
#: decisions do not ask it again (the feed's reconnects probe it meanwhile).
UNREACHABLE_HOLD = 1.0

#: Local writes remembered for loads in flight (a load takes seconds at
#: most; this many writes through one instance in that time is plenty).
LOCAL_KEPT = 1000

#: What a feed reports to whoever counts (metrics): event name, amount.
ReplicaObserver = Callable[[str, float], None]


class ReplicaEntry:
    """An entry as the replica holds it: what a decision matches on (its
    normalized repository name, the digest its id stands for, its tags,
    when it was updated) and what an admission answer shows of it.

    A plain class with slots, timestamps as integer microseconds: 100,000 of
    these are held at once, and an Entry with two datetime objects costs
    about a third more. It satisfies storage.model.EntryView (the datetimes
    are made when asked for, which only an answer that shows it does)."""

    __slots__ = ("created_us", "digest", "id", "name", "norm_name", "tags", "updated_us")

    def __init__(
        self,
        entry_id: str,
        name: str,
        tags: tuple[str, ...],
        created_us: int,
        updated_us: int,
        norm_name: str | None,
        digest: str | None,
    ) -> None:
        self.id = entry_id
        self.name = name
        self.tags = tags
        self.created_us = created_us
        self.updated_us = updated_us
        self.norm_name = norm_name
        self.digest = digest

    @property
    def created_at(self) -> dt.datetime:
        return from_micros(self.created_us)

    @property
    def updated_at(self) -> dt.datetime:
        return from_micros(self.updated_us)

    def __repr__(self) -> str:
        return f"ReplicaEntry({self.id!r}, {self.name!r}, {self.tags!r}, {self.updated_us})"


def replica_entry(
    entry_id: str,
    name: str,
    tags: Iterable[str],
    created_us: int,
    updated_us: int,
    norm_name: str | None,
    digest: str | None,
    shared: dict[str, str] | None = None,
) -> ReplicaEntry:
    """An entry from its stored columns. A writer that does not compute the
    reference keys (the old Go service, psql) leaves them NULL: they are
    computed here, as storage computes them on write.

    `shared` (one per load) keeps each repeated name and tag text once: a
    large list is mostly the same repositories and tags."""
    if shared is not None:
        name = shared.setdefault(name, name)
        kept = tuple([shared.setdefault(tag, tag) for tag in tags])
        if norm_name is not None:
            norm_name = shared.setdefault(norm_name, norm_name)
    else:
        kept = tuple(tags)
    if norm_name is None:
        norm_name, digest = reference_keys(name, entry_id)
    # The same value twice is kept once: usually the name is already
    # normalized, and a `sha256:...` id is its own digest.
    if norm_name == name:
        norm_name = name
    if digest == entry_id:
        digest = entry_id
    if created_us == updated_us:  # never updated: one int object
        created_us = updated_us
    return ReplicaEntry(entry_id, name, kept, created_us, updated_us, norm_name, digest)


def entry_of(entry: Entry) -> ReplicaEntry:
    """The replica's entry for an entry just written through this instance."""
    return replica_entry(
        entry.id,
        entry.name,
        entry.tags,
        to_micros(entry.created_at),
        to_micros(entry.updated_at),
        None,
        None,
    )


class LoadClock:
    """Wall and CPU seconds of one full load, from its first query to the
    swap. CPU is the process's (every thread: SQLite reads on its own), so
    requests served during the load count too; on an idle daemon it is the
    load's."""

    __slots__ = ("_cpu", "_wall")

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def seconds(self) -> float:
        return time.perf_counter() - self._wall

    def cpu_seconds(self) -> float:
        return time.process_time() - self._cpu


_Key = tuple[str, str]
#: One entry, or several in match order. One is the rule, and a 1-tuple per
#: key would cost a fifth of the replica's memory.
_Found = ReplicaEntry | tuple[ReplicaEntry, ...]

#: A repository with more entries than this gets its tags and digests
#: indexed; a smaller one is scanned (the index costs more memory than the
#: entries themselves, and most repositories have a handful).
SCAN_AT_MOST = 16


def _order(entry: ReplicaEntry) -> tuple[int, str]:
    return (entry.updated_us, entry.id)


def _allows(entry: ReplicaEntry, ref: Reference) -> bool:
    if ref.digest is not None:
        return entry.digest == ref.digest
    return ref.tag in entry.tags


def _members(found: _Found) -> tuple[ReplicaEntry, ...]:
    return found if isinstance(found, tuple) else (found,)


def _packed(entries: Sequence[ReplicaEntry]) -> _Found | None:
    if len(entries) > 1:
        return tuple(entries)
    return entries[0] if entries else None


class IndexBuilder:
    """A new index, built off to the side from one snapshot's rows, page by
    page, while the current one keeps answering; `build` hands it over
    whole for the replica to swap in at once. Each repeated name and tag is
    kept once (one `shared` per load)."""

    __slots__ = ("_entries", "shared")

    def __init__(self) -> None:
        self._entries: dict[str, ReplicaEntry] = {}
        self.shared: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: ReplicaEntry) -> None:
        """One row of the snapshot (a repeated id: the later row wins)."""
        self._entries[entry.id] = entry

    def build(self) -> ReplicaIndex:
        index = ReplicaIndex()
        index._entries = self._entries
        self._entries = {}
        self.shared = {}  # only a load needs it
        # Grouped by repository in the index's own dictionary: most have one
        # entry (kept as is, no list); lists become tuples in match order.
        groups: dict[str, Any] = index._by_name
        for entry in index._entries.values():
            name = entry.norm_name
            if name is None:  # never allows anything
                continue
            present = groups.get(name)
            if present is None:
                groups[name] = entry
            elif isinstance(present, list):
                present.append(entry)
            else:
                groups[name] = [present, entry]
        for name, found in groups.items():
            if isinstance(found, list):
                found.sort(key=_order, reverse=True)
                members = groups[name] = tuple(found)  # same keys: no resize
                if len(members) > SCAN_AT_MOST:
                    for entry in members:
                        index._index(entry)
        return index


class ReplicaIndex:
    """Entries by id, and by normalized repository name in match order
    (most recently updated first, then greatest id: the order the
    database's match query ranks them in); a repository with many entries
    also by (repository, tag) and (repository, digest)."""

    __slots__ = ("_by_digest", "_by_name", "_by_tag", "_entries")

    def __init__(self) -> None:
        """An empty index; IndexBuilder makes a filled one."""
        self._entries: dict[str, ReplicaEntry] = {}
        self._by_name: dict[str, _Found] = {}
        self._by_tag: dict[_Key, _Found] = {}
        self._by_digest: dict[_Key, _Found] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[ReplicaEntry]:
        return list(self._entries.values())

    def get(self, entry_id: str) -> ReplicaEntry | None:
        return self._entries.get(entry_id)

    def find(self, ref: Reference) -> ReplicaEntry | None:
        """The entry the database's match query would return for `ref`."""
        found = self.allowing(ref)
        return found[0] if found else None

    def allowing(self, ref: Reference) -> tuple[ReplicaEntry, ...]:
        """Every entry allowing `ref`, in match order."""
        group = self._by_name.get(ref.name)
        if group is None:
            return ()
        if not isinstance(group, tuple):
            return (group,) if _allows(group, ref) else ()
        if len(group) <= SCAN_AT_MOST:
            return tuple([entry for entry in group if _allows(entry, ref)])
        if ref.digest is not None:
            found = self._by_digest.get((ref.name, ref.digest))
        else:
            found = self._by_tag.get((ref.name, ref.tag or ""))
        return () if found is None else _members(found)

    def put(self, entry: ReplicaEntry) -> None:
        if entry.id in self._entries:
            self.remove(entry.id)
        self._entries[entry.id] = entry
        name = entry.norm_name
        if name is None:
            return
        group = self._by_name.get(name)
        if group is None:
            self._by_name[name] = entry
            return
        members = _insert(_members(group), entry)
        self._by_name[name] = members
        if len(members) == SCAN_AT_MOST + 1:
            for member in members:
                self._index(member)
        elif len(members) > SCAN_AT_MOST:
            self._index(entry)

    def remove(self, entry_id: str) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None or entry.norm_name is None:
            return
        name = entry.norm_name
        members = _members(self._by_name[name])
        kept = [member for member in members if member.id != entry_id]
        if len(members) > SCAN_AT_MOST:
            for member in members if len(kept) == SCAN_AT_MOST else (entry,):
                self._unindex(member)
        packed = _packed(kept)
        if packed is None:
            del self._by_name[name]
        else:
            self._by_name[name] = packed

    def _index(self, entry: ReplicaEntry) -> None:
        name = entry.norm_name
        assert name is not None
        if entry.digest is not None:
            _add(self._by_digest, (name, entry.digest), entry)
        for tag in entry.tags:
            _add(self._by_tag, (name, tag), entry)

    def _unindex(self, entry: ReplicaEntry) -> None:
        name = entry.norm_name
        assert name is not None
        if entry.digest is not None:
            _discard(self._by_digest, (name, entry.digest), entry.id)
        for tag in entry.tags:
            _discard(self._by_tag, (name, tag), entry.id)


def _insert(members: tuple[ReplicaEntry, ...], entry: ReplicaEntry) -> tuple[ReplicaEntry, ...]:
    """`members` with `entry` in its place in match order."""
    key = _order(entry)
    at = 0
    while at < len(members) and _order(members[at]) > key:
        at += 1
    return (*members[:at], entry, *members[at:])


def _add(index: dict[_Key, _Found], key: _Key, entry: ReplicaEntry) -> None:
    present = index.get(key)
    index[key] = entry if present is None else _insert(_members(present), entry)


def _discard(index: dict[_Key, _Found], key: _Key, entry_id: str) -> None:
    present = index.get(key)
    if present is None:
        return
    packed = _packed([entry for entry in _members(present) if entry.id != entry_id])
    if packed is None:
        del index[key]
    else:
        index[key] = packed


class ReplicaFeed(abc.ABC):
    """Keeps a Replica current from one backend."""

    #: True when a replica that `refresh` reports current is exactly the
    #: table: a denial then needs no confirmation.
    exact = False

    @abc.abstractmethod
    async def start(self, replica: Replica) -> None:
        """Begin filling `replica`; never waits for the database."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def refresh(self) -> None:  # noqa: B027 - most feeds push instead
        """Called before each decision; bring the replica up to date if the
        backend can tell cheaply that it is not."""

    @abc.abstractmethod
    def refetch(self, entry_id: str) -> None:
        """Re-read `entry_id` from the database soon (after a local write)."""


class Replica:
    """The index plus what is known about its freshness; see the module doc."""

    def __init__(
        self,
        storage: Storage,
        feed: ReplicaFeed,
        *,
        max_age: float,
        current_window: float,
        observer: ReplicaObserver | None = None,
    ) -> None:
        self.storage = storage
        self.feed = feed
        self.max_age = max_age
        #: How long a proof of currency lasts (the feed proves it at least
        #: this often while it is connected).
        self.current_window = current_window
        self.observer = observer
        self.index = ReplicaIndex()
        self.loaded = False
        #: Whether the feed is connected and following changes.
        self.following = False
        self._current_at: float | None = None  # monotonic
        self._unsynced_since: float | None = None  # wall clock, for logs
        self._expired_logged = False
        self._unreachable_until = 0.0
        # This instance's own writes, numbered, for a full load to re-apply
        # those its snapshot may predate (they are re-read afterwards too).
        self._local_seq = 0
        self._local: collections.deque[tuple[int, str, ReplicaEntry | None]] = collections.deque(
            maxlen=LOCAL_KEPT
        )

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        self.storage.on_change = self.changed_locally
        await self.feed.start(self)

    async def close(self) -> None:
        self.storage.on_change = None
        await self.feed.close()

    # -- what feeds tell the replica ------------------------------------------

    def load_mark(self) -> int:
        """Taken by a feed as a full load begins; hand it to `replace`."""
        return self._local_seq

    def replace(self, built: IndexBuilder, clock: LoadClock, proven_at: float, mark: int) -> None:
        """A full load: swap the whole index at once, then count it current
        as of `proven_at` (monotonic; taken before the load began). This
        instance's writes since `mark` are applied over the snapshot, so a
        response already sent is never contradicted by a load in flight."""
        index = built.build()
        for seq, entry_id, entry in self._local:
            if seq > mark:
                if entry is None:
                    index.remove(entry_id)
                else:
                    index.put(entry)
        self.index = index  # the old one goes now, whole
        release_free_memory()
        first = not self.loaded
        self.loaded = True
        self._count("reload", 1)
        log.info(
            "replica_loaded",
            extra={
                "entries": len(index),
                "seconds": round(clock.seconds(), 3),
                "cpu_seconds": round(clock.cpu_seconds(), 3),
                "first": first,
            },
        )
        self.mark_current(proven_at)

    def apply(self, entry_id: str, entry: ReplicaEntry | None) -> None:
        """One entry as it is now in the table (None: it is gone)."""
        if entry is None:
            self.index.remove(entry_id)
        else:
            self.index.put(entry)
        self._count("change", 1)

    def mark_current(self, proven_at: float) -> None:
        """Every change committed before `proven_at` (monotonic) is applied."""
        if not self.loaded:
            return
        if self._current_at is None or proven_at > self._current_at:
            self._current_at = proven_at
        if self._unsynced_since is not None:
            log.info(
                "replica_synced",
                extra={
                    "entries": len(self.index),
                    "unsynced_seconds": round(time.time() - self._unsynced_since, 3),
                },
            )
            self._unsynced_since = None
        self._expired_logged = False
        self._unreachable_until = 0.0

    def mark_unsynced(self, reason: str) -> None:
        """The feed lost track (connection lost, database down)."""
        self.following = False
        if self._unsynced_since is None and self.loaded:
            self._unsynced_since = time.time()
            log.warning(
                "replica_unsynced",
                extra={"reason": reason, "age_seconds": round(self.age() or 0.0, 3)},
            )

    def mark_unreachable(self) -> None:
        """The database cannot be reached: decisions should not wait on it."""
        self._unreachable_until = time.monotonic() + UNREACHABLE_HOLD

    def changed_locally(self, entry_id: str, entry: Entry | None) -> None:
        """A write through this instance's store, applied before its response
        goes out. The feed re-reads the id after, because a notice of a later
        write by someone else may have been applied already."""
        local = None if entry is None else entry_of(entry)
        if local is None:
            self.index.remove(entry_id)
        else:
            self.index.put(local)
        self._local_seq += 1
        self._local.append((self._local_seq, entry_id, local))
        self.feed.refetch(entry_id)

    # -- state --------------------------------------------------------------------

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the replica was last known current (None: never)."""
        if self._current_at is None:
            return None
        return (time.monotonic() if now is None else now) - self._current_at

    def current(self, now: float | None = None) -> bool:
        age = self.age(now)
        return self.following and age is not None and age <= self.current_window

    def usable(self, now: float | None = None) -> bool:
        """Whether decisions may fall back on the replica's own answer."""
        age = self.age(now)
        return age is not None and age <= self.max_age

    # -- decisions ----------------------------------------------------------------

    async def match(self, refs: Sequence[Reference]) -> Sequence[tuple[EntryView, ...]]:
        """`Storage.match`, answered from the replica where it may be."""
        with contextlib.suppress(StorageError):
            # Failing, it leaves the replica not current: see below.
            await self.feed.refresh()
        now = time.monotonic()
        found: list[tuple[EntryView, ...]] = [self.index.allowing(ref) for ref in refs]
        if self.current(now):
            if self.feed.exact or all(found):
                return found
            return await self._confirm(refs, found)
        if not self.usable(now):
            if self.loaded:
                self._note_expired()
            return await self.storage.match(refs)
        # Not known current: the database decides while it answers.
        if now < self._unreachable_until:
            self._count("fallback", 1)
            return found
        answer = await self._ask(refs)
        if answer is None:
            self._count("fallback", 1)
            return found
        return answer

    async def _confirm(
        self, refs: Sequence[Reference], found: list[tuple[EntryView, ...]]
    ) -> list[tuple[EntryView, ...]]:
        missing = [i for i, allowing in enumerate(found) if not allowing]
        if time.monotonic() < self._unreachable_until:
            self._count("confirm_unavailable", 1)
            return found
        answer = await self._ask([refs[i] for i in missing])
        if answer is None:
            self._count("confirm_unavailable", 1)
            return found
        for i, allowing in zip(missing, answer, strict=True):
            if allowing:
                # Written elsewhere, its notice not applied yet.
                found[i] = allowing
                self._count("confirm_allowed", 1)
            else:
                self._count("confirm_denied", 1)
        return found

    async def _ask(self, refs: Sequence[Reference]) -> list[tuple[Entry, ...]] | None:
        """The database's answer within CONFIRM_TIMEOUT, or None. A query
        that overruns is left to finish on its own bounds rather than
        cancelled: cancelling an aiopg query closes its connection."""
        task = asyncio.ensure_future(self.storage.match(refs))
        try:
            return await asyncio.wait_for(asyncio.shield(task), CONFIRM_TIMEOUT)
        except (TimeoutError, StorageUnavailable):
            task.add_done_callback(_consume)
            self.mark_unreachable()
            return None

    def _note_expired(self) -> None:
        if not self._expired_logged:
            self._expired_logged = True
            log.error(
                "replica_max_age_exceeded",
                extra={"age_seconds": round(self.age() or 0.0, 3), "max_age": self.max_age},
            )

    def _count(self, event: str, amount: float) -> None:
        if self.observer is not None:
            self.observer(event, amount)


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve a left-behind query's outcome so asyncio does not log it."""
    if not task.cancelled():
        task.exception()
