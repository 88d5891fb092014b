"""Routes that take no body refuse one from its headers, without reading
(buffering) it: the daemon answers before the body is even sent."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from daemon import Daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("bodies")
    with Daemon("--database-url", f"sqlite:///{path}/db") as d:
        yield d


def head_only(port: int, request_line: str, framing: str) -> bytes:
    """Send the headers and a few bytes of a large body, then wait for
    the answer: it must come without the rest of the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{request_line} HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode() + b"x" * 10)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "request_line",
    [
        "GET /health/live",
        "GET /health/ping",
        "GET /images/some-id",
        "DELETE /images/some-id",
        "GET /images",
        "GET /metrics",
        "GET /openapi.json",
        "GET /allowed?image=nginx",
        "GET /no/such/path",
        "POST /no/such/path",
    ],
)
@pytest.mark.parametrize(
    "framing", ["Content-Length: 16000000", "Transfer-Encoding: chunked\r\nX-A: b"]
)
def test_a_body_where_none_is_taken_is_refused_unread(
    daemon: Daemon, request_line: str, framing: str
) -> None:
    answer = head_only(daemon.port, request_line, framing)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] in (b"413", b"404"), answer[:300]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]


def test_the_daemon_stays_small_and_well(daemon: Daemon) -> None:
    assert daemon.request("GET", "/health/live")[0] == 200
    assert daemon.request("PUT", "/images", {"id": "b", "name": "n"})[0] == 200
    # A body on a route that takes one is still read and measured.
    status, body, _ = daemon.request("PUT", "/images", raw=b"x" * 2_000_000)
    assert status == 413 and "larger than" in body["error"]
    assert [e for e in daemon.logs() if e.get("level") in ("error", "critical")] == []


def metric(d: Daemon, name: str, **labels: str) -> float:
    text = d.request("GET", "/metrics")[1].decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_hangs_up_mid_body_is_a_499(tmp_path: Path) -> None:
    with Daemon("--database-url", f"sqlite:///{tmp_path}/db") as d:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
                s.sendall(
                    b"PUT /images HTTP/1.1\r\nHost: x\r\nX-Request-ID: gone-1\r\n"
                    b"Content-Length: 1000\r\n\r\n" + b'{"id": "half' + b" " * 400
                )
        labels = {"route": "/images", "method": "PUT"}
        deadline = time.monotonic() + 10
        while metric(d, "imagelist_http_requests_total", **labels, status="499") < 3:
            assert time.monotonic() < deadline, "the aborted requests were not counted as 499"
            time.sleep(0.05)
        assert metric(d, "imagelist_http_requests_total", **labels, status="200") == 0
        assert (
            metric(d, "imagelist_http_request_duration_seconds_count", **labels, status="499") == 3
        )
        assert d.request("GET", "/images/half")[0] == 404  # nothing was written
    lines = [e for e in d.logs() if e["event"] == "request" and e.get("request_id") == "gone-1"]
    assert [e["status"] for e in lines] == [499, 499, 499]
