"""The periodic sweep that gives rows written by other writers their keys.

A row the Go service or an admin's psql writes has no reference keys (they are
Python's to compute, storage.reference) and allows nothing until it has
them. Every instance sweeps: each pass computes keys in bounded batches
until none is left, then sleeps. A row any writer adds therefore decides
admission within SWEEP_INTERVAL plus the time its batch takes (README,
"Upgrading from the Go service").
"""

from __future__ import annotations

import asyncio
import logging

from storage.base import KEYS_BATCH, Storage
from storage.errors import StorageError, StorageUnavailable

log = logging.getLogger("imagelist.storage")

#: Seconds between two sweeps.
SWEEP_INTERVAL = 1.0


async def sweep_stale_keys(
    storage: Storage, interval: float = SWEEP_INTERVAL, batch: int = KEYS_BATCH
) -> None:
    """Run until cancelled; a database that is down is waited out."""
    while True:
        computed = 0
        try:
            while True:
                n = await storage.compute_stale_keys(batch)
                computed += n
                if n < batch:
                    break
        except StorageUnavailable:
            pass  # health and every request report it; the next pass retries
        except StorageError as exc:
            log.warning("entry_keys_failed", extra={"error": str(exc)})
        if computed:
            log.info("entry_keys_computed", extra={"entries": computed})
        await asyncio.sleep(interval)
