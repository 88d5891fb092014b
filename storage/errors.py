"""Domain errors raised by every storage backend.

Handlers map these to HTTP in one place (handlers/base.py); nothing above the
storage layer ever sees a psycopg2 or sqlite3 exception.
"""


class StorageError(Exception):
    """Base class for storage failures."""


class NotFound(StorageError):
    """The requested image id does not exist."""


class Invalid(StorageError):
    """The request is well-formed JSON but not acceptable to the store."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or did not answer in time."""


class StorageMisconfigured(StorageUnavailable):
    """The server refused us for a reason waiting cannot heal (credentials,
    role, database name): fatal at start-up, an outage afterwards."""
