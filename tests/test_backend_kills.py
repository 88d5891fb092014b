"""PostgreSQL backends killed under a running daemon (pg_terminate_backend),
and a server with no free connection slot: never a 500, and the daemon
works with the connections it has."""

from __future__ import annotations

import collections
import http.client
import json
import threading
import time
import uuid

import psycopg2

from daemon import Daemon
from pgcluster import PgCluster, create_database

REQUESTS = [
    ("PUT", "/images", {"id": "kill-{n}", "name": "nginx", "tags": ["v{n}"]}),
    ("GET", "/images?limit=5", None),
    ("GET", "/images/kill-1", None),
    ("GET", "/allowed?image=nginx:v1", None),
    ("GET", "/health/ping", None),
]


def admin(url: str, sql: str, *args: object) -> list[tuple]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def hammer(port: int, stop: threading.Event, statuses: collections.Counter, seen: list) -> None:
    """One keep-alive client cycling through REQUESTS until `stop`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n = 0
    while not stop.is_set():
        method, path, body = REQUESTS[n % len(REQUESTS)]
        raw = json.dumps(body).replace("{n}", str(n)).encode() if body else None
        try:
            conn.request(method, path, body=raw)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        statuses[resp.status] += 1
        if resp.status >= 500 and resp.status != 503:
            seen.append((method, path, resp.status, data[:300]))
        n += 1
    conn.close()


def test_killed_backends_under_load_are_never_a_500(pg_server_url: str) -> None:
    app = f"imagelist-kill-{uuid.uuid4().hex[:8]}"
    url = create_database(pg_server_url, f"imagelist_kill_{uuid.uuid4().hex[:8]}")
    with Daemon("--database-url", f"{url}?application_name={app}", "--db-pool-size", "4") as d:
        d.request("PUT", "/images", {"id": "kill-1", "name": "nginx", "tags": ["v1"]})
        stop, statuses, bad = threading.Event(), collections.Counter(), []
        clients = [
            threading.Thread(target=hammer, args=(d.port, stop, statuses, bad)) for _ in range(6)
        ]
        for t in clients:
            t.start()
        killed = 0
        try:
            for _ in range(30):
                time.sleep(0.1)
                rows = admin(
                    pg_server_url,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    app,
                )
                killed += len(rows)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in clients:
                t.join(30)
        assert killed >= 30, killed  # the daemon's connections really died
        assert bad == [], bad
        assert set(statuses) <= {200, 204, 404, 503}, statuses
        # Most operations were retried on a fresh connection and succeeded.
        assert statuses[200] > 3 * statuses[503], statuses
        # And all is well without a restart.
        d.wait_status("/health/ping", 200, timeout=10)
        assert d.request("GET", "/images/kill-1")[0] == 200
    # A 503's request line is at error level; anything else there is a fault.
    errors = [
        e
        for e in d.logs()
        if e.get("level") in ("error", "critical")
        and not (e["event"] == "request" and e["status"] == 503)
    ]
    assert errors == []


def pool_connections(d: Daemon) -> int:
    text = d.request("GET", "/metrics")[1].decode()
    line = next(x for x in text.splitlines() if x.startswith("imagelist_db_pool_connections "))
    return int(float(line.split()[1]))


def backends_of(conn: psycopg2.extensions.connection, app: str) -> list[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
        pids = [pid for (pid,) in cur.fetchall()]
    conn.commit()
    return pids


def occupy_every_slot(url: str, hogs: list) -> None:
    """Open connections until the server refuses one: it is full."""
    while True:
        try:
            hogs.append(psycopg2.connect(url, connect_timeout=5))
        except psycopg2.OperationalError as exc:
            assert "too many clients" in str(exc) or "slots" in str(exc), exc
            return


def parallel_statuses(d: Daemon, path: str, count: int, threads: int = 6) -> collections.Counter:
    statuses: collections.Counter = collections.Counter()

    def run() -> None:
        for _ in range(count // threads):
            statuses[d.request("GET", path)[0]] += 1

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    return statuses


def test_a_full_server_and_a_lost_backend_leave_the_rest_of_the_pool_working(
    pg_cluster: PgCluster,
) -> None:
    app = f"imagelist-full-{uuid.uuid4().hex[:8]}"
    url = create_database(pg_cluster.url(), "imagelist_full")
    hogs: list = []
    try:
        with Daemon("--database-url", f"{url}?application_name={app}", "--db-pool-size", "4") as d:
            assert d.request("PUT", "/images", {"id": "full", "name": "nginx"})[0] == 200
            assert pool_connections(d) == 4
            occupy_every_slot(pg_cluster.url(), hogs)
            # One of the daemon's backends is lost; its slot is taken at once.
            with hogs[0].cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s LIMIT 1",
                    (app,),
                )
            hogs[0].commit()
            # Its server process exits asynchronously; then its slot is taken.
            deadline = time.monotonic() + 10
            while len(backends_of(hogs[0], app)) > 3:
                assert time.monotonic() < deadline, "the backend never went away"
                time.sleep(0.05)
            occupy_every_slot(pg_cluster.url(), hogs)
            # The three healthy connections serve every request.
            assert parallel_statuses(d, "/images/full", 120) == {200: 120}
            assert parallel_statuses(d, "/health/ping", 60) == {200: 60}
            assert pool_connections(d) == 3
            # One slot frees: the pool takes it back, without needing four.
            hogs.pop().close()
            deadline = time.monotonic() + 20
            while pool_connections(d) < 4:
                assert time.monotonic() < deadline, "the pool never grew back"
                assert parallel_statuses(d, "/images/full", 12) == {200: 12}
        assert [e for e in d.logs() if e.get("level") in ("error", "critical")] == []
    finally:
        for conn in hogs:
            conn.close()


def test_a_server_short_of_slots_at_start_is_used_and_nothing_leaks(
    pg_cluster: PgCluster,
) -> None:
    """Fewer free slots than --db-pool-size: the pool build failed, leaked
    its connections (ResourceWarning, "Future exception was never
    retrieved") and the daemon answered 503 until ten slots were free."""
    url = create_database(pg_cluster.url(), "imagelist_short")
    hogs: list = []
    try:
        occupy_every_slot(pg_cluster.url(), hogs)
        for _ in range(3):
            hogs.pop().close()
        time.sleep(0.5)  # the server processes exit asynchronously
        with Daemon("--database-url", url, "--db-pool-size", "10") as d:
            assert parallel_statuses(d, "/health/ping", 30) == {200: 30}
            assert d.request("PUT", "/images", {"id": "short", "name": "nginx"})[0] == 200
            assert 1 <= pool_connections(d) <= 3
    finally:
        for conn in hogs:
            conn.close()
    text = "\n".join(d.output)
    assert "ResourceWarning" not in text and "never retrieved" not in text
    assert [e for e in d.logs() if e.get("level") in ("error", "critical")] == []
