"""Validation of request input, independent of HTTP (table-tested): bad input
raises the domain error `Invalid`, which handlers answer with a 400.

Rules (README, "API"): ids are printable, no whitespace, 1-255 chars; names are
printable, 1-255 chars; tags are strings like ids, order kept, duplicates
dropped. "Printable" excludes NUL and other control characters, line
separators and lone surrogates (which neither backend stores faithfully).
The patterns are regular expressions so openapi.yaml can state exactly
the same rule (the fuzz tests check that the two agree).
"""

from __future__ import annotations

import re
from typing import Any

from storage.errors import Invalid
from storage.model import NewEntry

MAX_LEN = 255
MAX_TAGS = 1000
# Kept in sync with openapi.yaml (components.schemas.Id / Name).
ID_PATTERN = r"^[^\s\x00-\x1f\x7f-\x9f]+$"
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"
_ID = re.compile(ID_PATTERN)
_NAME = re.compile(NAME_PATTERN)


def _check_string(field: str, value: Any, *, spaces: bool) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{field} must be a string", {"field": field})
    if not value:
        raise Invalid(f"{field} must not be empty", {"field": field})
    if len(value) > MAX_LEN:
        raise Invalid(f"{field} is longer than {MAX_LEN} characters", {"field": field})
    # Lone surrogates cannot arrive in valid JSON or UTF-8; refuse them here
    # too, so a caller bypassing the parsers cannot store one.
    if not (_NAME if spaces else _ID).fullmatch(value) or not _encodable(value):
        what = "non-printable" if spaces else "non-printable or whitespace"
        raise Invalid(f"{field} contains {what} characters", {"field": field})
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_id(value: Any, field: str = "id") -> str:
    return _check_string(field, value, spaces=False)


# The longest key PostgreSQL's primary-key index takes, in bytes: no stored
# id is longer, whoever wrote it.
MAX_STORED_ID_BYTES = 2704


def lookup_id(value: str) -> str | None:
    """An id to read or delete: any id that can be stored, whatever wrote it.
    The Go service and SQL writers accepted ids today's rules refuse (one
    with a space, say); the rules apply to creating an id, not to finding
    it. None when no stored id can be `value` (a NUL: no backend keeps one);
    Invalid when it is longer than any stored id can be."""
    if len(value.encode("utf-8", "surrogatepass")) > MAX_STORED_ID_BYTES:
        raise Invalid("id is longer than any stored id can be", {"field": "id"})
    return None if "\x00" in value else value


def check_name(value: Any, field: str = "name") -> str:
    return _check_string(field, value, spaces=True)


def check_tags(value: Any) -> tuple[str, ...] | None:
    """None when absent or null: an existing entry keeps its tags (as the Go
    service did); `[]` clears them."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise Invalid("tags must be an array of strings", {"field": "tags"})
    if len(value) > MAX_TAGS:
        raise Invalid(f"tags has more than {MAX_TAGS} entries", {"field": "tags"})
    seen: dict[str, None] = {}
    for i, tag in enumerate(value):
        seen.setdefault(_check_string(f"tags[{i}]", tag, spaces=False), None)
    return tuple(seen)


def parse_entry(body: Any) -> NewEntry:
    """A PUT /images body -> NewEntry. Unknown fields are ignored, as the
    old service ignored them (and the server-set timestamps)."""
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object with id, name and tags")
    for required in ("id", "name"):
        if required not in body:
            raise Invalid(f"{required} is required", {"field": required})
    return NewEntry(
        id=check_id(body["id"]), name=check_name(body["name"]), tags=check_tags(body.get("tags"))
    )
