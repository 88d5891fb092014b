"""A thin JSON client over Tornado's AsyncHTTPClient for the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPResponse


@dataclass
class Reply:
    status: int
    body: bytes
    headers: Any

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class Client:
    def __init__(self, http: AsyncHTTPClient, base_url: str) -> None:
        self.http = http
        self.base = base_url

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 20,
    ) -> Reply:
        if raw is None and body is not None:
            raw = orjson.dumps(body)
        if raw is None and method in ("PUT", "POST"):
            raw = b""
        resp: HTTPResponse = await self.http.fetch(
            self.base + path,
            method=method,
            body=raw,
            headers=headers,
            raise_error=False,
            request_timeout=timeout,
            allow_nonstandard_methods=True,
        )
        return Reply(resp.code, resp.body or b"", resp.headers)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def put(self, body: Any = None, **kw: Any) -> Reply:
        return await self.request("PUT", "/images", body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)

    async def all_images(self, query: str = "") -> list[dict[str, Any]]:
        reply = await self.get("/images" + query)
        assert reply.status == 200, reply.body
        return reply.json
