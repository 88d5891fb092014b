"""GET /events: the audit trail of every change to an entry, oldest first.

Paged by sequence number (`after`), which follows commit order: a reader
that passes back the last seq it saw never skips an event committed later,
so a SIEM can tail the trail by polling the `Link` next URL, which is
always sent (on an empty page it repeats the same position).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from handlers.base import BaseHandler
from handlers.errors import ApiError
from handlers.paging import ascii_digits
from storage.model import MAX_ACTOR_LEN, Event, EventQuery, format_timestamp

DEFAULT_EVENTS_PAGE = 100
MAX_EVENTS_PAGE = 1000
# seq is a 64-bit integer on both backends.
MAX_SEQ = 2**63 - 1
# Ids stored by older writers may be long (handlers.validation): every
# stored id can be asked for.
MAX_IMAGE_ID_LEN = 2704


def event_json(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": format_timestamp(event.at),
        "action": event.action,
        "id": event.image_id,
        "name": event.name,
        "tags_before": None if event.tags_before is None else list(event.tags_before),
        "tags_after": None if event.tags_after is None else list(event.tags_after),
        "actor": event.actor,
        "request_id": event.request_id,
    }


def _number(raw: str, name: str, low: int, high: int) -> int:
    if not ascii_digits(raw) or not low <= int(raw) <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}", {"parameter": name})
    return int(raw)


def _text(raw: str, name: str, max_len: int) -> str:
    # A NUL never reaches SQL: PostgreSQL refuses it in any string.
    if not raw or "\x00" in raw or len(raw) > max_len:
        raise ApiError(
            400, f"{name} must be 1 to {max_len} characters without NUL", {"parameter": name}
        )
    return raw


class EventsHandler(BaseHandler):
    route = "/events"

    async def get(self) -> None:
        after_raw, limit_raw = self.query("after"), self.query("limit")
        image_id, actor = self.query("image_id"), self.query("actor")
        query = EventQuery(
            after=0 if after_raw is None else _number(after_raw, "after", 0, MAX_SEQ),
            limit=DEFAULT_EVENTS_PAGE
            if limit_raw is None
            else _number(limit_raw, "limit", 1, MAX_EVENTS_PAGE),
            image_id=None if image_id is None else _text(image_id, "image_id", MAX_IMAGE_ID_LEN),
            actor=None if actor is None else _text(actor, "actor", MAX_ACTOR_LEN),
        )
        events = await self.ctx.storage.events(query)
        params = {
            "after": str(events[-1].seq if events else query.after),
            "limit": str(query.limit),
        }
        if query.image_id is not None:
            params["image_id"] = query.image_id
        if query.actor is not None:
            params["actor"] = query.actor
        link = "/events?" + urllib.parse.urlencode(params)
        self.set_header("Link", f'<{link}>; rel="next"')
        self.write_json([event_json(e) for e in events])
