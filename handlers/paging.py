"""Opaque paging cursors for `GET /images?limit=...&cursor=...`."""

from __future__ import annotations

import base64
import binascii
import datetime as dt

import orjson

from handlers.errors import ApiError
from storage.model import SORT_KEYS, Position, to_micros

MAX_LIMIT = 1000
# A timestamp cursor must name a datetime both backends can represent.
_MIN_MICROS = to_micros(dt.datetime.min.replace(tzinfo=dt.UTC))
_MAX_MICROS = to_micros(dt.datetime.max.replace(tzinfo=dt.UTC))


def encode_cursor(pos: Position) -> str:
    raw = orjson.dumps([pos.sort, pos.value, pos.id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, sort: str) -> Position:
    invalid = ApiError(
        400, "invalid cursor: pass back the one from the Link header", {"parameter": "cursor"}
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise invalid from None
    if not (isinstance(value, list) and len(value) == 3 and value[0] in SORT_KEYS):
        raise invalid
    key, sort_value, entry_id = value
    expect = str if key in ("id", "name") else int
    if not isinstance(sort_value, expect) or isinstance(sort_value, bool):
        raise invalid
    if not isinstance(entry_id, str) or not entry_id or len(entry_id) > 255:
        raise invalid
    # The cursor reaches SQL: PostgreSQL refuses a NUL in any string (a 500
    # there, a 200 on SQLite). No stored value holds one. Nothing stricter:
    # rows from before today's validation must stay pageable.
    if "\x00" in entry_id or (isinstance(sort_value, str) and "\x00" in sort_value):
        raise invalid
    if key != sort:
        raise ApiError(
            400, f"cursor was made for sort={key}, not sort={sort}", {"parameter": "cursor"}
        )
    if isinstance(sort_value, int) and not (_MIN_MICROS <= sort_value <= _MAX_MICROS):
        raise invalid
    return Position(sort=key, value=sort_value, id=entry_id)


#: Digits a number parameter may have: 2**64 has 20. int() refuses more
#: than 4,300 (ValueError, a 500), and a long one costs time to convert.
MAX_DIGITS = 20


def ascii_digits(raw: str) -> bool:
    """Only 0-9, at most MAX_DIGITS of them: str.isdigit() also takes
    superscripts (int() raises) and other scripts' digits (int() reads them)."""
    return len(raw) <= MAX_DIGITS and raw.isascii() and raw.isdigit()


def parse_limit(raw: str) -> int:
    if not ascii_digits(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(
            400, f"limit must be an integer from 1 to {MAX_LIMIT}", {"parameter": "limit"}
        )
    return int(raw)
