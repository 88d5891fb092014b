"""Configuration that waiting cannot fix stops start-up: one clear line,
a non-zero exit, never the password."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import psycopg2
import pytest

from daemon import ROOT, Daemon
from pgcluster import PgCluster, free_port

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


def refusal(url: str) -> str:
    """Start the daemon on `url`: it must exit non-zero before listening,
    with one storage_open_failed line; that line's error."""
    done = run_daemon("--database-url", url, timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert "listening" not in [e["event"] for e in events]
    failed = [e for e in events if e["event"] == "storage_open_failed"]
    assert len(failed) == 1, done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    return str(failed[0]["error"])


def test_an_unknown_role_or_database_stops_start_up(pg_server_url: str) -> None:
    server = urllib.parse.urlsplit(pg_server_url)
    where = f"127.0.0.1:{server.port}"
    role = server._replace(netloc=f"nobody:{PASSWORD}@{server.netloc.rpartition('@')[2]}")
    error = refusal(role._replace(path="/postgres").geturl())
    assert where in error and "'nobody'" in error and "'postgres'" in error
    assert 'role "nobody" does not exist' in error
    error = refusal(server._replace(path="/no_such_db").geturl())
    assert where in error and "'no_such_db'" in error
    assert 'database "no_such_db" does not exist' in error
    # An sslmode the server cannot meet.
    error = refusal(server._replace(query="sslmode=require").geturl())
    assert where in error and "does not support SSL" in error


def test_a_wrong_password_stops_start_up(pg_cluster: PgCluster) -> None:
    admin = psycopg2.connect(pg_cluster.url())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE ROLE pwuser LOGIN PASSWORD 'the-right-one'")
    hba = Path(pg_cluster.data) / "pg_hba.conf"
    hba.write_text("host all pwuser 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    with admin.cursor() as cur:
        cur.execute("SELECT pg_reload_conf()")
    admin.close()
    url = f"postgresql://pwuser:{PASSWORD}@127.0.0.1:{pg_cluster.port}/postgres"
    error = refusal(url)
    assert f"127.0.0.1:{pg_cluster.port}" in error and "'pwuser'" in error
    assert 'password authentication failed for user "pwuser"' in error


def test_a_refused_connection_is_retried_and_named() -> None:
    port = free_port()
    with Daemon("--database-url", f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db") as d:
        assert d.request("GET", "/health/ping")[0] == 503
    assert d.stop() in (0, None)
    text = "\n".join(d.output)
    assert f"127.0.0.1:{port}" in text and "Connection refused" in text
    assert PASSWORD not in text


def test_a_mistyped_sqlite_path_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    done = run_daemon("--database-url", f"sqlite:///{missing}/x.db")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"directory {missing} does not exist" in done.stderr
    assert not (tmp_path / "no").exists()


def test_the_sqlite_file_in_use_is_logged(tmp_path: Path) -> None:
    with Daemon("--database-url", f"sqlite:///{tmp_path}/given.db") as d:
        assert d.wait_for_log("storage_opened")["path"] == str(tmp_path / "given.db")
    # The default store: its directory is created, and the path said.
    data_home = tmp_path / "xdg"
    with Daemon(env={"XDG_DATA_HOME": str(data_home), "STATE_DIRECTORY": ""}) as d:
        opened = d.wait_for_log("storage_opened")
    assert opened["path"] == str(data_home / "imagelist" / "imagelist.db")
    assert (data_home / "imagelist" / "imagelist.db").exists()
