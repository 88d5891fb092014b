"""Regressions for bugs found in a correctness and security review.

Each test failed before its fix; they run on both backends where the bug
was backend-specific, so the two answer alike.
"""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from daemon import storage_refusal


def forged_cursor(sort: str, value: object, entry_id: str) -> str:
    """A cursor as the server encodes one, with values it never hands out."""
    raw = orjson.dumps([sort, value, entry_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# Cursors are opaque but client-controlled: PostgreSQL refused a NUL in a
# string (psycopg2 raises ValueError) and Python could not turn a timestamp
# past year 9999 into a datetime (OverflowError); both were 500s there,
# while SQLite answered 200.
@pytest.mark.parametrize(
    ("sort", "value", "entry_id"),
    [
        ("id", "a\u0000b", "a\u0000b"),
        ("id", "a\u0000b", "b"),
        ("name", "nginx\u0000", "x"),
        ("name", "nginx", "x\u0000"),
        ("updated_at", 2**61, "x"),
        ("created_at", -(2**61), "x"),
    ],
)
@pytest.mark.gen_test
async def test_a_forged_cursor_is_a_400_on_every_backend(api, sort, value, entry_id) -> None:
    await api.put({"id": "x", "name": "nginx"})
    cursor = forged_cursor(sort, value, entry_id)
    reply = await api.get(f"/images?sort={sort}&limit=5&cursor={cursor}")
    assert reply.status == 400, reply.body
    assert "cursor" in reply.json["error"]


@pytest.mark.gen_test
async def test_a_cursor_at_the_edge_of_the_timestamp_range_still_works(api) -> None:
    await api.put({"id": "x", "name": "nginx"})
    # 9999-12-31T23:59:59.999999Z: everything is before it.
    cursor = forged_cursor("updated_at", 253402300799999999, "zzz")
    reply = await api.get(f"/images?limit=5&cursor={cursor}")
    assert reply.status == 200, reply.body
    assert [i["id"] for i in reply.json] == ["x"]


# Tornado accepts any token as a method and answers 405; the method went
# into the request metrics' labels as sent, so anyone could grow /metrics
# (and the daemon's memory) by one series per made-up method name.
@pytest.mark.gen_test
async def test_made_up_methods_do_not_add_metric_series(api) -> None:
    for n in range(5):
        reply = await api.request(f"X-MADE-UP-{n}", "/images")
        assert reply.status == 405
    await api.get("/images")
    text = (await api.get("/metrics")).body.decode()
    series = [
        line for line in text.splitlines() if line.startswith("imagelist_http_requests_total")
    ]
    assert not any("X-MADE-UP" in line for line in series), series
    assert any('method="OTHER",route="/images",status="405"} 5.0' in line for line in series)
    assert any('method="GET",route="/images",status="200"} 1.0' in line for line in series)


# An SQLite file that is not a database (or cannot be opened) made open()
# raise sqlite3.DatabaseError, which the daemon did not expect: it died with
# an "uncaught_exception" traceback instead of its storage_open_failed line.
def test_an_unusable_sqlite_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "imagelist.db"
    bad.write_bytes(b"not an SQLite database, only text long enough to look like one " * 4)
    failed = storage_refusal("--database-url", f"sqlite:///{bad}")
    assert "not a database" in failed["error"]
    assert str(bad) in failed["error"]
