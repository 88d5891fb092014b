"""Hostile input: a 4xx and no traceback, and nothing written."""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

import pytest

from daemon import Daemon
from helpers import raw_exchange

SQLISH = [
    "'; DROP TABLE images; --",
    "x' OR '1'='1",
    "%' OR 1=1 --",
    "\\'; SELECT pg_sleep(10); --",
    "$$; DELETE FROM images; $$",
]


@pytest.mark.gen_test
@pytest.mark.parametrize("evil", SQLISH)
async def test_sql_looking_strings_are_just_data(api, evil: str) -> None:
    safe = evil.replace(" ", "_")  # ids may not hold spaces; names may
    reply = await api.put({"id": safe, "name": evil, "tags": [safe]})
    assert reply.status == 200, reply.body
    assert reply.json["name"] == evil
    assert (await api.get("/images/" + urllib.parse.quote(safe, safe=""))).json == reply.json
    listed = await api.all_images("?name=" + urllib.parse.quote(evil))
    assert [e["id"] for e in listed] == [safe]
    for sort in ("name", "id"):
        assert len(await api.all_images(f"?sort={sort}")) == 1
    reply = await api.get("/images?sort=" + urllib.parse.quote(evil))
    assert reply.status == 400


@pytest.mark.gen_test
async def test_very_long_query_strings_and_paths_are_400(api) -> None:
    assert (await api.get("/images?name=" + "n" * 30000)).status == 400
    assert (await api.get("/images?sort=" + "s" * 30000)).status == 400
    assert (await api.get("/images?cursor=" + "c" * 30000)).status == 400
    assert (await api.get("/images/" + "i" * 30000)).status == 400
    assert (await api.get("/allowed?image=" + "a" * 30000)).status == 400
    many = "&".join(f"p{i}=v" for i in range(500))
    assert (await api.get("/images?" + many)).status == 200  # unknown parameters are ignored


@pytest.mark.gen_test
async def test_wrong_json_shapes_on_admission_endpoints_are_400(api) -> None:
    for path in (
        "/admission/validate",
        "/admission/imagepolicy",
        "/admission/gatekeeper",
        "/admission/mutate",
        "/admission/gatekeeper/mutate",
    ):
        for raw in (
            b"",
            b"[]",
            b"null",
            b"{",
            b'{"kind": 5}',
            b"[" * 3000 + b"]" * 3000,
            b'{"a": "\xff"}',
            b'{"a": "\\ud800"}',
        ):
            reply = await api.request("POST", path, raw=raw)
            assert reply.status == 400, (path, raw[:20], reply.body)
            assert reply.json["error"]


@pytest.mark.gen_test
@pytest.mark.parametrize("method", ["POST", "PATCH", "OPTIONS", "TRACE", "FOO"])
async def test_unsupported_methods_are_405_with_allow(api, method: str) -> None:
    reply = await api.request(method, "/images/x")
    assert reply.status == 405
    assert set(reply.headers["Allow"].split(", ")) == {"GET", "HEAD", "DELETE"}


def test_protocol_garbage_never_reaches_a_handler_or_a_traceback(tmp_path: Path) -> None:
    """Below HTTP (oversized headers, broken request lines, a bad
    Content-Length) Tornado answers a bare 400 or closes the connection;
    the daemon must stay up and log no error."""
    with Daemon("--database-url", f"sqlite:///{tmp_path}/db") as d:
        big_header = b"GET /images HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
        for payload in (
            big_header,
            b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"NOT HTTP AT ALL\r\n\r\n",
            b"GET /images HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
            b"PUT /images HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"PUT /images HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
            b"\x00\xff\xfe" * 1000,
            # Over Tornado's 1,000 query fields.
            b"GET /images?"
            + b"&".join(b"p%d=v" % i for i in range(3000))
            + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ):
            answer = raw_exchange(d.port, payload)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
        status, _, _ = d.request("GET", "/health/ping")
        assert status == 200
        # No half-read request is left in flight to hold up shutdown.
        assert d.stop() == 0
    assert not any(e.get("event") == "shutdown_timeout" for e in d.logs())
    logs = d.logs()
    assert [e for e in logs if e.get("level") in ("error", "critical")] == []
    assert not any("Traceback" in line for line in d.output)


def test_a_client_leaving_mid_stream_is_not_an_error(tmp_path: Path) -> None:
    """A client that hangs up during a long GET /images (many pages) is
    ordinary: no error line, no traceback, and the daemon serves on."""
    import http.client
    import json

    with Daemon("--database-url", f"sqlite:///{tmp_path}/db") as d:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        for i in range(1600):  # over three database pages of 500
            body = json.dumps({"id": f"i{i:05d}", "name": "n" * 200, "tags": ["t"] * 20})
            conn.request("PUT", "/images", body=body)
            reply = conn.getresponse()
            assert (reply.status, json.loads(reply.read())["id"]) == (200, f"i{i:05d}")
        conn.close()
        for _ in range(5):
            with socket.socket() as s:
                # A small window: the daemon is surely still sending at the close.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(10)
                s.connect(("127.0.0.1", d.port))
                s.sendall(b"GET /images HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
            # closed after the first bytes, while the daemon is still sending
        status, listed, _ = d.request("GET", "/images")
        assert status == 200 and len(listed) == 1600
        d.wait_for_log("client_gone")
    assert [e for e in d.logs() if e.get("level") in ("error", "critical")] == []
    assert not any("Traceback" in line for line in d.output)
