"""Configuration that waiting cannot fix stops start-up: one clear line,
a non-zero exit, never the password."""

from __future__ import annotations

import subprocess
import sys

import pytest

from daemon import ROOT

PASSWORD = "Sekr1t-pw"


def run_daemon(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "imagelist.py"), "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("foo://x", "unsupported scheme 'foo'"),
        (f"mysql://u:{PASSWORD}@h/db", "unsupported scheme 'mysql'"),
        (f"host=a,b port=1,2,3 password={PASSWORD}", "2 hosts but 3 ports"),
        (f"host=a bogus=1 password={PASSWORD}", 'invalid connection option "bogus"'),
        (f"host=a password={PASSWORD} x", 'missing "="'),
        (f"postgresql://u:{PASSWORD}@h:99999/db", "port '99999' is not a number"),
        (f"host=a port=abc password='{PASSWORD}'", "port 'abc' is not a number"),
        (f"host=a sslmode=maybe password={PASSWORD}", "sslmode 'maybe': expected one of"),
    ],
)
def test_a_bad_database_url_exits_2_naming_the_problem(url: str, problem: str) -> None:
    done = run_daemon("--database-url", url)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("imagelist: --database-url ")
    assert problem in lines[0]
    output = done.stdout + done.stderr
    assert PASSWORD not in output
    assert "Traceback" not in output and "uncaught_exception" not in output


def test_bad_db_options_exit_2_naming_the_problem() -> None:
    done = run_daemon("--dbhost", "h", "--dbport", "54x2", "--dbpassword", PASSWORD)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "the --db* options" in done.stderr and "port '54x2' is not a number" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
