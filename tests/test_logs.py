"""Log output of a real daemon process: one JSON object per line, always."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import time
from pathlib import Path

import pytest
from faulty_imagelist import SECRET

from daemon import Daemon
from helpers import sqlite_args
from pgcluster import free_port

HERE = Path(__file__).resolve().parent


class FaultyDaemon(Daemon):
    program = HERE / "faulty_imagelist.py"


def fetch(d: Daemon, *args, **kwargs) -> tuple[int, object, dict[str, str]]:
    """Daemon.request with header names lower-cased (HTTP names are not case-sensitive)."""
    status, body, headers = d.request(*args, **kwargs)
    return status, body, {k.lower(): v for k, v in headers.items()}


def request_lines(d: Daemon) -> list[dict]:
    return [e for e in d.logs() if e.get("event") == "request"]


def test_each_request_logs_one_line_with_every_field(tmp_path: Path) -> None:
    with Daemon(*sqlite_args(tmp_path)) as d:
        d.request("PUT", "/images", {"id": "a/b@c", "name": "n"}, headers={"X-Request-ID": "ci-42"})
        _, _, got = fetch(d, "GET", "/images/a%2Fb@c")
        _, _, bad = fetch(d, "GET", "/images/missing", headers={"X-Request-ID": "no spaces"})
    put, get, missing = request_lines(d)

    assert put["request_id"] == "ci-42"
    assert put["method"] == "PUT" and put["route"] == "/images" and put["path"] == "/images"
    assert put["status"] == 200 and put["level"] == "info"
    assert put["remote"] == "127.0.0.1"
    assert isinstance(put["duration_ms"], float) and put["duration_ms"] >= 0
    stamp = dt.datetime.fromisoformat(put["timestamp"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 60
    # The route is the template; the path is what was asked for.
    assert get["route"] == "/images/{id}" and get["path"] == "/images/a%2Fb@c"
    # No id sent: one is generated and echoed, so a client can quote it.
    assert re.fullmatch(r"[0-9a-f]{32}", get["request_id"])
    assert got["x-request-id"] == get["request_id"]
    # An unusable id (spaces could forge log fields downstream) is replaced.
    assert missing["request_id"] != "no spaces"
    assert bad["x-request-id"] == missing["request_id"]
    assert missing["status"] == 404 and missing["level"] == "warning"


def test_error_responses_carry_the_request_id(tmp_path: Path) -> None:
    with Daemon(*sqlite_args(tmp_path)) as d:
        status, body, headers = fetch(
            d, "PUT", "/images", raw=b"{not json", headers={"X-Request-ID": "r-1"}
        )
    assert status == 400
    assert body["request_id"] == "r-1" and headers["x-request-id"] == "r-1"


def test_startup_warning_is_json_and_liveness_ignores_the_database() -> None:
    down = f"postgresql://nobody@127.0.0.1:{free_port()}/imagelist?connect_timeout=1"
    with Daemon("--database-url", down) as d:
        status, body, _ = d.request("GET", "/health/ping")
        assert status == 503 and "error" in body
        status, body, _ = d.request("GET", "/health/live")
        assert status == 200 and body == {"status": "ok"}
    warning = next(e for e in d.logs() if e.get("logger") == "imagelist.storage")
    assert warning["level"] == "warning"
    assert warning["event"] == "storage_unavailable" and warning["storage"] == "postgres"
    assert "database unavailable" in warning["error"]


def test_a_traceback_is_one_json_line_without_frame_locals(tmp_path: Path) -> None:
    with FaultyDaemon(*sqlite_args(tmp_path), env={"IMAGELIST_TEST_FAULT": "handler"}) as d:
        status, body, _ = d.request("GET", "/health/live", headers={"X-Request-ID": "t-1"})
        assert status == 500
        assert body == {"error": "internal error", "request_id": "t-1"}
        d.wait_for_log("request")
    entries = d.logs()  # every line parses as JSON
    assert SECRET not in "\n".join(d.output)

    crash = next(e for e in entries if e.get("event") == "unhandled_exception")
    assert crash["level"] == "error" and crash["request_id"] == "t-1"
    (exc,) = crash["exception"]
    assert exc["exc_type"] == "RuntimeError"
    assert exc["exc_value"].startswith("injected fault")
    assert exc["frames"] and all("locals" not in f for f in exc["frames"])
    assert exc["frames"][-1]["name"] == "failing_get"

    warning = next(e for e in entries if e.get("logger") == "py.warnings")
    assert warning["level"] == "warning" and "injected warning" in warning["event"]


def test_an_uncaught_crash_is_logged_as_json(tmp_path: Path) -> None:
    d = FaultyDaemon(*sqlite_args(tmp_path), env={"IMAGELIST_TEST_FAULT": "crash"})
    d.start(wait=False)
    assert d.wait(20) == 1
    entries = d.logs()
    assert entries, "the crash must be reported"
    crash = entries[-1]
    assert crash["event"] == "uncaught_exception" and crash["level"] == "critical"
    assert crash["exception"][-1]["exc_value"] == "injected start-up crash"


def test_console_format_is_for_humans(tmp_path: Path) -> None:
    d = Daemon(*sqlite_args(tmp_path), "--log-format", "console")
    d.start(wait=False)
    try:
        deadline = time.monotonic() + 15
        while not any("listening" in line for line in d.output):
            assert time.monotonic() < deadline, d.output
            assert d.proc is not None and d.proc.poll() is None, d.output
            time.sleep(0.05)
        assert d.request("GET", "/health/live")[0] == 200
    finally:
        assert d.stop() == 0
    request = next(line for line in d.output if "request" in line and "/health/live" in line)
    with pytest.raises(json.JSONDecodeError):
        json.loads(request)
    assert "route=/health/live" in request and "status=200" in request
    assert "\x1b[" not in request  # no colour codes outside a terminal


@pytest.mark.parametrize("debug", [True, False])
def test_debug_option_sets_the_level(tmp_path: Path, debug: bool) -> None:
    with Daemon(*sqlite_args(tmp_path), *(["--debug"] if debug else [])) as d:
        assert d.request("GET", "/health/live")[0] == 200
    levels = {e["level"] for e in d.logs()}
    # asyncio itself logs at debug level when the loop starts.
    assert ("debug" in levels) is debug


def test_tornados_own_log_lines_are_json_too(tmp_path: Path) -> None:
    with Daemon(*sqlite_args(tmp_path)) as d:
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as conn:
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            reply = conn.recv(65536)
        assert reply.startswith(b"HTTP/1.1 400"), reply
        deadline = time.monotonic() + 10
        while not (lines := [e for e in d.logs() if e.get("logger") == "tornado.general"]):
            assert time.monotonic() < deadline, d.output
            time.sleep(0.05)
    (line,) = lines
    assert line["level"] in ("info", "warning")
    assert "Malformed HTTP" in line["event"]
