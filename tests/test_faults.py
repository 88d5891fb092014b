"""Fault injection against real processes: the database stopped under
load and restarted, and several daemons sharing one database."""

from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg2

from daemon import Daemon
from helpers import wait_for
from pgcluster import PgCluster, free_port


class Load:
    """Writers and readers hammering one daemon until stopped."""

    def __init__(self, d: Daemon, writers: int = 3) -> None:
        self.d = d
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.acked: set[str] = set()
        self.slowest = 0.0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._write, args=(n,)) for n in range(writers)]
        self.threads.append(threading.Thread(target=self._read))

    def _record(self, status: int, started: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.slowest = max(self.slowest, time.monotonic() - started)

    def _write(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            entry_id = f"w{n}-{i}"
            started = time.monotonic()
            status, body, _ = self.d.request(
                "PUT", "/images", {"id": entry_id, "name": "load", "tags": [entry_id]}, timeout=30
            )
            self._record(status, started)
            if status == 200:
                assert body["tags"] == [entry_id]
                with self.lock:
                    self.acked.add(entry_id)
            i += 1

    def _read(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            status, _, _ = self.d.request("GET", "/images?limit=50", timeout=30)
            self._record(status, started)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def rows(url: str) -> dict[str, list[str]]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT id, tags FROM images")
        result = {i: list(t) for i, t in cur.fetchall()}
    conn.close()
    return result


def test_database_stopped_under_load_and_restarted(pg_cluster: PgCluster) -> None:
    url = pg_cluster.url()
    with Daemon("--database-url", url, "--db-timeout", "2", "--db-connect-timeout", "1") as d:
        with Load(d) as load:
            wait_for(lambda: len(load.acked) > 50, True)
            pg_cluster.stop()  # fault 1: the database goes away under load
            wait_for(lambda: load.statuses[503] > 20, True)
            before_restart = len(load.acked)
            pg_cluster.start()
            wait_for(lambda: len(load.acked) > before_restart + 50, True)
            pg_cluster.stop("immediate")  # fault 2: a crash, not a clean stop
            wait_for(lambda: load.statuses[503] > 40, True)
            before_second = len(load.acked)
            pg_cluster.start()
            wait_for(lambda: len(load.acked) > before_second + 50, True)
        print("\nload statuses:", dict(load.statuses), "slowest:", round(load.slowest, 3))
        assert set(load.statuses) <= {200, 503}, load.statuses
        # 503s come fast, bounded by the timeouts, never a hang.
        assert load.slowest < 10
        logs = d.logs()
    stored = rows(url)
    assert load.acked <= stored.keys(), "an acknowledged write was lost"
    # No half-written row: every row is exactly what one PUT sent.
    assert all(tags == [entry_id] for entry_id, tags in stored.items())
    assert not [
        e for e in logs if e.get("event") == "request" and e["status"] >= 500 and e["status"] != 503
    ]
    assert not any("Traceback" in line for line in d.output)


def test_two_daemons_share_one_database(pg_url: str) -> None:
    with Daemon("--database-url", pg_url) as a, Daemon("--database-url", pg_url) as b:
        for n in range(20):
            writer, reader = (a, b) if n % 2 else (b, a)
            entry_id = f"shared-{n}"
            assert writer.request("PUT", "/images", {"id": entry_id, "name": "n"})[0] == 200
            # Visible on the other instance at once.
            status, body, _ = reader.request("GET", f"/images/{entry_id}")
            assert status == 200 and body["id"] == entry_id
            assert reader.request("DELETE", f"/images/{entry_id}")[0] == 204
            assert writer.request("GET", f"/images/{entry_id}")[0] == 404


def test_two_instances_on_one_port_with_reuse_port(pg_url: str) -> None:
    port = free_port()
    args = ("--database-url", pg_url, "--reuse-port")
    with Daemon(*args, port=port) as a, Daemon(*args, port=port) as b:
        statuses = Counter(a.request("GET", "/health/ping")[0] for _ in range(200))
        assert statuses == {200: 200}
        served_by = [sum(1 for e in d.logs() if e.get("event") == "request") for d in (a, b)]
        # The kernel spreads connections over both listeners.
        assert all(n > 0 for n in served_by), served_by
        a.stop()
        # The survivor keeps serving the port alone.
        assert b.request("GET", "/health/ping")[0] == 200
