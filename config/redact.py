"""Credential scrubbing for every log line, whichever logger wrote it.

Secrets reach log text by routes we do not control: Tornado logs a
malformed header's value (`Invalid header value 'Bearer <token>\\r'`),
libpq and psycopg2 quote DSNs in their errors, exceptions carry URLs. So
the logging pipeline scrubs every string field, including rendered
tracebacks, by pattern and by the literal secrets it was given (the
database password).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

REDACTED = "[redacted]"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Tornado quotes any malformed header's value: it may be a cookie or a
    # credential of any scheme, so none of it is kept.
    (re.compile(r"(Invalid header value ).*", re.DOTALL), r"\1" + REDACTED),
    # A bearer token, wherever it appears (also after an escaped control
    # character, as a repr writes it).
    (re.compile(r"\b(Bearer)(?:\s|\\[rntvf]|\\x[0-9a-f]{2})+\S+", re.I), r"\1 " + REDACTED),
    # An Authorization header written out (a dict repr, a raw request).
    (
        re.compile(r"(authorization['\"]?\s*[:=]\s*['\"]?)[^'\",}\r\n]+", re.I),
        r"\1" + REDACTED,
    ),
    # libpq key=value DSNs and URLs.
    (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.I), r"\1" + REDACTED),
    (re.compile(r"(\w+://[^:/@\s]*:)[^@\s]+@"), r"\1" + REDACTED + "@"),
]
# One cheap test before the substitutions: almost no line needs them.
_TRIGGER = re.compile(r"header value|bearer|authorization|password|://", re.I)


class Redactor:
    """Scrubs credentials out of strings and structlog event dicts."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        if _TRIGGER.search(value):
            for pattern, replacement in _PATTERNS:
                value = pattern.sub(replacement, value)
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def value(self, value: Any) -> Any:
        """`value` with every string in it scrubbed (dicts and lists walked)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor; runs after exceptions are rendered."""
        for key, val in event_dict.items():
            event_dict[key] = self.value(val)
        return event_dict

    def rendered(self, _logger: Any, _method: str, line: Any) -> Any:
        """A structlog processor after the renderer: scrubs the line's text."""
        return self.text(line) if isinstance(line, str) else line
