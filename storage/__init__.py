"""Storage: one interface (`Storage`), two backends (PostgreSQL, SQLite)."""

from __future__ import annotations

from storage.base import PoolStats, QueryObserver, Storage
from storage.errors import Invalid, NotFound, StorageError, StorageUnavailable
from storage.model import Entry, ListQuery, NewEntry, Position

__all__ = [
    "Entry",
    "Invalid",
    "ListQuery",
    "NewEntry",
    "NotFound",
    "PoolStats",
    "Position",
    "QueryObserver",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "create_storage",
]


def create_storage(
    database_url: str,
    *,
    pool_size: int = 10,
    timeout: float = 5.0,
    connect_timeout: float = 3.0,
    observer: QueryObserver | None = None,
) -> Storage:
    """The backend a database URL names: `sqlite:///path` or PostgreSQL."""
    if database_url.startswith("sqlite:"):
        from storage.sqlite import SqliteStorage

        return SqliteStorage(sqlite_path(database_url), observer=observer)
    from storage.postgres import PostgresStorage

    return PostgresStorage(
        database_url,
        pool_size=pool_size,
        timeout=timeout,
        connect_timeout=connect_timeout,
        observer=observer,
    )


def sqlite_path(url: str) -> str:
    """`sqlite:///rel/path` -> `rel/path`, `sqlite:////abs` -> `/abs`."""
    rest = url[len("sqlite:") :]
    if rest.startswith("///"):
        return rest[3:]
    if rest.startswith("//"):
        raise ValueError("a sqlite URL is sqlite:///relative/path or sqlite:////absolute/path")
    return rest
