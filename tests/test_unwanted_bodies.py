"""Routes that take no body refuse one from its headers, without reading
(buffering) it: the daemon answers before the body is even sent."""

from __future__ import annotations

import json
import socket

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
