"""Prometheus metrics: the definitions, one registry per app.

Built by the assembly (imagelist.assemble) and handed to every part that
reports: storage (through its QueryObserver), the tokens registry and the
handlers. Nothing here knows HTTP; the scrape handler is handlers/metrics.py.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from storage.base import Storage
from storage.errors import StorageError
from storage.model import ACTIONS
from storage.replica import Replica

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Methods labelled as themselves; any other (Tornado accepts any token and
#: answers 405) is "OTHER", so clients cannot add series at will.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def version() -> str:
    try:
        return importlib.metadata.version("imagelist")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"  # run from a source checkout, not installed


class PoolCollector(Collector):
    """The storage pool, read when scraped (the pool already counts; copying
    its numbers into gauges on every change would only add work)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        stats = self.storage.pool_stats()
        yield GaugeMetricFamily(
            "imagelist_db_pool_connections", "Database connections open.", stats.size
        )
        yield GaugeMetricFamily(
            "imagelist_db_pool_connections_in_use",
            "Database connections serving an operation now.",
            stats.in_use,
        )
        yield GaugeMetricFamily(
            "imagelist_db_pool_connections_max",
            "The most database connections the pool will open.",
            stats.max_size,
        )
        yield CounterMetricFamily(
            "imagelist_db_pool_waits",
            "Database operations that had to wait for a free connection.",
            stats.waits,
        )


class ReplicaCollector(Collector):
    """The admission replica's size and freshness, read when scraped."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        replica = self.replica
        yield GaugeMetricFamily(
            "imagelist_replica_entries",
            "Entries in this instance's in-memory admission replica.",
            len(replica.index),
        )
        age = replica.age()
        yield GaugeMetricFamily(
            "imagelist_replica_age_seconds",
            "Seconds since the admission replica was last known current "
            "(+Inf before its first load).",
            float("inf") if age is None else age,
        )
        yield GaugeMetricFamily(
            "imagelist_replica_current",
            "1 while the admission replica is known current (following every change).",
            int(replica.current()),
        )


#: Replica events (storage.ReplicaObserver) -> counter and label.
_REPLICA_EVENTS = {
    "change": ("changes", None),
    "reload": ("reloads", None),
    "fallback": ("fallbacks", None),
    "confirm_denied": ("confirmations", "denied"),
    "confirm_allowed": ("confirmations", "allowed"),
    "confirm_unavailable": ("confirmations", "unavailable"),
}


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
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
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
        self.token_forbidden_writes = Counter(
            "imagelist_token_forbidden_writes_total",
            "Writes refused with 403 because the repository is outside the token's scopes.",
            ["token"],  # bounded: the names in the tokens file
            registry=r,
        )
        self.admission_decisions = Counter(
            "imagelist_admission_decisions_total",
            "Admission decisions by endpoint and result (allowed, denied, warned, error).",
            ["endpoint", "result"],
            registry=r,
        )
        self.admission_pins = Counter(
            "imagelist_admission_pins_total",
            "Image references rewritten to the digest CI recorded, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        for endpoint in ("mutate", "gatekeeper_mutate"):  # exported from 0, for rate()
            self.admission_pins.labels(endpoint)

        self.db_query_seconds = Histogram(
            "imagelist_db_query_duration_seconds",
            "Storage operation latency (including any wait for a pooled connection) "
            "by operation and outcome (ok, error).",
            ["operation", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.entries_stored = Gauge(
            "imagelist_images_stored",
            "Entries in the allowlist, counted at scrape time; the last count is kept "
            "while the database does not answer.",
            registry=r,
        )
        self.database_up = Gauge(
            "imagelist_database_up",
            "1 when the database answered the last scrape-time count, else 0.",
            registry=r,
        )
        self.replica_changes = Counter(
            "imagelist_replica_changes_applied_total",
            "Changed entries applied to the admission replica, one by one.",
            registry=r,
        )
        self.replica_reloads = Counter(
            "imagelist_replica_reloads_total",
            "Full loads of the admission replica (start-up, reconnects, bulk changes).",
            registry=r,
        )
        self.replica_confirmations = Counter(
            "imagelist_replica_confirmations_total",
            "Denials of the admission replica checked against the database, by outcome: "
            "denied (confirmed), allowed (written elsewhere, its notice not applied yet), "
            "unavailable (no answer in time: the replica's denial stands).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("denied", "allowed", "unavailable"):
            self.replica_confirmations.labels(outcome)  # exported from zero
        self.replica_fallbacks = Counter(
            "imagelist_replica_fallback_decisions_total",
            "Admission lookups answered by a replica that was not known current, "
            "because the database did not answer (within --replica-max-age).",
            registry=r,
        )
        self.events_written = Counter(
            "imagelist_events_written_total",
            "Audit events this instance's writes recorded, by action (created, updated, "
            "deleted); changes made by SQL are recorded by the database and not counted here.",
            ["action"],
            registry=r,
        )
        for action in ACTIONS:
            self.events_written.labels(action)  # exported from zero
        self.events_pruned = Counter(
            "imagelist_events_pruned_total",
            "Audit events this instance deleted as older than --events-retention-days.",
            registry=r,
        )
        # The standard process_* (CPU, resident memory, open fds) and
        # python_info families, read from /proc at scrape time.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("imagelist_build", "Version of the running daemon.", registry=r)
        self.build_info.info({"version": version(), "python": platform.python_version()})
        self._pool: PoolCollector | None = None
        self._replica: ReplicaCollector | None = None
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._query_children: dict[tuple[str, bool], Histogram] = {}
        self._count_task: asyncio.Task[None] | None = None

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # labels() validates and locks on every call; each label set's
        # children are looked up once and kept (as many as labels() keeps).
        if method not in KNOWN_METHODS:
            method = "OTHER"
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            labels = (route, method, str(status))
            children = (self.requests.labels(*labels), self.request_seconds.labels(*labels))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_query(self, operation: str, seconds: float, ok: bool) -> None:
        """A `storage.QueryObserver`: pass it to the Storage constructor."""
        key = (operation, ok)
        child = self._query_children.get(key)
        if child is None:
            child = self.db_query_seconds.labels(operation, "ok" if ok else "error")
            self._query_children[key] = child
        child.observe(seconds)

    def observe_event(self, action: str) -> None:
        """A `storage.base.EventListener`: set it as the store's on_event."""
        self.events_written.labels(action).inc()

    def observe_pruned(self, events: int) -> None:
        self.events_pruned.inc(events)

    def observe_replica(self, event: str, amount: float) -> None:
        """A `storage.ReplicaObserver`: pass it to create_replica."""
        name, label = _REPLICA_EVENTS[event]
        counter = getattr(self, f"replica_{name}")
        (counter if label is None else counter.labels(label)).inc(amount)

    def watch_replica(self, replica: Replica) -> None:
        """Export `replica`'s size and freshness; idempotent."""
        if self._replica is None:
            self._replica = ReplicaCollector(replica)
            self.registry.register(self._replica)

    def watch_storage(self, storage: Storage) -> None:
        """Export `storage`'s pool; idempotent."""
        if self._pool is None:
            self._pool = PoolCollector(storage)
            self.registry.register(self._pool)

    async def refresh_images_stored(self, storage: Storage, timeout: float) -> None:
        """Count entries, waiting at most `timeout`. One count at a time: a
        scrape that finds one still running (slow or hung database) waits for
        that one instead of piling another query on the pool."""
        if self._count_task is None or self._count_task.done():
            self._count_task = asyncio.create_task(self._count(storage))
        try:
            await asyncio.wait_for(asyncio.shield(self._count_task), timeout)
        except TimeoutError:
            self.database_up.set(0)

    async def _count(self, storage: Storage) -> None:
        try:
            self.entries_stored.set(await storage.count())
        except StorageError:
            self.database_up.set(0)
        else:
            self.database_up.set(1)
