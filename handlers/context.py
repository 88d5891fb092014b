"""Everything a handler needs, built once by main() and passed in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from config.options import Config
from config.tokens import TokenRegistry
from storage.base import Storage
from storage.replica import Replica

if TYPE_CHECKING:
    from handlers.metrics import Metrics


@dataclass
class AppContext:
    config: Config
    storage: Storage
    metrics: Metrics = field(default_factory=lambda: _new_metrics())
    #: Entries per database page when streaming `GET /images`.
    list_chunk: int = 500
    #: Requests being served now; shutdown waits for this to reach zero.
    inflight: int = 0
    #: Called on SIGHUP (tokens file, TLS files, ...), each independently.
    reload_hooks: list[Callable[[], None]] = field(default_factory=list)
    #: Bearer tokens for writes; None when no --tokens-file (auth off).
    tokens: TokenRegistry | None = None
    #: Admission decisions' in-memory replica; None: every decision asks
    #: the database.
    replica: Replica | None = None

    def __post_init__(self) -> None:
        # Every app exports its store's pool, however it was assembled.
        self.metrics.watch_storage(self.storage)
        if self.replica is not None:
            self.metrics.watch_replica(self.replica)

    @property
    def decisions(self) -> Storage | Replica:
        """What admission decisions are matched against."""
        return self.storage if self.replica is None else self.replica

    def reload(self) -> None:
        for hook in self.reload_hooks:
            hook()


def _new_metrics() -> Metrics:
    from handlers.metrics import Metrics

    return Metrics()
