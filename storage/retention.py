"""The audit trail's retention: events older than the retention pruned.

Every instance prunes, at start and then hourly, in batches of PRUNE_BATCH
rows, each its own short statement and transaction with a pause between
them, so a large backlog (the first prune after enabling retention) never
holds a connection, a lock or the IOLoop for long. Instances pruning at once
only find less to delete.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from storage.base import PRUNE_BATCH, Storage
from storage.errors import StorageError, StorageUnavailable

log = logging.getLogger("imagelist.storage")

#: Seconds between two prunes.
PRUNE_INTERVAL = 3600.0
#: Seconds between two batches of one prune: other queries go first.
BATCH_PAUSE = 0.05


async def prune_once(
    storage: Storage,
    days: int,
    on_pruned: Callable[[int], None] | None = None,
    batch: int = PRUNE_BATCH,
) -> int:
    """Delete every event older than `days` days (0: none), a batch at a
    time; how many. StorageError when the database fails meanwhile."""
    if days <= 0:
        return 0
    try:
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    except OverflowError:
        # Before year 1 (the option has no upper bound): no event is that
        # old. Raised, it would end the hourly prune for good.
        return 0
    total = 0
    while True:
        n = await storage.prune_events(cutoff, batch)
        total += n
        if on_pruned is not None and n:
            on_pruned(n)
        if n < batch:
            return total
        await asyncio.sleep(BATCH_PAUSE)


async def prune_events_forever(
    storage: Storage,
    days: int,
    on_pruned: Callable[[int], None] | None = None,
    interval: float = PRUNE_INTERVAL,
    batch: int = PRUNE_BATCH,
) -> None:
    """Run until cancelled (returns at once when `days` is 0: keep every
    event); a database that is down is waited out."""
    if days <= 0:
        return
    while True:
        try:
            pruned = await prune_once(storage, days, on_pruned, batch)
        except StorageUnavailable:
            pruned = 0  # health and every request report it; the next pass retries
        except StorageError as exc:
            pruned = 0
            log.warning("events_prune_failed", extra={"error": str(exc)})
        if pruned:
            log.info("events_pruned", extra={"events": pruned, "retention_days": days})
        await asyncio.sleep(interval)
