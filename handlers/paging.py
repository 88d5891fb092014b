"""Opaque paging cursors for `GET /images?limit=...&cursor=...`."""

from __future__ import annotations

import base64
import binascii

import orjson

from handlers.errors import ApiError
from storage.model import SORT_KEYS, Position

MAX_LIMIT = 1000


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
    key, sort_value, image_id = value
    expect = str if key in ("id", "name") else int
    if not isinstance(sort_value, expect) or isinstance(sort_value, bool):
        raise invalid
    if not isinstance(image_id, str) or not image_id or len(image_id) > 255:
        raise invalid
    if key != sort:
        raise ApiError(
            400, f"cursor was made for sort={key}, not sort={sort}", {"parameter": "cursor"}
        )
    if expect is int and not (-(2**62) < sort_value < 2**62):
        raise invalid
    return Position(sort=key, value=sort_value, id=image_id)


def parse_limit(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(
            400, f"limit must be an integer from 1 to {MAX_LIMIT}", {"parameter": "limit"}
        )
    return int(raw)
