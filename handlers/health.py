"""Health endpoints."""

from __future__ import annotations

import asyncio

from handlers.base import BaseHandler
from handlers.errors import ApiError

PING_TIMEOUT = 3.0


class PingHandler(BaseHandler):
    """Readiness: 200 only when the database answers a query (compatible)."""

    route = "/health/ping"

    async def get(self) -> None:
        try:
            await asyncio.wait_for(self.ctx.storage.ping(), PING_TIMEOUT)
        except TimeoutError:
            raise ApiError(503, "database did not answer in time") from None
        self.write_json({"status": "ok", "storage": self.ctx.storage.kind})


class LiveHandler(BaseHandler):
    """Liveness: the process and its loop answer; the database is not asked."""

    route = "/health/live"

    def get(self) -> None:
        self.write_json({"status": "ok"})


class NotFoundHandler(BaseHandler):
    route = "unmatched"

    def prepare(self) -> None:
        raise ApiError(404, f"no such endpoint: {self.request.path}")
