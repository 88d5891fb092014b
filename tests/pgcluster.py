"""A throwaway PostgreSQL cluster for the tests: initdb, start, stop, restart.

Written here rather than taken from pytest-postgresql because the tests
must stop and restart the server under a running app, and because
PostgreSQL refuses to run as root (CI runs as root): every server command
runs as the unprivileged `postgres` OS user then, on a data directory that
user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg2


def find_bindir() -> str:
    """Debian keeps server binaries in /usr/lib/postgresql/<v>/bin, off PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for path in reversed(candidates):
        if os.path.exists(os.path.join(path, "initdb")):
            return path
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(os.path.realpath(initdb))
    raise RuntimeError(
        "PostgreSQL server binaries not found: apt-get install postgresql "
        "(or set IMAGELIST_TEST_DATABASE_URL)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = free_port()
        self.base = tempfile.mkdtemp(prefix="imagelist-pg-")
        self.data = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "server.log")
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chmod(self.base, 0o755)  # noqa: S103 - the postgres user must enter it
            os.chown(self.base, entry.pw_uid, entry.pw_gid)

    def _cmd(self, *args: str) -> list[str]:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        return ["runuser", "-u", self._user, "--", *cmd] if self._user else cmd

    def _run(self, *args: str) -> None:
        subprocess.run(
            self._cmd(*args),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.base,
        )

    def init(self) -> PgCluster:
        self._run(
            "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        return self

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return os.path.exists(os.path.join(self.data, "postmaster.pid"))

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def create_database(url: str, name: str) -> str:
    """CREATE DATABASE `name` on the server `url` names; return its URL."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def reset_postgres(url: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('images') IS NOT NULL")
        (exists,) = cur.fetchone()
        if exists:
            cur.execute("TRUNCATE images")
        cur.execute("SELECT to_regclass('image_events') IS NOT NULL")
        (exists,) = cur.fetchone()
        if exists:
            # The audit trail refuses TRUNCATE unless the transaction says it
            # prunes (the retention prune's way through).
            cur.execute(
                "BEGIN; SELECT set_config('imagelist.prune', 'on', true);"
                " TRUNCATE image_events; COMMIT"
            )
    conn.close()
