"""The compatible image API: GET/PUT /images, GET/DELETE /images/{id}."""

from __future__ import annotations

import urllib.parse
from typing import Any

import structlog
from tornado.iostream import StreamClosedError

from handlers.base import BaseHandler, BodyHandler
from handlers.errors import ApiError
from handlers.paging import decode_cursor, encode_cursor, parse_limit
from handlers.validation import check_id, check_name, parse_image
from storage.base import position_of
from storage.errors import StorageError
from storage.model import DEFAULT_SORT, SORT_KEYS, Image, ListQuery, format_timestamp

DEFAULT_PAGE = 100
log = structlog.get_logger("imagelist.http")


def image_json(image: Image) -> dict[str, Any]:
    return {
        "id": image.id,
        "name": image.name,
        "tags": list(image.tags),
        "created_at": format_timestamp(image.created_at),
        "updated_at": format_timestamp(image.updated_at),
    }


class ImagesHandler(BodyHandler):
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
        self.write_json([image_json(i) for i in page])

    async def _stream_all(self, sort: str, name: str | None) -> None:
        """The whole list (compatible), one database page at a time.

        A list that fits in one page goes out with a Content-Length; a larger
        one is sent chunked, flushing after each page so memory stays flat.
        """
        chunk = self.ctx.list_chunk
        sent_any = False
        self.write(b"[")
        pages = self.ctx.storage.iter_json_pages(ListQuery(sort=sort, name=name, limit=chunk))
        try:
            async for page in pages:
                self.write(b"," + page.body if sent_any else page.body)
                sent_any = True
                if page.count == chunk:
                    await self.flush()
        except StreamClosedError:
            # The client hung up mid-list: nothing to answer, nothing wrong.
            log.info("client_gone", request_id=self.request_id, path=self.request.path)
            self._finished = True  # Tornado must not try to finish on a closed stream
            self.on_finish()
            return
        except StorageError:
            if not self._headers_written:
                raise
            # Headers are out: a JSON error can no longer be sent. Drop the
            # connection so the client sees a truncated response, not a
            # well-formed but incomplete list.
            self.request.connection.close()
            raise
        self.finish(b"]")

    async def put(self) -> None:
        # authorize_write() already ran in prepare().
        new = parse_image(self.json_body())
        stored = await self.ctx.storage.put(new)
        self.write_json(image_json(stored))


class ImageHandler(BaseHandler):
    route = "/images/{id}"

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # Tornado answers undecodable UTF-8 in the path with a 400 before any
        # method runs: a DELETE without a token must get its 401 first.
        # check_id() refuses the undecodable bytes (lone surrogates) later.
        return value.decode("utf-8", "surrogateescape")

    async def get(self, image_id: str) -> None:
        image = await self.ctx.storage.get(check_id(image_id))
        self.write_json(image_json(image))

    async def delete(self, image_id: str) -> None:
        self.authorize_write()
        await self.ctx.storage.delete(check_id(image_id))
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()
