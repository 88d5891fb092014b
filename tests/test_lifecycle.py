"""A real daemon under a fake systemd: sd_notify on a real datagram socket,
and real signals (SIGTERM/SIGINT drain, SIGHUP reloads the TLS certificate).

Test certificates are made with the `openssl` command-line tool.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon import Daemon, storage_refusal
from helpers import make_cert, sqlite_args, wait_for

# -- sd_notify -----------------------------------------------------------------


class NotifyListener:
    """What systemd does: a datagram socket named in $NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def collect(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        got = []
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None:
                got.append(message)
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifyListener]:
    # A short directory: socket paths are limited to 107 bytes.
    listener = NotifyListener(str(tmp_path_factory.mktemp("n") / "notify"))
    yield listener
    listener.close()


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_ready_after_listening_then_watchdog_pings_then_stopping(
    tmp_path: Path, notify_path: NotifyListener
) -> None:
    env = {"NOTIFY_SOCKET": notify_path.address, "WATCHDOG_USEC": "200000"}
    d = Daemon(*sqlite_args(tmp_path), env=env).start(wait=False)
    try:
        first = notify_path.receive(timeout=15)
        assert first is not None, d.output
        # READY=1 is the first message, and the port answers the moment it arrives.
        assert first.splitlines()[0] == "READY=1"
        assert f"STATUS=listening on port {d.port}" in first.splitlines()
        assert accepts_connections(d.port)
        # Every WatchdogSec/2 = 0.1 s.
        pings = notify_path.collect(1.0)
        assert pings.count("WATCHDOG=1") >= 4 and set(pings) == {"WATCHDOG=1"}
        d.send(signal.SIGTERM)
        after = notify_path.collect(1.0)
        assert "STOPPING=1" in after
        assert "READY=1" not in after
        assert d.wait(20) == 0
    finally:
        d.stop()


def test_abstract_socket_and_no_pings_for_another_watchdog_pid(tmp_path: Path) -> None:
    listener = NotifyListener(f"@imagelist-test-{uuid.uuid4().hex}")
    env = {
        "NOTIFY_SOCKET": listener.address,
        "WATCHDOG_USEC": "100000",
        "WATCHDOG_PID": "1",  # systemd watches some other process
    }
    try:
        with Daemon(*sqlite_args(tmp_path), env=env) as d:
            assert listener.receive(timeout=15) is not None
            assert "WATCHDOG=1" not in listener.collect(0.5)
            d.send(signal.SIGINT)
            assert d.wait(20) == 0
        assert "STOPPING=1" in listener.collect(0.5)
    finally:
        listener.close()


def test_without_systemd_nothing_is_sent_and_all_is_well(tmp_path: Path) -> None:
    # --debug logs every message sent (sd_notify) and every failed send
    # (sd_notify_failed): with no NOTIFY_SOCKET there must be neither.
    env = {"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "100000"}
    with Daemon(*sqlite_args(tmp_path), "--debug", env=env) as d:
        assert d.request("GET", "/health/live")[0] == 200
        time.sleep(0.3)  # several watchdog intervals
    assert d.proc is not None and d.proc.returncode == 0
    events = [e["event"] for e in d.logs()]
    assert "listening" in events and "stopped" in events
    assert not {"sd_notify", "sd_notify_failed"} & set(events), events


# -- SIGTERM: drain ------------------------------------------------------------


def in_flight(d: Daemon) -> float:
    _, body, _ = d.request("GET", "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "imagelist_http_requests_in_flight":
            return family.samples[0].value - 1  # not counting this scrape
    raise AssertionError("no in-flight gauge")


def start_slow_put(d: Daemon, body: bytes) -> socket.socket:
    """A client that sends the headers and half the body of a PUT, then stalls."""
    conn = socket.create_connection(("127.0.0.1", d.port), timeout=20)
    conn.sendall(
        b"PUT /images HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2]
    )
    wait_for(lambda: in_flight(d) >= 1, True)  # the daemon has seen the request
    return conn


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(tmp_path: Path) -> None:
    body = b'{"id": "slow-1", "name": "myorg/app", "tags": ["v1"]}'
    with Daemon(*sqlite_args(tmp_path)) as d:
        conn = start_slow_put(d, body)
        with conn:
            d.send(signal.SIGTERM)
            wait_for(lambda: accepts_connections(d.port), False)  # no new connections...
            assert d.proc is not None and d.proc.poll() is None  # ...but still serving
            conn.sendall(body[len(body) // 2 :])
            reply = conn.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        assert b'"slow-1"' in reply
        assert d.wait(20) == 0
    events = [f"{e['event']} {e.get('method', '')}".strip() for e in d.logs()]
    assert events.index("stopping") < events.index("request PUT") < events.index("stopped")
    # The write that got its 200 is there after a restart.
    with Daemon(*sqlite_args(tmp_path)) as again:
        assert again.request("GET", "/images/slow-1")[0] == 200


def test_shutdown_timeout_bounds_the_drain(tmp_path: Path) -> None:
    body = b'{"id": "never", "name": "n"}'
    with Daemon(*sqlite_args(tmp_path), "--shutdown-timeout", "1") as d:
        conn = start_slow_put(d, body)
        with conn:
            d.send(signal.SIGTERM)
            assert d.wait(15) == 0
            assert conn.recv(65536) == b""  # closed by the daemon, no response
        timeout = next(e for e in d.logs() if e["event"] == "shutdown_timeout")
        assert timeout["inflight"] == 1 and timeout["level"] == "warning"
    with Daemon(*sqlite_args(tmp_path)) as again:
        assert again.request("GET", "/images/never")[0] == 404


# -- SIGHUP: TLS certificate reload ------------------------------------------------


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test checks the certificate itself
    return context


def connect(port: int) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=client_context())
    conn.connect()
    return conn


def live(conn: http.client.HTTPSConnection) -> int:
    conn.request("GET", "/health/live")
    response = conn.getresponse()
    response.read()
    return response.status


def served_cert(port: int) -> bytes:
    conn = connect(port)
    try:
        assert live(conn) == 200
        assert conn.sock is not None
        return conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    finally:
        conn.close()


def test_sighup_reloads_the_certificate_and_keeps_connections(tmp_path: Path) -> None:
    one = make_cert(tmp_path, "one")
    two = make_cert(tmp_path, "two")
    three = make_cert(tmp_path, "three")
    certfile, keyfile = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(one[0], certfile)
    shutil.copy(one[1], keyfile)
    tls = ["--certfile", str(certfile), "--keyfile", str(keyfile)]
    with Daemon(*sqlite_args(tmp_path), *tls) as d:
        kept = connect(d.port)
        try:
            assert live(kept) == 200
            kept_sock = kept.sock
            assert served_cert(d.port) == der(one[0])

            shutil.copy(two[0], certfile)
            shutil.copy(two[1], keyfile)
            d.send(signal.SIGHUP)
            d.wait_for_log("tls_reloaded")
            assert served_cert(d.port) == der(two[0])
            # The keep-alive connection made before the reload carries on.
            assert live(kept) == 200 and kept.sock is kept_sock
            assert kept_sock.getpeercert(binary_form=True) == der(one[0])  # type: ignore[union-attr]

            # A certificate that does not match the key: refused, old one kept.
            shutil.copy(three[0], certfile)
            d.send(signal.SIGHUP)
            failed = d.wait_for_log("tls_reload_failed")
            assert failed["level"] == "error"
            assert served_cert(d.port) == der(two[0])
            assert live(kept) == 200 and kept.sock is kept_sock
        finally:
            kept.close()
        assert d.stop() == 0
    assert sum(e["event"] == "tls_reloaded" for e in d.logs()) == 1


def test_sighup_with_a_garbage_certificate_keeps_serving(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "one")
    original = der(cert)
    with Daemon(*sqlite_args(tmp_path), "--certfile", str(cert), "--keyfile", str(key)) as d:
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
        d.send(signal.SIGHUP)
        d.wait_for_log("tls_reload_failed")
        assert served_cert(d.port) == original
        cert.unlink()
        d.send(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while sum(e["event"] == "tls_reload_failed" for e in d.logs()) < 2:
            assert time.monotonic() < deadline, d.output
            time.sleep(0.05)
        assert served_cert(d.port) == original


# -- start-up refusals -------------------------------------------------------------


# An SQLite file that is not a database (or cannot be opened) made open()
# raise sqlite3.DatabaseError, which the daemon did not expect: it died with
# an "uncaught_exception" traceback instead of its storage_open_failed line.
def test_an_unusable_sqlite_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "imagelist.db"
    bad.write_bytes(b"not an SQLite database, only text long enough to look like one " * 4)
    failed = storage_refusal("--database-url", f"sqlite:///{bad}")
    assert "not a database" in failed["error"]
    assert str(bad) in failed["error"]
