"""Fuzz stage: schemathesis drives openapi.yaml against the running
daemon on a throwaway PostgreSQL, with auth on. No input may produce a 5xx,
every response must conform to the document, and the daemon must be alive
and clean (no error log line, no traceback) afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from daemon import ROOT, Daemon
from pgcluster import create_database

TOKEN = "fuzz-" + uuid.uuid4().hex
EXAMPLES = int(os.environ.get("IMAGELIST_FUZZ_EXAMPLES", "150"))
SEED = os.environ.get("IMAGELIST_FUZZ_SEED", "20261126")


@pytest.fixture(scope="module")
def fuzz_daemon(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory):
    url = create_database(pg_server_url, f"imagelist_fuzz_{uuid.uuid4().hex[:8]}")
    tokens = tmp_path_factory.mktemp("fuzz") / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - name: fuzzer\n    token: '{TOKEN}'\n")
    with Daemon(
        "--database-url", url, "--tokens-file", str(tokens), "--max-body-size", "65536"
    ) as d:
        yield d


def schemathesis(d: Daemon, workdir: Path, *args: str) -> tuple[int, str]:
    st = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(st),
        "--config-file",
        str(ROOT / "tests" / "schemathesis.toml"),
        "run",
        str(ROOT / "openapi.yaml"),
        "--url",
        f"http://127.0.0.1:{d.port}",
        "--checks",
        "all",
        "--generation-database",
        "none",
        "--seed",
        SEED,
        "--max-examples",
        str(EXAMPLES),
        "--no-color",
        "--request-timeout",
        "10",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=900)
    return out.returncode, out.stdout + out.stderr


def generated(output: str) -> int:
    match = re.search(r"(\d+) generated", output)
    assert match, output[-3000:]
    return int(match.group(1))


def requests_served(d: Daemon) -> list[dict]:
    return [e for e in d.logs() if e.get("event") == "request"]


def assert_daemon_clean(d: Daemon) -> None:
    status, _, _ = d.request("GET", "/health/ping")
    assert status == 200, "daemon unhealthy after fuzzing"
    logs = d.logs()  # every line is JSON, or this raises
    server_errors = [e for e in logs if e.get("event") == "request" and e["status"] >= 500]
    assert server_errors == []
    assert [e for e in logs if e.get("level") in ("error", "critical")] == []
    assert not any("Traceback" in line for line in d.output)
    assert TOKEN not in "\n".join(d.output)


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("all", ()),
        # The hostile pass: only schema-violating data, NUL bytes allowed.
        ("negative", ("--generation-allow-x00", "true")),
    ],
)
def test_openapi_fuzz(fuzz_daemon: Daemon, tmp_path: Path, mode: str, extra: tuple) -> None:
    before = len(requests_served(fuzz_daemon))
    code, output = schemathesis(fuzz_daemon, tmp_path, "--mode", mode, *extra)
    count = generated(output)
    served = requests_served(fuzz_daemon)[before:]
    statuses = sorted({e["status"] for e in served})
    print(f"\nfuzz[{mode}]: {count} test cases, {len(served)} requests, statuses {statuses}")
    assert code == 0, output[-6000:]
    assert count >= 1000
    assert_daemon_clean(fuzz_daemon)
