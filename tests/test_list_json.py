"""The whole list is JSON the database wrote (storage.sql); every other
response is JSON Python wrote. Both must say exactly the same thing."""

from __future__ import annotations

import re
import sqlite3
import urllib.parse

import psycopg2
import pytest

from storage import sqlite_path

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
# Strings JSON must escape, and strings it must not mangle.
TRICKY = [
    {"id": 'quote"back\\slash', "name": 'na"me \\ with spaces', "tags": ['t"1', "t\\2"]},
    {"id": "unicode-é-漢字-😀", "name": "ünïcödé/名前", "tags": ["ß", "😀"]},
    {"id": "slash/and@at", "name": "</script>", "tags": []},
    {"id": "sha256:" + "ab" * 32, "name": "myorg/apache2", "tags": ["2.4", "latest"]},
]


def one(value: dict) -> str:
    return "/images/" + urllib.parse.quote(value["id"], safe="")


@pytest.mark.gen_test
async def test_full_list_says_what_get_and_paging_say(api, ctx) -> None:
    ctx.list_chunk = 3  # several database pages
    for entry in TRICKY:
        assert (await api.put(entry)).status == 200
    # Tags change after creation too: the stored JSON must follow.
    assert (await api.put({**TRICKY[0], "tags": ["new"]})).status == 200

    streamed = await api.all_images()
    paged = (await api.get("/images?limit=1000")).json
    singles = [(await api.get(one(e))).json for e in streamed]
    assert streamed == paged == singles
    assert streamed[0]["id"] == TRICKY[0]["id"]  # updated last
    assert streamed[0]["tags"] == ["new"]
    for entry in streamed:
        assert TIMESTAMP.fullmatch(entry["created_at"]) and TIMESTAMP.fullmatch(entry["updated_at"])
    for sort in ("id", "name", "created_at"):
        assert (
            await api.all_images(f"?sort={sort}")
            == (await api.get(f"/images?sort={sort}&limit=1000")).json
        )


@pytest.mark.gen_test
async def test_rows_written_outside_the_daemon_list_correctly(api, database_url) -> None:
    """An admin's SQL (or an older instance) writes no JSON itself; a whole
    second (zero microseconds) still has its six digits."""
    if database_url.startswith("sqlite:"):
        conn = sqlite3.connect(sqlite_path(database_url), isolation_level=None)
        conn.execute(
            "INSERT INTO images (id, name, tags, created_at, updated_at)"
            " VALUES ('by-sql', 'n', '[\"a\"]', 1509123066000000, 1509123066000000)"
        )
        conn.execute("""UPDATE images SET tags = '["b", "c"]' WHERE id = 'by-sql'""")
        conn.close()
    else:
        conn = psycopg2.connect(database_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO images (id, name, tags, created_at, updated_at)"
                " VALUES ('by-sql', 'n', '{a}', '2017-10-27 16:51:06Z', '2017-10-27 16:51:06Z')"
            )
            cur.execute("UPDATE images SET tags = '{b,c}' WHERE id = 'by-sql'")
        conn.close()
    (listed,) = await api.all_images()
    assert listed == (await api.get("/images/by-sql")).json
    assert listed == {
        "id": "by-sql",
        "name": "n",
        "tags": ["b", "c"],
        "created_at": "2017-10-27T16:51:06.000000Z",
        "updated_at": "2017-10-27T16:51:06.000000Z",
    }
