"""Run the real daemon as a child process, for process-level tests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pgcluster import free_port

ROOT = Path(__file__).resolve().parent.parent


class Daemon:
    """`imagelist.py` in a subprocess; stdout (JSON log lines) is collected."""

    #: The script to run (a test may run a wrapper around imagelist.py).
    program: Path = ROOT / "imagelist.py"
    #: The OS user to run as (needs root), with that user's group only.
    user: str | None = None

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.args = ["--listen", f"127.0.0.1:{self.port}", *args]
        self.env = {**os.environ, **(env or {})}
        self.output: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self, wait: bool = True, timeout: float = 15) -> Daemon:
        self.output = []
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd="/" if self.user else str(ROOT),
            user=self.user,
            group=self.user,
            extra_groups=[] if self.user else None,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            self.wait_for_log("listening", timeout)
        return self

    def command(self) -> list[str]:
        """The daemon's command line (a subclass may start an installed build)."""
        return [sys.executable, str(self.program), *self.args]

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))

    def wait_for_log(self, event: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.logs():
                if entry.get("event") == event:
                    return entry
            if self.proc is not None and self.proc.poll() is not None:
                self.join_output()
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.output}")
            time.sleep(0.02)
        raise TimeoutError(f"no {event!r} log line in {timeout}s: {self.output[-20:]}")

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.join_output()
        return code

    def join_output(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
        if self.proc is not None and self.proc.stdout is not None and not self._reader_alive():
            self.proc.stdout.close()

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def kill9(self) -> None:
        self.send(signal.SIGKILL)
        self.wait()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.send(signal.SIGTERM)
        try:
            return self.wait(20)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def __enter__(self) -> Daemon:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation -----------------------------------------------------------

    def logs(self) -> list[dict[str, Any]]:
        """Every output line parsed as JSON; a line that is not JSON fails."""
        return [json.loads(line) for line in list(self.output) if line.strip()]

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15,
    ) -> tuple[int, Any, dict[str, str]]:
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=raw, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            ctype = resp.getheader("Content-Type", "")
            value: Any = json.loads(data) if data and "json" in ctype else data
            return resp.status, value, dict(resp.getheaders())
        finally:
            conn.close()

    def wait_status(self, path: str, status: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.request("GET", path, timeout=5)[0]
                if last == status:
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"GET {path} never answered {status} (last: {last})")


def storage_refusal(*args: str) -> dict[str, Any]:
    """Start the daemon on a store it must refuse: it exits 1 with a
    `storage_open_failed` line (never an uncaught traceback); that line."""
    daemon = Daemon(*args).start(wait=False)
    try:
        assert daemon.wait(30) == 1
    finally:
        daemon.stop()
    events = [entry["event"] for entry in daemon.logs()]
    assert "uncaught_exception" not in events, daemon.output
    return next(e for e in daemon.logs() if e["event"] == "storage_open_failed")
