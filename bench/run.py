#!/usr/bin/env python3
"""imagelist benchmark: one command, a throwaway PostgreSQL, a table.

    python bench/run.py                  # 1,000 images, 10 s per row
    python bench/run.py --images 100000  # the large-list case
    python bench/run.py --smoke          # seconds; checks the suite runs
    python bench/run.py --images 100000 --only replica  # the replica's memory and load
    python bench/run.py --only decisions --rounds 5     # decisions vs /health/live, medians

Starts its own PostgreSQL cluster (never the machine's), seeds it, starts the
daemon, drives each endpoint with wrk and prints requests/s, p50 and p99 per
row, with the ceilings measured in the same run: PostgreSQL alone
(pgbench, the same primary-key lookup) and a hello-world Tornado app. Then
the same on the embedded SQLite store, and two daemons sharing one port.
Everything listens on 127.0.0.1 only and every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench import procs  # noqa: E402
from bench.load import Result, pgbench, write_requests, wrk  # noqa: E402
from bench.seed import entry, seed  # noqa: E402
from storage.migrations import RELOAD_CHANNEL  # noqa: E402

from pgcluster import PgCluster, create_database, free_port  # noqa: E402

# The old Go service on this kind of machine, for the targets.
OLD_GET_RPS = 3300
OLD_LIST_RPS = 120
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Target:
    text: str
    check: Callable[[Result], bool]


@dataclass
class Row:
    scenario: str
    store: str
    conns: int
    result: Result
    #: What it is held against, measured in the same run: (name, result).
    ceilings: list[tuple[str, Result]] = field(default_factory=list)
    target: Target | None = None
    mb_s: bool = False


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    facts: list[tuple[str, str, str]] = field(default_factory=list)  # what, value, target+met

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {format_row(row)}", file=sys.stderr, flush=True)

    def fact(self, what: str, value: str, target: str = "") -> None:
        self.facts.append((what, value, target))
        print(f"  {what}: {value} {target}", file=sys.stderr, flush=True)


def met(ok: bool) -> str:
    return "yes" if ok else "NO"


def format_row(row: Row) -> str:
    r = row.result
    ratio = ", ".join(f"{r.rate / c.rate:.2f} x {name}" for name, c in row.ceilings if c.rate)
    target = f"{row.target.text}: {met(row.target.check(r))}" if row.target else ""
    mb_s = f"{r.mb_per_s:.1f}" if row.mb_s else ""
    cells = [
        row.scenario,
        row.store,
        str(row.conns),
        f"{r.rate:,.0f}",
        f"{r.p50_ms:.2f}",
        f"{r.p99_ms:.2f}",
        str(r.errors),
        mb_s,
        ratio,
        target,
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| scenario | store | conns | req/s | p50 ms | p99 ms | errors | MB/s | vs ceiling | target |\n"
    "|---|---|--:|--:|--:|--:|--:|--:|---|---|"
)


def print_table(report: Report, title: str) -> None:
    print(f"\n{title}\n")
    if report.rows:  # --only replica measures no requests
        print(HEADER)
        for row in report.rows:
            print(format_row(row))
    print("\n| measurement | value | target |\n|---|--:|---|")
    for what, value, target in report.facts:
        print(f"| {what} | {value} | {target} |")
    print()


# -- requests -------------------------------------------------------------------


def admission_review(uid: int, images: list[str]) -> bytes:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"bench-{uid}", "namespace": "bench"},
        "spec": {"containers": [{"name": f"c{k}", "image": im} for k, im in enumerate(images)]},
    }
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": f"00000000-0000-0000-0000-{uid:012d}",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "bench",
                "operation": "CREATE",
                "object": pod,
            },
        }
    )


def request_files(workdir: Path, images: int, sample: int) -> dict[str, Path]:
    """One file of requests per scenario, over `sample` random seeded entries."""
    rng = random.Random(7)
    picked = [entry(i) for i in rng.sample(range(images), min(sample, images))]
    q = urllib.parse.quote

    def get(paths: list[str]) -> list[tuple[str, str, bytes | None]]:
        return [("GET", p, None) for p in paths]

    reviews = [
        (
            "POST",
            "/admission/validate",
            admission_review(k, [e.reference for e in rng.sample(picked, 10)]),
        )
        for k in range(min(200, len(picked)))
    ]
    # The same reviews with one image no entry allows: each is a denial,
    # confirmed against the database (or, in an outage, by the replica).
    mixed = [
        (
            "POST",
            "/admission/validate",
            admission_review(
                k, [*(e.reference for e in rng.sample(picked, 9)), f"unlisted.example/app:{k}"]
            ),
        )
        for k in range(min(200, len(picked)))
    ]
    files = {
        "live": get(["/health/live"]),
        "review_mixed": mixed,
        "id": get([f"/images/{e.id}" for e in picked]),
        "name": get([f"/images?name={q(e.name, safe='')}" for e in picked]),
        "list": get(["/images"]),
        "ping": get(["/health/ping"]),
        "allowed": get([f"/allowed?image={q(e.reference, safe='')}" for e in picked]),
        "review": reviews,
        "hello": get(["/"]),
    }
    return {k: write_requests(workdir / f"{k}.txt", v) for k, v in files.items()}


# -- the run ----------------------------------------------------------------------


@dataclass
class Settings:
    images: int
    seconds: int
    conns: int
    low_conns: int
    list_conns: int
    pool_size: int
    smoke: bool
    keep: bool
    only: str | None = None
    rounds: int = 5


def rps_p99(rps: float, p99: float) -> Target:
    return Target(f">= {rps:,.0f}/s, p99 < {p99:g} ms", lambda r: r.rate >= rps and r.p99_ms < p99)


def p99_under(ms: float) -> Target:
    return Target(f"p99 < {ms:g} ms", lambda r: r.p99_ms < ms)


def rps_at_least(rps: float) -> Target:
    return Target(f">= {rps:,.0f}/s", lambda r: r.rate >= rps)


def at_least_x(fraction: float, of: str, base: Result, p99: float | None = None) -> Target:
    text = f">= {fraction:g} x {of}" + (f", p99 < {p99:g} ms" if p99 else "")
    return Target(
        text,
        lambda r: r.rate >= fraction * base.rate and (p99 is None or r.p99_ms < p99),
    )


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def ask(port: int, method: str, path: str, body: object = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        raw = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=raw)
        reply = conn.getresponse()
        data = reply.read()
        return reply.status, (json.loads(data) if data else None)
    finally:
        conn.close()


def replica_metric(port: int, name: str) -> float | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        for line in conn.getresponse().read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None
    finally:
        conn.close()


def wait_current(port: int, timeout: float = 120) -> None:
    """Until the daemon's admission replica is loaded and current."""
    deadline = time.monotonic() + timeout
    while replica_metric(port, "imagelist_replica_current") != 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the replica never became current")
        time.sleep(0.05)


def first_load(proc: procs.Proc) -> dict[str, object]:
    """The first full load's replica_loaded log line (seconds, cpu_seconds)."""
    for line in proc.log_path.read_text().splitlines():
        if '"replica_loaded"' in line:
            return dict(json.loads(line))
    raise RuntimeError(f"no replica_loaded line in {proc.log_path}")


def empty_daemon_rss(workdir: Path, cluster: PgCluster) -> int:
    """RSS of the same daemon with a current replica of an empty list: what
    the replica's extra memory is measured against."""
    empty_db = create_database(cluster.url(), f"imagelist_bench_empty_{os.getpid()}")
    empty = procs.daemon("imagelist-empty", workdir, free_port(), empty_db)
    with running(empty):
        wait_current(hello_port_of(empty))
        return procs.rss(hello_port_of(empty))


def replica_facts(s: Settings, report: Report, daemon: procs.Proc, empty_rss: int) -> None:
    """The replica's first full load in a running daemon: its wall and CPU
    seconds, and the RSS it adds over `empty_rss`."""
    port = hello_port_of(daemon)
    wait_current(port)
    line = first_load(daemon)
    loaded = float(line["seconds"])  # type: ignore[arg-type]
    cpu = line.get("cpu_seconds")
    extra = procs.rss(port) - empty_rss
    big = s.images >= 100_000
    report.fact(
        f"replica: first full load of {s.images:,} entries",
        f"{loaded:.2f} s",
        f"< 2 s: {met(loaded < 2)}" if big else "",
    )
    report.fact(
        f"replica: CPU seconds of that load, {s.images:,} entries",
        "n/a" if cpu is None else f"{float(cpu):.2f} s",  # type: ignore[arg-type]
    )
    report.fact(
        f"replica: RSS over an empty list's daemon, {s.images:,} entries",
        f"{extra / MB:.1f} MB",
        f"< 60 MB: {met(extra < 60 * MB)}" if big else "",
    )
    report.fact("load average (1, 5, 15 min) after the load", loadavg())


def loadavg() -> str:
    """The machine's load average: how shared the CPUs were."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def run_replica(s: Settings, workdir: Path, report: Report) -> None:
    """Only the replica's memory and first load, on a throwaway PostgreSQL:
    the daemon starts before the replica fills, as in production."""
    with seeded_cluster(s, report, "replica") as (cluster, db):
        report.fact("load average (1, 5, 15 min) before", loadavg())
        empty_rss = empty_daemon_rss(workdir, cluster)
        report.fact("daemon RSS, empty list, replica current", f"{empty_rss / MB:.1f} MB")
        daemon = procs.daemon("imagelist-pg", workdir, free_port(), db)
        with running(daemon):
            report.fact("start-up to ready (PostgreSQL)", f"{daemon.ready_seconds * 1000:.0f} ms")
            replica_facts(s, report, daemon, empty_rss)
            reload_facts(s, report, daemon, db, empty_rss)


def reload_facts(s: Settings, report: Report, daemon: procs.Proc, db: str, empty_rss: int) -> None:
    """A full reload of the running replica (as after a lost LISTEN
    connection): the new index is built beside the old one and swapped in,
    so the daemon's peak RSS (VmHWM) is what to provision for."""
    port = hello_port_of(daemon)
    before = replica_metric(port, "imagelist_replica_reloads_total") or 0
    conn = psycopg2.connect(db)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"NOTIFY {RELOAD_CHANNEL}")
    conn.close()
    deadline = time.monotonic() + 120
    while (replica_metric(port, "imagelist_replica_reloads_total") or 0) <= before:
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not reload")
        time.sleep(0.05)
    peak = peak_rss(daemon)
    report.fact(
        f"replica: peak RSS over an empty list's daemon, first load and a full reload, "
        f"{s.images:,} entries",
        f"{(peak - empty_rss) / MB:.1f} MB",
    )
    report.fact(
        f"replica: RSS over an empty list's daemon after the reload, {s.images:,} entries",
        f"{(procs.rss(port) - empty_rss) / MB:.1f} MB",
    )


def peak_rss(daemon: procs.Proc) -> int:
    """The process's peak resident memory since it started (VmHWM), bytes."""
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


#: The decision path and the floor it is held against, by request file.
DECISION_ROWS = {
    "live": "GET /health/live (no database)",
    "allowed": "GET /allowed?image=",
    "review": "POST AdmissionReview, 10 images",
}


def run_decision_rounds(s: Settings, workdir: Path, report: Report, files: dict[str, Path]) -> None:
    """The decision path against the same daemon's /health/live, in
    interleaved rounds (the order reversed every other round), reported as
    medians: one run of each on a shared 2-core machine is too noisy for a
    ratio. A p99 at `conns` connections cannot beat about 1.5 x conns / rate,
    so each row's floor is given beside its p99."""
    with seeded_cluster(s, report, "decisions") as (_, db):
        port = free_port()
        daemon = procs.daemon("imagelist-pg", workdir, port, db, "--db-pool-size", str(s.pool_size))
        with running(daemon):
            wait_current(hello_port_of(daemon))
            warm_up(port, files, s)
            results: dict[str, list[Result]] = {name: [] for name in DECISION_ROWS}
            for r in range(s.rounds):
                for name in list(DECISION_ROWS)[:: 1 if r % 2 == 0 else -1]:
                    results[name].append(wrk(url(port), files[name], s.conns, s.seconds))
            report.fact("load average (1, 5, 15 min) after the rounds", loadavg())
    lives = results["live"]
    targets: dict[str, tuple[float, float | None]] = {"allowed": (0.8, None), "review": (0.6, 25.0)}
    for name, scenario in DECISION_ROWS.items():
        rates = [r.rate for r in results[name]]
        p99 = statistics.median(r.p99_ms for r in results[name])
        rate = statistics.median(rates)
        floor = 1.5 * s.conns / rate * 1000
        value = f"{rate:,.0f}/s, p99 {p99:.1f} ms (floor {floor:.1f} ms)"
        target = ""
        if name in targets:
            # Each round's ratio to that round's /health/live, then the median.
            ratio = statistics.median(
                x.rate / live.rate for x, live in zip(results[name], lives, strict=True)
            )
            least, p99_max = targets[name]
            value += f", {ratio:.2f} x /health/live"
            target = f">= {least} x /health/live: {met(ratio >= least)}"
            if p99_max is not None:
                target += f"; p99 < {p99_max:g} ms: {met(p99 < p99_max)}"
        report.fact(f"{scenario}, median of {s.rounds} rounds", value, target)


@contextlib.contextmanager
def seeded_cluster(s: Settings, report: Report, what: str) -> Iterator[tuple[PgCluster, str]]:
    """A throwaway PostgreSQL cluster holding `s.images` seeded images, and
    the URL of their database; destroyed afterwards."""
    print(f"{what}: a throwaway cluster, {s.images:,} images", file=sys.stderr)
    cluster = PgCluster().init()
    cluster.start()
    try:
        cluster.wait_ready()
        db = create_database(cluster.url(), "imagelist_bench")
        started = time.perf_counter()
        seed(db, s.images)
        report.fact(
            "seeded (PostgreSQL)", f"{s.images:,} images in {time.perf_counter() - started:.1f} s"
        )
        yield cluster, db
    finally:
        cluster.destroy()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@contextlib.contextmanager
def background_wrk(port: int, requests: Path, conns: int, seconds: int) -> Iterator[list[Result]]:
    """wrk running in a thread; its result lands in the yielded list."""
    out: list[Result] = []
    thread = threading.Thread(target=lambda: out.append(wrk(url(port), requests, conns, seconds)))
    thread.start()
    try:
        yield out
    finally:
        thread.join()


def warm_up(port: int, files: dict[str, Path], s: Settings) -> None:
    """Fill the pool and Python's caches before anything is measured."""
    if s.smoke:
        return
    for name in ("id", "allowed", "review"):
        wrk(url(port), files[name], s.conns, 1)


@contextlib.contextmanager
def running(proc: procs.Proc) -> Iterator[procs.Proc]:
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def run_postgres(s: Settings, workdir: Path, report: Report, files: dict[str, Path]) -> None:
    with seeded_cluster(s, report, "PostgreSQL") as (cluster, db):
        pg = pgbench(db, workdir, s.images, s.pool_size, s.seconds)
        report.add(Row("pgbench: SELECT by id (prepared)", "postgres", s.pool_size, pg))
        with running(procs.hello(workdir, free_port())) as hello:
            hellos = {}
            for conns in (s.conns,) if s.smoke else (s.conns, s.low_conns):
                hellos[conns] = wrk(url(hello_port(hello)), files["hello"], conns, s.seconds)
                report.add(Row("Tornado hello world", "-", conns, hellos[conns]))

        port = free_port()
        daemon = procs.daemon("imagelist-pg", workdir, port, db, "--db-pool-size", str(s.pool_size))
        empty_rss = empty_daemon_rss(workdir, cluster)
        with running(daemon):
            report.fact("start-up to ready (PostgreSQL)", f"{daemon.ready_seconds * 1000:.0f} ms")
            replica_facts(s, report, daemon, empty_rss)
            warm_up(port, files, s)
            base_rss = procs.rss(port)

            def measure(
                scenario: str,
                name: str,
                conns: int,
                *,
                target: Target | None = None,
                vs: str = "hello",
                mb_s: bool = False,
            ) -> Result:
                result = wrk(url(port), files[name], conns, s.seconds)
                ceilings = [("hello", hellos[conns])] if conns in hellos else []
                if vs == "pgbench":
                    ceilings.append(("pgbench", pg))
                report.add(Row(scenario, "postgres", conns, result, ceilings, target, mb_s))
                if vs == "live":
                    ceilings.append(("/health/live", lives[conns]))
                return result

            big = s.images >= 10_000
            points = procs.PeakRss(port)
            lives = {s.conns: measure("GET /health/live (no database)", "live", s.conns)}
            with points.sampling():
                measure(
                    "GET /images/{id}",
                    "id",
                    s.conns,
                    target=rps_p99(1.5 * OLD_GET_RPS, 25),
                    vs="pgbench",
                )
                measure(
                    "GET /allowed?image=",
                    "allowed",
                    s.conns,
                    target=at_least_x(0.8, "/health/live", lives[s.conns]),
                    vs="live",
                )
                measure(
                    "POST AdmissionReview, 10 images",
                    "review",
                    s.conns,
                    target=at_least_x(0.6, "/health/live", lives[s.conns], p99=25),
                    vs="live",
                )
                measure(
                    "POST AdmissionReview, 9 listed + 1 not (denial confirmed)",
                    "review_mixed",
                    s.conns,
                    vs="live",
                )
                measure("GET /images?name=", "name", s.conns)
                measure("GET /health/ping", "ping", s.conns)
                if not s.smoke:
                    measure(
                        "GET /images/{id}", "id", s.low_conns, target=p99_under(2), vs="pgbench"
                    )
                    measure(
                        "GET /allowed?image=",
                        "allowed",
                        s.low_conns,
                        target=p99_under(2),
                        vs="pgbench",
                    )
            peak_small = points.peak

            # The whole list last, sampled on its own: its growth is the point.
            before = procs.rss(port)
            listing = procs.PeakRss(port)
            with listing.sampling():
                measure(
                    f"GET /images (all {s.images:,})",
                    "list",
                    s.list_conns if big else s.conns,
                    target=None if big else rps_at_least(3 * OLD_LIST_RPS),
                    mb_s=True,
                )
            growth = listing.peak - before
            report.fact("daemon RSS after warm-up (PostgreSQL)", f"{base_rss / MB:.1f} MB")
            report.fact("daemon peak RSS, point queries", f"{peak_small / MB:.1f} MB")
            report.fact(
                f"daemon peak RSS growth serving the full list of {s.images:,}",
                f"{growth / MB:.1f} MB",
                f"< 50 MB: {met(growth < 50 * MB)}" if big else "",
            )

        run_two_instances(s, workdir, report, files, db)
        run_revocations(s, workdir, report, files, db)
        run_outage(s, workdir, report, files, db, cluster)


def hello_port(proc: procs.Proc) -> int:
    return int(proc.argv[-1])


def hello_port_of(proc: procs.Proc) -> int:
    """A daemon's port, from its --listen argument."""
    return int(proc.argv[proc.argv.index("--listen") + 1].rpartition(":")[2])


def run_revocations(
    s: Settings, workdir: Path, report: Report, files: dict[str, Path], db: str
) -> None:
    """A DELETE through instance A, until instance B stops allowing, while
    B serves /allowed at full load: the revocation's propagation time."""
    port_a, port_b = free_port(), free_port()
    a = procs.daemon("revoke-a", workdir, port_a, db, "--db-pool-size", str(s.pool_size))
    b = procs.daemon("revoke-b", workdir, port_b, db, "--db-pool-size", str(s.pool_size))
    image = "revoked.example/app:live"
    path = "/allowed?image=" + urllib.parse.quote(image, safe="")
    took: list[float] = []
    with running(a), running(b):
        wait_current(port_a)
        wait_current(port_b)
        with background_wrk(port_b, files["allowed"], s.conns, s.seconds) as result:
            stop = time.monotonic() + s.seconds - 1
            while len(took) < 5 or (time.monotonic() < stop and len(took) < 200):
                entry = {
                    "id": f"revoke-{len(took)}",
                    "name": "revoked.example/app",
                    "tags": ["live"],
                }
                assert ask(port_a, "PUT", "/images", entry)[0] == 200
                while not ask(port_b, "GET", path)[1]["allowed"]:  # type: ignore[index]
                    pass
                assert ask(port_a, "DELETE", f"/images/{entry['id']}")[0] == 204
                deleted = time.perf_counter()
                while ask(port_b, "GET", path)[1]["allowed"]:  # type: ignore[index]
                    pass
                took.append(time.perf_counter() - deleted)
        report.add(Row("GET /allowed?image= on B, while A revokes", "postgres", s.conns, result[0]))
    p50, p99 = percentile(took, 50) * 1000, percentile(took, 99) * 1000
    report.fact(
        f"revocation propagation A -> B under load ({len(took)} DELETEs), p50 / p99",
        f"{p50:.1f} / {p99:.1f} ms",
        f"p99 < 1000 ms: {met(p99 < 1000)}",
    )


def run_outage(
    s: Settings,
    workdir: Path,
    report: Report,
    files: dict[str, Path],
    db: str,
    cluster: PgCluster,
) -> None:
    """AdmissionReviews (one denial each) while PostgreSQL is stopped for
    most of the run: every one must be answered (wrk counts non-2xx)."""
    port = free_port()
    daemon = procs.daemon(
        "outage", workdir, port, db, "--db-timeout", "1", "--db-connect-timeout", "1"
    )
    with running(daemon):
        wait_current(port)
        with background_wrk(port, files["review_mixed"], s.conns, s.seconds) as result:
            time.sleep(min(1.0, s.seconds / 4))
            cluster.stop()
            stopped = time.monotonic()
            time.sleep(max(0.5, s.seconds - 2.5))
            down = time.monotonic() - stopped
            cluster.start()
        row = result[0]
        report.add(
            Row(
                f"POST AdmissionReview (9 + 1 denied), PostgreSQL stopped {down:.0f} s of it",
                "postgres",
                s.conns,
                row,
                target=Target("100% answered, none 503", lambda r: r.errors == 0),
            )
        )


def run_two_instances(
    s: Settings, workdir: Path, report: Report, files: dict[str, Path], db: str
) -> None:
    """1 vs 2 daemons on one port (SO_REUSEPORT), as imagelist@.service runs them."""
    port = free_port()
    args = ("--reuse-port", "--db-pool-size", str(s.pool_size))
    one = procs.daemon("reuse-1", workdir, port, db, *args)
    two = procs.daemon("reuse-2", workdir, port, db, *args)
    with running(one):
        warm_up(port, files, s)
        single = wrk(url(port), files["id"], s.conns, s.seconds)
        report.add(Row("GET /images/{id}, 1 instance --reuse-port", "postgres", s.conns, single))
        with running(two):
            warm_up(port, files, s)
            double = wrk(url(port), files["id"], s.conns, s.seconds)
            report.add(
                Row(
                    "GET /images/{id}, 2 instances --reuse-port",
                    "postgres",
                    s.conns,
                    double,
                    [("1 instance", single)],
                )
            )


def run_sqlite(s: Settings, workdir: Path, report: Report, files: dict[str, Path]) -> None:
    print(f"SQLite: embedded store, {s.images:,} images", file=sys.stderr)
    db = f"sqlite:///{workdir}/imagelist.db"
    seed(db, s.images)
    # Start-up to ready on an existing store, as after a reboot.
    port = free_port()
    daemon = procs.daemon("imagelist-sqlite", workdir, port, db)
    with running(daemon):
        report.fact(
            "start-up to ready (SQLite)",
            f"{daemon.ready_seconds * 1000:.0f} ms",
            f"< 1000 ms: {met(daemon.ready_seconds < 1)}",
        )
        warm_up(port, files, s)
        for scenario, name in (
            ("GET /images/{id}", "id"),
            ("GET /allowed?image=", "allowed"),
            ("POST AdmissionReview, 10 images", "review"),
        ):
            report.add(
                Row(scenario, "sqlite", s.conns, wrk(url(port), files[name], s.conns, s.seconds))
            )
        if s.images < 10_000:
            report.add(
                Row(
                    f"GET /images (all {s.images:,})",
                    "sqlite",
                    s.conns,
                    wrk(url(port), files["list"], s.conns, s.seconds),
                    mb_s=True,
                )
            )


def parse_args(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=1000, help="entries to seed (default 1000)")
    p.add_argument("--seconds", type=int, default=10, help="wrk duration per row (default 10)")
    p.add_argument("--conns", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--low-conns", type=int, default=2, help="the low-concurrency rows (default 2)")
    p.add_argument(
        "--list-conns",
        type=int,
        default=4,
        help="connections for the full list when --images >= 10000 (default 4)",
    )
    p.add_argument("--db-pool-size", type=int, default=10, help="the daemon's pool (default 10)")
    p.add_argument("--smoke", action="store_true", help="100 images, 1 s per row: checks it runs")
    p.add_argument("--keep", action="store_true", help="keep the work directory (daemon logs)")
    p.add_argument(
        "--only",
        choices=["replica", "decisions"],
        help="replica: only the replica's first load (seconds, CPU seconds) and extra RSS; "
        "decisions: /allowed and AdmissionReview against /health/live in interleaved rounds",
    )
    p.add_argument("--rounds", type=int, default=5, help="rounds for --only decisions (default 5)")
    ns = p.parse_args(argv)
    if ns.smoke:
        ns.images, ns.seconds, ns.conns = 100, 1, 8
    return Settings(
        images=ns.images,
        seconds=ns.seconds,
        conns=ns.conns,
        low_conns=ns.low_conns,
        list_conns=ns.list_conns,
        pool_size=ns.db_pool_size,
        smoke=ns.smoke,
        keep=ns.keep,
        only=ns.only,
        rounds=ns.rounds,
    )


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="imagelist-bench-"))
    report = Report()
    try:
        if s.only == "replica":
            run_replica(s, workdir, report)
        elif s.only == "decisions":
            run_decision_rounds(s, workdir, report, request_files(workdir, s.images, 10_000))
        else:
            files = request_files(workdir, s.images, 10_000)
            run_postgres(s, workdir, report, files)
            run_sqlite(s, workdir, report, files)
    finally:
        if s.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    title = (
        f"imagelist benchmark: {s.images:,} images, wrk 2 threads, {s.seconds} s per row, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print_table(report, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
