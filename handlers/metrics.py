"""Prometheus metrics: one registry per app, built in main() and passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from handlers.base import BaseHandler

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the daemon exports. No module globals: tests build
    several apps in one process, each with its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "imagelist_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "imagelist_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "imagelist_http_requests_in_flight", "HTTP requests being served.", registry=r
        )
        self.token_reloads = Counter(
            "imagelist_token_reloads_total", "Successful tokens-file (re)loads.", registry=r
        )
        self.token_reload_errors = Counter(
            "imagelist_token_reload_errors_total",
            "Tokens-file reloads rejected (bad YAML or shape); the last good set stays.",
            registry=r,
        )
        self.token_last_reload = Gauge(
            "imagelist_token_last_reload_timestamp_seconds",
            "Unix time of the last successful tokens-file load.",
            registry=r,
        )
        self.admission_decisions = Counter(
            "imagelist_admission_decisions_total",
            "Admission decisions by endpoint and result (allowed, denied, warned, error).",
            ["endpoint", "result"],
            registry=r,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)


class MetricsHandler(BaseHandler):
    route = "/metrics"

    def get(self) -> None:
        encoder, content_type = choose_encoder(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(encoder(self.ctx.metrics.registry))
