"""The admission replica seen from outside: real daemons, a real PostgreSQL
the test stops, freezes and writes to with SQL."""

from __future__ import annotations

import os
import signal
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from k8s import admission_review, image_review, pod_spec, provider_request

from daemon import Daemon
from pgcluster import PgCluster, create_database

DB_OPTIONS = ("--db-timeout", "1", "--db-connect-timeout", "1")
#: A bound on a REST 503 while the database hangs: one query or connect
#: timeout (1 s) and slack for a loaded machine.
REST_503_WITHIN = 2.5
#: After a failed connection attempt, seconds the store answers 503 at once
#: instead of trying again (PostgresStorage's retry_interval).
RETRY_HOLD = 1.0
#: Seconds within which the REST API answers again once the database is
#: back: the hold, then one connection attempt and one query (DB_OPTIONS).
REST_BACK = RETRY_HOLD + 1 + 1


def allowed(daemon: Daemon, image: str) -> bool:
    status, body, _ = daemon.request("GET", "/allowed?image=" + urllib.parse.quote(image, safe=""))
    assert status == 200, body
    return bool(body["allowed"])


def metric(daemon: Daemon, name: str) -> float:
    """The value of one sample of /metrics (`name` with its labels)."""
    status, body, _ = daemon.request("GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


def wait_until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.05)


def wait_current(daemon: Daemon) -> None:
    wait_until(lambda: metric(daemon, "imagelist_replica_current") == 1, "current")


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(statement, params)
    conn.close()


@pytest.fixture
def two(pg_server_url: str) -> Iterator[tuple[Daemon, Daemon, str]]:
    url = create_database(pg_server_url, f"imagelist_replica_{uuid.uuid4().hex[:8]}")
    a = Daemon("--database-url", url, *DB_OPTIONS).start()
    b = Daemon("--database-url", url, *DB_OPTIONS).start()
    try:
        wait_current(a)
        wait_current(b)
        yield a, b, url
    finally:
        a.stop()
        b.stop()


def test_a_put_through_one_instance_is_never_denied_by_another(two) -> None:
    a, b, _ = two
    for i in range(40):
        status, body, _ = a.request(
            "PUT", "/images", {"id": f"e{i}", "name": "app", "tags": [f"v{i}"]}
        )
        assert status == 200, body
        # At once: the notice may still be in flight; the denial is checked.
        assert allowed(b, f"app:v{i}"), i
    assert metric(b, 'imagelist_replica_confirmations_total{outcome="unavailable"}') == 0


def test_a_revocation_through_one_instance_reaches_the_other_within_a_second(two) -> None:
    a, b, _ = two
    took = []
    for i in range(20):
        assert (
            a.request("PUT", "/images", {"id": f"r{i}", "name": "app", "tags": ["live"]})[0] == 200
        )
        wait_until(lambda: allowed(b, "app:live"), "allowed")
        status, _, _ = a.request("DELETE", f"/images/r{i}")
        assert status == 204
        deleted = time.monotonic()
        wait_until(lambda: not allowed(b, "app:live"), "revoked", timeout=10)
        took.append(time.monotonic() - deleted)
    # The bound the README states (p95); typically milliseconds.
    assert statistics.quantiles(took, n=20)[-1] < 1.0, took
    # Each revocation reached B as an applied change, not a reload.
    assert metric(b, "imagelist_replica_changes_applied_total") >= 20


def test_rows_written_with_sql_are_decided(two) -> None:
    a, b, url = two
    # As an old writer would: no reference keys; the replica computes them.
    sql(
        url,
        "INSERT INTO images (id, name, tags, created_at, updated_at) "
        "VALUES ('psql-1', 'quay.io/team/web', '{1.0,2.0}', now(), now())",
    )
    for daemon in (a, b):
        wait_until(lambda d=daemon: allowed(d, "quay.io/team/web:1.0"), "allowed")
    sql(url, "UPDATE images SET tags = '{2.0}' WHERE id = 'psql-1'")
    for daemon in (a, b):
        wait_until(lambda d=daemon: not allowed(d, "quay.io/team/web:1.0"), "tag revoked")
        assert allowed(daemon, "quay.io/team/web:2.0")
    sql(url, "DELETE FROM images WHERE id = 'psql-1'")
    for daemon in (a, b):
        wait_until(lambda d=daemon: not allowed(d, "quay.io/team/web:2.0"), "deleted")
    # TRUNCATE fires no row trigger: it asks for a full reload instead.
    assert a.request("PUT", "/images", {"id": "t", "name": "app", "tags": ["t"]})[0] == 200
    wait_until(lambda: allowed(b, "app:t"), "allowed")
    sql(url, "TRUNCATE images")
    wait_until(lambda: not allowed(b, "app:t"), "truncated")


# -- the database away -------------------------------------------------------------


ADMISSIONS = (
    ("POST", "/admission/validate", lambda image: admission_review("Pod", pod_spec([image]))),
    ("POST", "/admission/imagepolicy", lambda image: image_review(image)),
    ("POST", "/admission/gatekeeper", lambda image: provider_request(image)),
    ("GET", "/allowed?image={image}", None),
)


def decisions(daemon: Daemon, image: str) -> dict[str, tuple[int, bool | None]]:
    """Every admission endpoint's (status, allowed) for `image`."""
    out = {}
    for method, path, body in ADMISSIONS:
        target = path.format(image=urllib.parse.quote(image, safe=""))
        status, reply, _ = daemon.request(method, target, body(image) if body else None)
        verdict = None
        if status == 200:
            verdict = {
                "/admission/validate": lambda r: r["response"]["allowed"],
                "/admission/imagepolicy": lambda r: r["status"]["allowed"],
                "/admission/gatekeeper": lambda r: "error" not in r["response"]["items"][0],
            }.get(path, lambda r: r["allowed"])(reply)
        out[path] = (status, verdict)
    return out


def assert_decided(daemon: Daemon) -> None:
    for path, answer in decisions(daemon, "nginx:1.25").items():
        assert answer == (200, True), (path, answer)
    for path, answer in decisions(daemon, "nginx:6.6").items():
        assert answer == (200, False), (path, answer)


def assert_rest_503(daemon: Daemon) -> None:
    for method, path, body in (
        ("GET", "/images", None),
        ("GET", "/images/n", None),
        ("PUT", "/images", {"id": "x", "name": "n"}),
        ("DELETE", "/images/n", None),
        ("GET", "/health/ping", None),
    ):
        started = time.monotonic()
        status, reply, _ = daemon.request(method, path, body)
        assert status == 503, (method, path, reply)
        # A hung server costs one query timeout, or one connect timeout
        # (1 s each here), not a retry on top: the client's own timeout
        # must not be what ends the request.
        assert time.monotonic() - started < REST_503_WITHIN, (method, path)


@pytest.fixture
def listed(pg_cluster: PgCluster) -> Iterator[Daemon]:
    """A daemon whose replica lists nginx:1.25, current; max age 6 s."""
    daemon = Daemon("--database-url", pg_cluster.url(), *DB_OPTIONS, "--replica-max-age", "6")
    with daemon:
        wait_current(daemon)
        status, _, _ = daemon.request(
            "PUT", "/images", {"id": "n", "name": "nginx", "tags": ["1.25"]}
        )
        assert status == 200
        yield daemon


def test_stopped_database_admission_from_the_replica_then_503_after_max_age(
    listed: Daemon, pg_cluster: PgCluster
) -> None:
    daemon = listed
    pg_cluster.stop()
    assert_decided(daemon)
    assert_rest_503(daemon)
    assert daemon.wait_for_log("replica_unsynced")["reason"]
    assert metric(daemon, "imagelist_replica_fallback_decisions_total") > 0

    # Past --replica-max-age the replica is no longer trusted: 503, as before.
    wait_until(
        lambda: decisions(daemon, "nginx:1.25")["/allowed?image={image}"][0] == 503,
        "503 after max age",
    )
    for path, (status, _) in decisions(daemon, "nginx:1.25").items():
        assert status == 503, path
    assert daemon.wait_for_log("replica_max_age_exceeded")["max_age"] == 6

    pg_cluster.start()
    wait_current(daemon)
    assert daemon.wait_for_log("replica_synced")["entries"] == 1
    assert_decided(daemon)
    assert daemon.request("GET", "/images/n")[0] == 200


def test_frozen_database_admission_keeps_answering(listed: Daemon, pg_cluster: PgCluster) -> None:
    """SIGSTOP: connections hang instead of failing; decisions must not."""
    daemon = listed
    pids = cluster_pids(pg_cluster)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 4:  # through the heartbeat's timeout
            assert_decided(daemon)
        assert_rest_503(daemon)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    # The REST API is back within its bound, not at once: after a failed
    # connection attempt it answers 503 (Retry-After: 1) without trying
    # again for RETRY_HOLD, then one attempt connects and one query runs.
    # The replica's own connection may come back sooner.
    wait_until(lambda: daemon.request("GET", "/images/n")[0] == 200, "REST back", REST_BACK)
    assert time.monotonic() - resumed < REST_BACK
    wait_current(daemon)
    assert_decided(daemon)


def test_restarted_during_an_outage_answers_503_until_the_database_returns(
    pg_cluster: PgCluster,
) -> None:
    """No replica to answer from (it is not persisted): decisions are 503s,
    which the cluster's failurePolicy decides on, until the database is back."""
    url = pg_cluster.url()
    with Daemon("--database-url", url, *DB_OPTIONS) as daemon:
        wait_current(daemon)
        assert (
            daemon.request("PUT", "/images", {"id": "n", "name": "nginx", "tags": ["1.25"]})[0]
            == 200
        )
    pg_cluster.stop()
    with Daemon("--database-url", url, *DB_OPTIONS) as daemon:
        for path, (status, _) in decisions(daemon, "nginx:1.25").items():
            assert status == 503, path
        assert metric(daemon, "imagelist_replica_age_seconds") == float("inf")
        pg_cluster.start()
        wait_current(daemon)
        assert_decided(daemon)


def cluster_pids(cluster: PgCluster) -> list[int]:
    import subprocess

    with open(os.path.join(cluster.data, "postmaster.pid")) as f:
        main = int(f.readline())
    children = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True)
    return [main, *(int(p) for p in children.stdout.split())]
