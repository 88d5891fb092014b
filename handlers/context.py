"""Everything a handler needs, built once by main() and passed in."""

from __future__ import annotations

from dataclasses import dataclass

from config.options import Config
from storage.base import Storage


@dataclass
class AppContext:
    config: Config
    storage: Storage
    #: Entries per database page when streaming `GET /images`.
    list_chunk: int = 500
    #: Requests being served now; shutdown waits for this to reach zero.
    inflight: int = 0
