"""Everything a handler needs, built once by the assembly and passed in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from config.metrics import Metrics
from config.options import Config
from config.tokens import TokenRegistry
from storage.base import Storage


@dataclass
class AppContext:
    config: Config
    storage: Storage
    metrics: Metrics
    #: Entries per database page when streaming `GET /images`.
    list_chunk: int = 500
    #: Requests being served now; shutdown waits for this to reach zero.
    inflight: int = 0
    #: Called on SIGHUP (tokens file, TLS files, ...), each independently.
    reload_hooks: list[Callable[[], None]] = field(default_factory=list)
    #: Bearer tokens for writes; None when no --tokens-file (auth off).
    tokens: TokenRegistry | None = None

    def reload(self) -> None:
        for hook in self.reload_hooks:
            hook()
