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
