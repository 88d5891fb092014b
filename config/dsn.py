"""What the configuration needs to know about a database URL or DSN.

A PostgreSQL URL or key=value DSN is checked when the configuration is
loaded, so a typo stops start-up with one line naming the problem instead
of being retried for ever; messages never carry the password.
"""

from __future__ import annotations

import re

import psycopg2
from psycopg2.extensions import parse_dsn

from config.redact import Redactor

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# libpq quotes the part of the string it stumbled on: never echo it.
_QUOTED_INPUT = re.compile(r'(after|near) ".*?"( in connection info string)?')


class DsnError(ValueError):
    """An unusable database URL; the message is safe to print."""


def password_of(database_url: str) -> str | None:
    """The password a PostgreSQL URL or key=value DSN carries, if any."""
    if database_url.startswith("sqlite:"):
        return None
    try:
        return parse_dsn(database_url).get("password") or None
    except psycopg2.ProgrammingError:
        return None


def redacted(database_url: str) -> str:
    """The URL or DSN as it may be shown: without its password."""
    return Redactor([password_of(database_url) or ""]).text(database_url)


def check_postgres_dsn(dsn: str) -> None:
    """Raise DsnError for a URL/DSN no connection attempt could use."""
    scheme = _SCHEME.match(dsn)
    if scheme and scheme.group(1).lower() not in ("postgresql", "postgres"):
        raise DsnError(
            f"unsupported scheme {scheme.group(1)!r}: expected postgresql://... "
            "or a key=value DSN (PostgreSQL), or sqlite:///PATH"
        )
    try:
        params = parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0].removeprefix("invalid dsn: ")
        raise DsnError(
            f"not a valid PostgreSQL URL or DSN: {_QUOTED_INPUT.sub('', reason).strip()}"
        ) from None
    hosts = params.get("host", "").split(",")
    ports = params.get("port", "").split(",")
    if len(ports) not in (1, len(hosts)):
        raise DsnError(f"{len(hosts)} hosts but {len(ports)} ports: give one port, or one per host")
    for port in ports:
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise DsnError(f"port {port!r} is not a number from 1 to 65535")
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSLMODES:
        raise DsnError(f"sslmode {sslmode!r}: expected one of {', '.join(SSLMODES)}")
