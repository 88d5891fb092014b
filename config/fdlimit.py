"""The descriptor limit, and how many connections fit under it."""

from __future__ import annotations

import resource

# Descriptors kept free for everything but client connections: the
# listening sockets, stdio, the tokens-file watcher, TLS and tokens files,
# SQLite, the journal; the database pool is added on top.
RESERVED_FDS = 64
# Above this many, connections cost more memory than they are worth.
MAX_DEFAULT_CONNECTIONS = 10_000


def raise_nofile_limit() -> tuple[int, int, str | None]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's default
    soft limit is 1024). Returns (soft, hard, error): a sandbox may forbid
    setrlimit, and the daemon then runs with the limit it was given."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft, hard, None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        return soft, hard, str(exc)
    return hard, hard, None


def default_max_connections(fd_limit: int, db_pool_size: int) -> int:
    """Client connections that fit under `fd_limit` with headroom."""
    room = fd_limit - RESERVED_FDS - db_pool_size
    return max(1, min(MAX_DEFAULT_CONNECTIONS, room))
