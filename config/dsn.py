"""What the configuration needs to know about a database URL or DSN."""

from __future__ import annotations

import psycopg2
from psycopg2.extensions import parse_dsn


def password_of(database_url: str) -> str | None:
    """The password a PostgreSQL URL or key=value DSN carries, if any."""
    if database_url.startswith("sqlite:"):
        return None
    try:
        return parse_dsn(database_url).get("password") or None
    except psycopg2.ProgrammingError:
        return None
