"""GET /metrics: the app's registry in the format the scraper asks for."""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder

from handlers.base import BaseHandler

#: How long a scrape waits for the stored-entries count before it shows the last one.
COUNT_TIMEOUT = 1.0


class MetricsHandler(BaseHandler):
    route = "/metrics"

    async def get(self) -> None:
        metrics = self.ctx.metrics
        await metrics.refresh_images_stored(self.ctx.storage, COUNT_TIMEOUT)
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.finish(encoder(metrics.registry))
