"""Descriptor exhaustion against the real daemon under a low RLIMIT_NOFILE
(prlimit): idle connections cannot lock clients out, and running out of
descriptors neither spins the CPU nor floods the log."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tokenfiles import bearer, entry, tokens_yaml, write_in_place

from daemon import Daemon


class LimitedDaemon(Daemon):
    def __init__(self, *args: str, nofile: str) -> None:
        super().__init__(*args)
        self.nofile = nofile

    def command(self) -> list[str]:
        # prlimit execs the daemon: the same process, with the limit set.
        return ["prlimit", f"--nofile={self.nofile}", "--", *super().command()]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that never send a byte (or as many as connect)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def quiet_and_serving(d: Daemon, seconds: float = 2.0) -> tuple[float, int]:
    """(CPU seconds the daemon used, log lines it wrote) over `seconds`."""
    assert d.proc is not None
    cpu, lines = cpu_seconds(d.proc.pid), len(d.output)
    time.sleep(seconds)
    return cpu_seconds(d.proc.pid) - cpu, len(d.output) - lines


def test_idle_connections_cannot_lock_clients_out(tmp_path: Path) -> None:
    with LimitedDaemon("--database-url", f"sqlite:///{tmp_path}/db", nofile="256:256") as d:
        assert d.proc is not None
        with idle_connections(d.port, 400):
            # A new client evicts the oldest idle connection and is served.
            for _ in range(5):
                assert d.request("GET", "/health/live", timeout=10)[0] == 200
            assert d.request("PUT", "/images", {"id": "a", "name": "n"})[0] == 200
            cpu, lines = quiet_and_serving(d)
            assert cpu < 0.5, f"daemon used {cpu:.2f} s of CPU in 2 s while idle connections wait"
            assert lines < 10
        d.wait_status("/health/ping", 200, timeout=10)
    limit = d.wait_for_log("connection_limit")["max_connections"]
    assert limit < 256 - 64  # headroom for the store, files and the watcher
    warnings = [e for e in d.logs() if e["event"] == "connection_limit" and "action" in e]
    assert warnings and len(warnings) < 10  # said, not flooded
    assert "accept_failed" not in {e["event"] for e in d.logs()}


def test_out_of_descriptors_backs_off_and_recovers(tmp_path: Path) -> None:
    """--max-connections set above what the limit allows: accept() itself
    fails with EMFILE, and the daemon must neither spin nor flood the log."""
    with LimitedDaemon(
        "--database-url", f"sqlite:///{tmp_path}/db", "--max-connections", "5000", nofile="96:96"
    ) as d:
        assert d.proc is not None
        with idle_connections(d.port, 150):
            cpu, lines = quiet_and_serving(d, 3.0)
            assert cpu < 0.75, f"daemon used {cpu:.2f} s of CPU in 3 s: spinning on EMFILE"
            assert lines <= 6, d.output[-10:]
        # The attackers left: served again without a restart.
        d.wait_status("/health/live", 200, timeout=10)
    failed = [e for e in d.logs() if e["event"] == "accept_failed"]
    assert failed and "Too many open files" in failed[0]["error"]


def test_the_soft_descriptor_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    with LimitedDaemon("--database-url", f"sqlite:///{tmp_path}/db", nofile="128:2048") as d:
        assert d.proc is not None
        assert fd_limits(d.proc.pid) == (2048, 2048)
        assert d.wait_for_log("connection_limit")["fd_limit"] == 2048


def test_a_revocation_that_met_exhaustion_is_applied_afterwards(tmp_path: Path) -> None:
    """The tokens-file reload failed with EMFILE during an attack and was
    never retried: the revoked token kept working until SIGHUP."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(tokens_yaml(entry("ci", "Revoked-Soon-Token"), entry("other", "Other-T0ken")))
    with LimitedDaemon(
        "--database-url",
        f"sqlite:///{tmp_path}/db",
        "--tokens-file",
        str(tokens),
        "--max-connections",
        "5000",
        nofile="96:96",
    ) as d:
        assert d.request("DELETE", "/images/x", headers=bearer("Revoked-Soon-Token"))[0] == 204
        with idle_connections(d.port, 150):
            write_in_place(tokens, tokens_yaml(entry("other", "Other-T0ken")))
            deadline = time.monotonic() + 10
            while not any(
                e["event"] == "tokens_reload_failed" and "Too many open files" in e["error"]
                for e in d.logs()
            ):
                assert time.monotonic() < deadline, "the reload never met EMFILE"
                time.sleep(0.05)
        # The attack is over; no SIGHUP, no further change to the file.
        deadline = time.monotonic() + 15
        while d.request("DELETE", "/images/x", headers=bearer("Revoked-Soon-Token"))[0] != 401:
            assert time.monotonic() < deadline, "the revoked token still works"
            time.sleep(0.1)
        assert d.request("DELETE", "/images/x", headers=bearer("Other-T0ken"))[0] == 204
