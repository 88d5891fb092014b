"""Value types shared by the storage interface and its callers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from storage.errors import Revoked

# The API's sort keys mapped to the column they order by. Everything that
# builds SQL looks the key up here, so only these names ever reach a query.
SORT_KEYS: tuple[str, ...] = ("updated_at", "created_at", "name", "id")
DEFAULT_SORT = "updated_at"


@dataclass(frozen=True, slots=True)
class NewEntry:
    id: str
    name: str
    #: None (no `tags` in the request) keeps an existing entry's tags.
    tags: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Writer:
    """Who asks for a write: named in the audit trail, and limited to the
    entries it may touch."""

    #: The token's name; "anonymous" when authentication is off.
    actor: str = "anonymous"
    request_id: str | None = None
    #: Whether this writer may write an entry of that name (checked against
    #: the stored name inside the write's transaction); None: any entry.
    may_write: Callable[[str], bool] | None = None
    #: This writer as the token set in force now sees it, None when its token
    #: no longer writes; storage asks once it holds the write's transaction
    #: (after any wait for a connection), so a revocation or a narrowed scope
    #: that came during the wait applies. None: nothing to ask.
    current: Callable[[], Writer | None] | None = None

    def allows(self, name: str) -> bool:
        return self.may_write is None or self.may_write(name)

    def now(self) -> Writer:
        """The writer to check and record; raises Revoked if its token no
        longer writes."""
        if self.current is None:
            return self
        fresh = self.current()
        if fresh is None:
            raise Revoked(self.actor)
        return fresh


#: A write made by imagelist itself or a test, with no token behind it.
ANONYMOUS = Writer()

#: The longest actor the audit trail names: a token's name is at most this
#: long (a PostgreSQL role name is shorter), so `GET /events?actor=` can ask
#: for every one.
MAX_ACTOR_LEN = 255


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    name: str
    tags: tuple[str, ...]
    created_at: dt.datetime
    updated_at: dt.datetime

    def sort_value(self, sort: str) -> str | int:
        """The value this entry has for `sort`, as it appears in a cursor."""
        if sort == "id":
            return self.id
        if sort == "name":
            return self.name
        return to_micros(getattr(self, sort))


class EntryView(Protocol):
    """What deciding on an entry and showing it in an answer read of it: an
    Entry has it, and so has the admission replica's compact entry
    (storage.replica.ReplicaEntry), which keeps no more than that."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def tags(self) -> tuple[str, ...]: ...

    @property
    def created_at(self) -> dt.datetime: ...

    @property
    def updated_at(self) -> dt.datetime: ...


@dataclass(frozen=True, slots=True)
class Position:
    """Keyset position: the last entry a page ended on (exclusive)."""

    sort: str
    value: str | int
    id: str


@dataclass(frozen=True, slots=True)
class ListQuery:
    sort: str = DEFAULT_SORT
    name: str | None = None
    after: Position | None = None
    limit: int = 500


#: What an event says happened to an entry.
ACTIONS: tuple[str, ...] = ("created", "updated", "deleted")


@dataclass(frozen=True, slots=True)
class Event:
    """One change to an entry in the audit trail."""

    #: Increases with commit order: a reader paging by seq misses nothing.
    seq: int
    at: dt.datetime
    action: str
    image_id: str
    name: str
    #: None when created / deleted.
    tags_before: tuple[str, ...] | None
    tags_after: tuple[str, ...] | None
    #: The token's name, "anonymous", or the database role of an SQL writer.
    actor: str
    request_id: str | None


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Events oldest first, strictly after `after`, optionally filtered."""

    after: int = 0
    limit: int = 100
    image_id: str | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class JsonPage:
    """A page of entries already rendered as the API's JSON objects."""

    #: The objects, comma-separated, without the enclosing brackets.
    body: bytes
    count: int
    #: The keyset position just past the last entry (None when empty).
    last: Position | None


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_micros(ts: dt.datetime) -> int:
    delta = ts - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


def format_timestamp(ts: dt.datetime) -> str:
    """RFC 3339, UTC, always six fractional digits, `Z` suffix, as the API shows them."""
    # isoformat is several times faster than strftime; two per entry add up
    # in a list of thousands.
    if ts.tzinfo is not dt.UTC:
        ts = ts.astimezone(dt.UTC)
    return ts.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
