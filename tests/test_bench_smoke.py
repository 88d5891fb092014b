"""bench/run.py --smoke: the benchmark runs end to end and prints its table.

No numbers are checked (no timed assertions): only that every row and
measurement is there and that no request failed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_prints_the_whole_table() -> None:
    assert shutil.which("wrk"), "wrk not found: apt-get install wrk"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,  # bounds a hang; the run takes about 20 s
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| scenario | store | conns | req/s | p50 ms | p99 ms | errors |" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    by_name = {(r[0].strip(), r[1].strip()): r for r in rows if len(r) >= 7}
    for scenario, store in [
        ("pgbench: SELECT by id (prepared)", "postgres"),
        ("Tornado hello world", "-"),
        ("GET /images/{id}", "postgres"),
        ("GET /allowed?image=", "postgres"),
        ("POST AdmissionReview, 10 images", "postgres"),
        ("GET /images?name=", "postgres"),
        ("GET /health/ping", "postgres"),
        ("GET /images (all 100)", "postgres"),
        ("GET /images/{id}, 1 instance --reuse-port", "postgres"),
        ("GET /images/{id}, 2 instances --reuse-port", "postgres"),
        ("GET /health/live (no database)", "postgres"),
        ("GET /allowed?image= on B, while A revokes", "postgres"),
        ("GET /images/{id}", "sqlite"),
        ("GET /allowed?image=", "sqlite"),
        ("GET /images (all 100)", "sqlite"),
    ]:
        row = by_name[(scenario, store)]
        assert float(row[3].replace(",", "")) > 0, row  # requests were answered
        assert row[6].strip() == "0", f"failed requests: {row}"
    for measurement in ("start-up to ready (SQLite)", "start-up to ready (PostgreSQL)"):
        assert f"| {measurement} |" in out
    assert "daemon peak RSS growth serving the full list" in out
    assert "revocation propagation A -> B under load" in out
    assert "replica: first full load of 100 entries" in out
    outage = next(line for line in out.splitlines() if "PostgreSQL stopped" in line)
    assert outage.split("|")[7].strip() == "0", outage  # every review answered


def bench_facts(*options: str) -> tuple[dict[str, tuple[str, str]], str]:
    """Run bench/run.py with `options`: its measurements table (what ->
    value, target) and its whole output."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), *options],
        capture_output=True,
        text=True,
        timeout=300,  # bounds a hang; these runs take a few seconds
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = {
        cells[1].strip(): (cells[2].strip(), cells[3].strip() if len(cells) > 4 else "")
        for cells in (line.split("|") for line in done.stdout.splitlines())
        if cells[0] == "" and len(cells) >= 4 and cells[1].startswith(" ")
    }
    return facts, done.stdout


def test_only_replica_reports_the_load_and_its_memory() -> None:
    measured, out = bench_facts("--images", "500", "--only", "replica")
    facts = {what: value for what, (value, _) in measured.items()}
    assert facts["seeded (PostgreSQL)"].startswith("500 images")
    assert facts["replica: first full load of 500 entries"].endswith(" s")
    # The daemon logged the load's CPU time, so it is a number, not "n/a".
    cpu = facts["replica: CPU seconds of that load, 500 entries"]
    assert float(cpu.removesuffix(" s")) >= 0, cpu
    assert facts["replica: RSS over an empty list's daemon, 500 entries"].endswith(" MB")
    # A full reload happened (the run waits for it) and its peak was read.
    over = "replica: peak RSS over an empty list's daemon, first load and a full reload"
    assert facts[f"{over}, 500 entries"].endswith(" MB")
    after = "replica: RSS over an empty list's daemon after the reload, 500 entries"
    assert facts[after].endswith(" MB")
    assert len(facts["load average (1, 5, 15 min) after the load"].split(" / ")) == 3
    assert "| scenario |" not in out  # no request rows in this mode


DECISIONS = ("--only", "decisions", "--rounds", "2")


def test_only_decisions_reports_medians_of_interleaved_rounds() -> None:
    facts, _ = bench_facts("--smoke", *DECISIONS)
    live, _ = facts["GET /health/live (no database), median of 2 rounds"]
    assert "/s, p99 " in live and "(floor " in live, live
    for scenario in ("GET /allowed?image=", "POST AdmissionReview, 10 images"):
        value, target = facts[f"{scenario}, median of 2 rounds"]
        assert value.endswith(" x /health/live"), value
        assert target.startswith(">= 0."), target
