"""Processes the benchmark starts: the daemon, the hello-world ceiling.

Readiness comes from sd_notify: each process gets its own NOTIFY_SOCKET, and
the time from spawn to its READY=1 datagram is the start-up time. The
daemon's memory is what it reports itself on /metrics
(process_resident_memory_bytes); a peak is the largest value sampled while
a measurement runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Proc:
    """A child process that says READY=1 on $NOTIFY_SOCKET when it listens."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds = 0.0
        self.log_path = workdir / f"{name}.log"

    def start(self, timeout: float = 30) -> Proc:
        path = self.workdir / f"{self.name}.notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(timeout)
            env = {**os.environ, "NOTIFY_SOCKET": str(path), "PYTHONPATH": str(ROOT)}
            with open(self.log_path, "ab") as log:
                started = time.perf_counter()
                self.proc = subprocess.Popen(
                    self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
                )
            try:
                while b"READY=1" not in sock.recv(4096):
                    pass
            except TimeoutError:
                self.stop()
                raise RuntimeError(
                    f"{self.name} not ready in {timeout}s; see {self.log_path}"
                ) from None
            self.ready_seconds = time.perf_counter() - started
        path.unlink()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def daemon(name: str, workdir: Path, port: int, database_url: str, *extra: str) -> Proc:
    argv = [
        sys.executable,
        str(ROOT / "imagelist.py"),
        "--listen",
        f"127.0.0.1:{port}",
        "--database-url",
        database_url,
        *extra,
    ]
    return Proc(name, argv, workdir)


def hello(workdir: Path, port: int) -> Proc:
    return Proc("hello", [sys.executable, "-m", "bench.hello", str(port)], workdir)


def rss(port: int) -> int:
    """The daemon's resident memory, in bytes, as its /metrics reports it."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("process_resident_memory_bytes "):
                return int(float(line.split()[1]))
    raise RuntimeError(f"no process_resident_memory_bytes on {url}")


class PeakRss:
    """The largest RSS sampled from /metrics while the block runs."""

    def __init__(self, port: int, interval: float = 0.2) -> None:
        self.port = port
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.port))
            self._stop.wait(self.interval)

    @contextmanager
    def sampling(self) -> Iterator[PeakRss]:
        self.peak = rss(self.port)
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            self._stop.set()
            sampler.join(10)
            self.peak = max(self.peak, rss(self.port))
