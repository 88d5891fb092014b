"""Domain errors: raised by every storage backend, and by request
validation (`Invalid`). handlers/errors.py maps them to HTTP, the one place
that does; nothing above the storage layer ever sees a psycopg2 or sqlite3
exception.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class for storage failures."""


class NotFound(StorageError):
    """The requested entry id does not exist."""


class Invalid(StorageError):
    """Input that cannot be stored: the message says why, for the client;
    `details` names the field or parameter."""

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.details = details


class StorageUnavailable(StorageError):
    """The database cannot be reached or did not answer in time."""


class StorageMisconfigured(StorageUnavailable):
    """The server refused us for a reason waiting cannot heal (credentials,
    role, database name): fatal at start-up, an outage afterwards."""


class Revoked(StorageError):
    """The writer's token was revoked or disabled after its request was
    authorized and before its write began; nothing was written."""

    def __init__(self, actor: str) -> None:
        super().__init__(f"token {actor!r} no longer writes")
        self.actor = actor


class OutOfScope(StorageError):
    """The writer may not write an entry of this name (a scoped token);
    nothing was written."""

    def __init__(self, actor: str, name: str) -> None:
        super().__init__(f"token {actor!r} may not write {name!r}")
        self.actor = actor
        self.name = name
