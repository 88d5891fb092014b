"""The compatible image API: GET/PUT /images, GET/DELETE /images/{id}."""

from __future__ import annotations

import urllib.parse
from typing import Any

import structlog
from tornado.iostream import StreamClosedError

from handlers.base import BaseHandler, BodyHandler
from handlers.errors import ApiError
from handlers.paging import decode_cursor, encode_cursor, parse_limit
from handlers.validation import check_name, lookup_id, parse_entry
from storage.base import position_of
from storage.errors import NotFound, StorageError
from storage.model import DEFAULT_SORT, SORT_KEYS, EntryView, ListQuery, format_timestamp

DEFAULT_PAGE = 100
log = structlog.get_logger("imagelist.http")


def entry_json(entry: EntryView) -> dict[str, Any]:
    return {
        "id": entry.id,
        "name": entry.name,
        "tags": list(entry.tags),
        "created_at": format_timestamp(entry.created_at),
        "updated_at": format_timestamp(entry.updated_at),
    }


class EntriesHandler(BodyHandler):
    route = "/images"

    def prepare(self) -> None:
        if self.request.method == "PUT":
            # Before the body is measured or buffered: 401, not 413 or 400.
            self.authorize_write()
        super().prepare()

    async def get(self) -> None:
        sort = self.query("sort")
        sort = DEFAULT_SORT if sort is None else sort
        if sort not in SORT_KEYS:
            raise ApiError(
                400,
                f"unknown sort {sort!r}; allowed: {', '.join(SORT_KEYS)}",
                {"parameter": "sort", "allowed": list(SORT_KEYS)},
            )
        name = self.query("name")
        if name is not None:
            name = check_name(name, "name parameter")
        limit_raw, cursor = self.query("limit"), self.query("cursor")
        if limit_raw is None and cursor is None:
            await self._stream_all(sort, name)
            return
        limit = parse_limit(limit_raw) if limit_raw is not None else DEFAULT_PAGE
        after = decode_cursor(cursor, sort) if cursor is not None else None
        page = await self.ctx.storage.list_page(
            ListQuery(sort=sort, name=name, after=after, limit=limit + 1)
        )
        if len(page) > limit:
            page = page[:limit]
            params = {
                "sort": sort,
                "limit": str(limit),
                "cursor": encode_cursor(position_of(sort, page[-1])),
            }
            if name is not None:
                params["name"] = name
            link = "/images?" + urllib.parse.urlencode(params)
            self.set_header("Link", f'<{link}>; rel="next"')
        self.write_json([entry_json(e) for e in page])

    async def _stream_all(self, sort: str, name: str | None) -> None:
        """The whole list (compatible), one database page at a time.

        A list that fits in one page goes out with a Content-Length; a larger
        one is sent chunked, flushing after each page so memory stays flat.
        """
        chunk = self.ctx.list_chunk
        sent_any = flushed = False
        self.write(b"[")
        pages = self.ctx.storage.iter_json_pages(ListQuery(sort=sort, name=name, limit=chunk))
        try:
            async for page in pages:
                self.write(b"," + page.body if sent_any else page.body)
                sent_any = True
                if page.count == chunk:
                    await self.flush()
                    flushed = True
        except StreamClosedError:
            # The client hung up mid-list: nothing to answer, nothing wrong.
            # Tornado finishes the request; on a closed stream that writes nothing.
            log.info("client_gone", request_id=self.request_id, path=self.request.path)
            return
        except StorageError:
            if not flushed:
                raise
            # Headers are out: a JSON error can no longer be sent. Drop the
            # connection so the client sees a truncated response, not a
            # well-formed but incomplete list.
            self.connection().close()
            raise
        self.finish(b"]")

    async def put(self) -> None:
        # authorize_write() already ran in prepare().
        new = parse_entry(self.json_body())
        stored = await self.ctx.storage.put(new, self.writer())
        self.write_json(entry_json(stored))


class EntryHandler(BaseHandler):
    route = "/images/{id}"

    #: An undecodable path, answered after authorization (see decode_argument).
    path_error: ApiError | None = None

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # Path arguments are decoded before any method runs: a 400 here
        # would come before a DELETE's 401. Kept for entry_id() instead.
        try:
            return super().decode_argument(value, name)
        except ApiError as exc:
            self.path_error = exc
            return ""

    def path_id(self, raw: str) -> str:
        if self.path_error is not None:
            raise self.path_error
        return raw

    async def get(self, entry_id: str) -> None:
        found = lookup_id(self.path_id(entry_id))
        if found is None:
            raise NotFound(entry_id)
        entry = await self.ctx.storage.get(found)
        self.write_json(entry_json(entry))

    async def delete(self, entry_id: str) -> None:
        self.authorize_write()
        found = lookup_id(self.path_id(entry_id))
        if found is not None:
            await self.ctx.storage.delete(found, self.writer())
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()
