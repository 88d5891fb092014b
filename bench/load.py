"""Load generators: wrk for HTTP, pgbench for PostgreSQL's own ceiling."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pgcluster import find_bindir

LUA = Path(__file__).resolve().parent / "lua" / "requests.lua"


@dataclass(frozen=True, slots=True)
class Result:
    requests: int
    seconds: float
    bytes: int
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


def need(tool: str, package: str) -> str:
    # pgbench: the one beside the server binaries the cluster runs on.
    beside = os.path.join(find_bindir(), tool)
    path = beside if os.path.exists(beside) else shutil.which(tool)
    if path is None:
        raise SystemExit(f"bench: {tool} not found: apt-get install {package}")
    return path


def write_requests(path: Path, lines: list[tuple[str, str, bytes | None]]) -> Path:
    """The file requests.lua rotates over: METHOD<TAB>PATH[<TAB>BODY] per line."""
    with open(path, "wb") as f:
        for method, target, body in lines:
            f.write(f"{method}\t{target}".encode())
            if body is not None:
                assert b"\n" not in body and b"\t" not in body
                f.write(b"\t" + body)
            f.write(b"\n")
    return path


def wrk(url: str, requests: Path, connections: int, seconds: int, threads: int = 2) -> Result:
    out = subprocess.run(
        [
            need("wrk", "wrk"),
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            url,
            "--",
            str(requests),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    line = next((x for x in out.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r = json.loads(line[len("BENCH ") :])
    errors = sum(
        r[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return Result(
        requests=r["requests"],
        seconds=r["duration_us"] / 1e6,
        bytes=r["bytes"],
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        errors=errors,
    )


# The daemon's GET /images/{id} query, for an id the seed wrote (seed.entry_id).
PGBENCH_SCRIPT = """\
\\set n random(0, {last})
SELECT id, name, tags, created_at, updated_at FROM images
 WHERE id = 'sha256:' || encode(sha256(convert_to('bench-' || :n, 'UTF8')), 'hex');
"""


def pgbench(url: str, workdir: Path, images: int, clients: int, seconds: int) -> Result:
    """PostgreSQL alone answering the primary-key lookup, prepared, with
    per-transaction logs for the percentiles."""
    script = workdir / "lookup.sql"
    script.write_text(PGBENCH_SCRIPT.format(last=images - 1))
    logs = workdir / "pgbench-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    out = subprocess.run(
        [
            need("pgbench", "postgresql"),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(seconds),
            "-f",
            str(script),
            "-l",
            "--log-prefix",
            str(logs / "tx"),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    latencies: list[int] = []
    for log in logs.iterdir():
        with open(log) as f:
            # client_id transaction_no time script_no time_epoch time_us
            latencies.extend(int(line.split()[2]) for line in f)
    shutil.rmtree(logs)
    failed = _field(out, "number of failed transactions:")
    tps = float(_field(out, "tps =").split()[0])
    latencies.sort()
    return Result(
        requests=len(latencies),
        seconds=len(latencies) / tps if tps else 0.0,
        bytes=0,
        p50_ms=_percentile(latencies, 50) / 1000,
        p99_ms=_percentile(latencies, 99) / 1000,
        errors=int(failed.split()[0]) if failed else 0,
    )


def _field(text: str, prefix: str) -> str:
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return ""


def _percentile(sorted_values: list[int], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, math.ceil(pct / 100 * len(sorted_values)) - 1)
    return float(sorted_values[max(index, 0)])
