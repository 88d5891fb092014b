"""A PUT that got 200 survives kill -9 of the daemon, on both backends."""

from __future__ import annotations

import threading
import time

from daemon import Daemon


def test_acknowledged_writes_survive_sigkill(database_url: str) -> None:
    acked: list[str] = []
    stop = threading.Event()
    daemon = Daemon("--database-url", database_url).start()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            entry_id = f"w{i:05d}"
            try:
                status, _, _ = daemon.request(
                    "PUT", "/images", {"id": entry_id, "name": "n", "tags": [str(i)]}, timeout=5
                )
            except OSError:
                return  # the daemon is gone
            if status == 200:
                acked.append(entry_id)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 30
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    daemon.kill9()  # mid-stream: requests are in flight right now
    stop.set()
    thread.join(10)
    assert len(acked) >= 150

    with Daemon("--database-url", database_url) as again:
        status, listed, _ = again.request("GET", "/images")
        assert status == 200
        stored = {e["id"] for e in listed}
        missing = [i for i in acked if i not in stored]
        assert missing == [], f"{len(missing)} acknowledged writes lost"
