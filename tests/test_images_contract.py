"""The REST contract, run through the real HTTP app on both backends."""

from __future__ import annotations

import asyncio
import base64
import re
import urllib.parse

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
DIGEST = "sha256:" + "ab" * 32
REPO_DIGEST = f"quay.io/foo/nginx@{DIGEST}"


async def put(api, entry_id: str, name: str = "myorg/app", tags=None) -> dict:
    body = {"id": entry_id, "name": name}
    if tags is not None:
        body["tags"] = tags
    reply = await api.put(body)
    assert reply.status == 200, reply.body
    return reply.json


# -- create, read, update, delete ---------------------------------------------


@pytest.mark.gen_test
async def test_put_returns_the_stored_entry_with_server_timestamps(api) -> None:
    entry = await put(api, "abc", "quay.io/foo/nginx", ["1.25", "latest", "1.25"])
    assert entry["id"] == "abc" and entry["name"] == "quay.io/foo/nginx"
    assert entry["tags"] == ["1.25", "latest"]  # order kept, duplicates dropped
    assert TIMESTAMP.match(entry["created_at"]) and TIMESTAMP.match(entry["updated_at"])
    assert entry["created_at"] == entry["updated_at"]


@pytest.mark.gen_test
async def test_tags_are_optional_and_always_present(api) -> None:
    assert (await put(api, "notags"))["tags"] == []
    assert (await api.get("/images/notags")).json["tags"] == []
    reply = await api.put({"id": "nulltags", "name": "n", "tags": None})
    assert reply.status == 200 and reply.json["tags"] == []


@pytest.mark.gen_test
async def test_update_changes_only_tags_and_updated_at(api) -> None:
    first = await put(api, "img", "myorg/app", ["a"])
    await asyncio.sleep(0.002)
    second = await put(api, "img", "other/name", ["b", "c"])
    assert second["name"] == "myorg/app"
    assert second["tags"] == ["b", "c"]
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] > first["updated_at"]
    assert (await api.get("/images/img")).json == second


@pytest.mark.gen_test
async def test_get_missing_is_404_json(api) -> None:
    reply = await api.get("/images/nope")
    assert reply.status == 404
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json["error"] == "image not found"


@pytest.mark.gen_test
async def test_ids_with_slash_and_at_work_raw_and_percent_encoded(api) -> None:
    entry = await put(api, REPO_DIGEST, "quay.io/foo/nginx")
    raw = await api.get(f"/images/{REPO_DIGEST}")
    encoded = await api.get("/images/" + urllib.parse.quote(REPO_DIGEST, safe=""))
    assert raw.status == encoded.status == 200
    assert raw.json == encoded.json == entry
    deleted = await api.delete("/images/" + urllib.parse.quote(REPO_DIGEST, safe=""))
    assert deleted.status == 204
    assert (await api.get(f"/images/{REPO_DIGEST}")).status == 404


@pytest.mark.gen_test
async def test_delete_is_idempotent(api) -> None:
    await put(api, "gone")
    first = await api.delete("/images/gone")
    assert first.status == 204 and first.body == b""
    assert (await api.delete("/images/gone")).status == 204
    assert (await api.delete("/images/never-existed")).status == 204
    assert await api.all_images() == []


@pytest.mark.gen_test
async def test_unicode_round_trips(api) -> None:
    entry = await put(api, "ünï", "registry.example/äpp", ["tåg", "😀"])
    assert entry["name"] == "registry.example/äpp" and entry["tags"] == ["tåg", "😀"]
    assert (await api.get("/images/" + urllib.parse.quote("ünï"))).json == entry


# -- listing -------------------------------------------------------------------


@pytest.mark.gen_test
async def test_list_returns_everything_newest_first_by_default(api) -> None:
    assert await api.all_images() == []
    made = []
    for i in range(5):
        made.append(await put(api, f"id{i}", f"name{i}"))
        await asyncio.sleep(0.002)
    await put(api, "id1", "ignored", ["x"])  # updating moves id1 to the front
    ids = [e["id"] for e in await api.all_images()]
    assert ids == ["id1", "id4", "id3", "id2", "id0"]


@pytest.mark.gen_test
async def test_name_filter_is_exact(api) -> None:
    await put(api, "a", "myorg/app")
    await put(api, "b", "myorg/app2")
    await put(api, "c", "MYORG/APP")
    await put(api, "d", "myorg/app")
    listed = await api.all_images("?name=myorg/app")
    assert sorted(e["id"] for e in listed) == ["a", "d"]
    assert await api.all_images("?name=nobody") == []
    assert await api.all_images("?name=" + urllib.parse.quote("myorg/app ")) == []


# Names and ids chosen so byte order differs from locale collation: upper case
# sorts before lower case, and UTF-8 multi-byte after ASCII.
TRICKY = [
    ("B", "Zed"),
    ("a", "apple"),
    ("é", "Éclair"),
    ("_", "zebra"),
    ("Z", "apple"),
    ("a2", "Apple"),
    ("ä", "éclair"),
]


def byte_order(values: list[tuple]) -> list[tuple]:
    return sorted(values, key=lambda v: tuple(x.encode() for x in v), reverse=True)


@pytest.mark.gen_test
async def test_sort_name_and_id_use_byte_order_with_id_tie_break(api) -> None:
    for entry_id, name in TRICKY:
        await put(api, entry_id, name)
    by_name = [(e["name"], e["id"]) for e in await api.all_images("?sort=name")]
    assert by_name == byte_order([(n, i) for i, n in TRICKY])
    by_id = [e["id"] for e in await api.all_images("?sort=id")]
    assert by_id == [i for (i,) in byte_order([(i,) for i, _ in TRICKY])]


@pytest.mark.gen_test
@pytest.mark.parametrize("sort", ["created_at", "updated_at"])
async def test_timestamp_sorts_are_descending_with_id_tie_break(api, sort: str) -> None:
    entries = [await put(api, f"t{i}", "n") for i in range(6)]
    await put(api, "t0", "n", ["bump"])
    listed = await api.all_images(f"?sort={sort}")
    keyed = [(e[sort], e["id"]) for e in listed]
    assert keyed == sorted(keyed, reverse=True)
    assert {e["id"] for e in listed} == {e["id"] for e in entries}
    if sort == "created_at":
        assert listed[-1]["id"] == "t0"
    else:
        assert listed[0]["id"] == "t0"


@pytest.mark.gen_test
async def test_unknown_sort_is_400_naming_the_allowed_values(api) -> None:
    reply = await api.get("/images?sort=size")
    assert reply.status == 400
    assert reply.json["details"]["allowed"] == ["updated_at", "created_at", "name", "id"]
    for key in ("updated_at", "created_at", "name", "id"):
        assert key in reply.json["error"]


# -- large lists and paging ----------------------------------------------------


@pytest.fixture
def small_chunks(ctx):
    ctx.list_chunk = 7  # many database pages per response
    return ctx


@pytest.mark.gen_test(timeout=60)
async def test_full_list_streams_in_chunks_and_is_complete(api, small_chunks) -> None:
    expected = []
    for i in range(50):
        expected.append(await put(api, f"img-{i:03d}", f"name-{i % 4}", [str(i)]))
    reply = await api.get("/images?sort=name")
    assert reply.status == 200
    assert reply.headers.get("Transfer-Encoding") == "chunked"
    listed = reply.json
    assert len(listed) == 50
    assert [(e["name"], e["id"]) for e in listed] == sorted(
        ((e["name"], e["id"]) for e in expected), reverse=True
    )
    # A list shorter than one page is sent whole, with a length.
    for e in expected[6:]:
        await api.delete("/images/" + e["id"])
    small = await api.get("/images")
    assert small.headers.get("Content-Length") and len(small.json) == 6


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("sort", ["updated_at", "created_at", "name", "id"])
async def test_paging_with_limit_and_cursor_walks_the_whole_list(api, sort: str) -> None:
    for i in range(23):
        await put(api, f"p{i:02d}", f"n{i % 3}")
    everything = await api.all_images(f"?sort={sort}")
    walked, path, pages = [], f"/images?sort={sort}&limit=5", 0
    while path:
        reply = await api.get(path)
        assert reply.status == 200
        assert len(reply.json) <= 5
        walked.extend(reply.json)
        pages += 1
        link = reply.headers.get("Link")
        path = re.match(r'<([^>]+)>; rel="next"', link).group(1) if link else None
    assert walked == everything
    assert pages == 5


@pytest.mark.gen_test
async def test_paging_combines_with_the_name_filter(api) -> None:
    for i in range(6):
        await put(api, f"f{i}", "wanted" if i % 2 else "other")
    first = await api.get("/images?name=wanted&limit=2")
    assert [e["name"] for e in first.json] == ["wanted", "wanted"]
    nxt = re.match(r"<([^>]+)>", first.headers["Link"]).group(1)
    second = await api.get(nxt)
    assert [e["name"] for e in second.json] == ["wanted"]
    assert "Link" not in second.headers


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=1001",
        "limit=abc",
        "limit=",
        "limit=" + "9" * 5000,  # more digits than Python turns into an int
        "cursor=%%%",
        "cursor=bm90LWpzb24",
        "cursor=WyJ1cGRhdGVkX2F0IiwieCIsImlkIl0",
        "sort=name&cursor=WyJpZCIsImEiLCJhIl0",
    ],
)
async def test_bad_paging_parameters_are_400(api, query: str) -> None:
    reply = await api.get("/images?" + query)
    assert reply.status == 400, reply.body
    assert reply.json["error"]


# -- bad input: 4xx JSON and nothing written -----------------------------------

LONG = "x" * 256
BAD_BODIES = [
    (b"", 400),
    (b"not json", 400),
    (b'{"id": "a", "name": "n"', 400),
    (b"[]", 400),
    (b'"string"', 400),
    (b"null", 400),
    (b'{"name": "n"}', 400),
    (b'{"id": "a"}', 400),
    (b'{"id": "", "name": "n"}', 400),
    (b'{"id": "a", "name": ""}', 400),
    (b'{"id": 5, "name": "n"}', 400),
    (b'{"id": "a", "name": ["n"]}', 400),
    (b'{"id": "a", "name": "n", "tags": "latest"}', 400),
    (b'{"id": "a", "name": "n", "tags": [1]}', 400),
    (b'{"id": "a", "name": "n", "tags": [""]}', 400),
    (b'{"id": "a", "name": "n", "tags": [null]}', 400),
    (b'{"id": "a", "name": "n", "tags": {"a": 1}}', 400),
    (b'{"id": "' + LONG.encode() + b'", "name": "n"}', 400),
    (b'{"id": "a", "name": "' + LONG.encode() + b'"}', 400),
    (b'{"id": "a", "name": "n", "tags": ["' + LONG.encode() + b'"]}', 400),
    (b'{"id": "a b", "name": "n"}', 400),
    (b'{"id": "a\\u0000", "name": "n"}', 400),
    (b'{"id": "a", "name": "n\\u0000"}', 400),
    (b'{"id": "a", "name": "n", "tags": ["t\\u0000"]}', 400),
    (b'{"id": "a\\ud800", "name": "n"}', 400),
    (b'{"id": "a", "name": "n\\udfff"}', 400),
    (b'{"id": "a\xff", "name": "n"}', 400),
    (b'{"id": "a", "name": "n\xc3"}', 400),
    (b'{"id": "a\\n", "name": "n"}', 400),
    (b"[" * 5000 + b"]" * 5000, 400),
    (b'{"id": "a", "name": "n", "tags": [' + b",".join([b'"t"'] * 1001) + b"]}", 400),
    (b'{"id": "a", "name": "n", "pad": "' + b"x" * 1_100_000 + b'"}', 413),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("raw", "status"), BAD_BODIES, ids=range(len(BAD_BODIES)))
async def test_bad_put_bodies_are_rejected_and_write_nothing(api, raw: bytes, status: int) -> None:
    reply = await api.put(raw=raw)
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    assert isinstance(reply.json["error"], str) and reply.json["request_id"]
    assert await api.all_images() == []


@pytest.mark.gen_test
async def test_chunked_body_over_the_limit_is_413(api, base_url) -> None:
    def producer_chunks():
        yield b'{"id": "a", "name": "n", "pad": "'
        for _ in range(40):
            yield b"x" * 32768
        yield b'"}'

    chunks = producer_chunks()

    async def producer(write):
        for chunk in chunks:
            await write(chunk)

    resp = await AsyncHTTPClient().fetch(
        base_url + "/images", method="PUT", body_producer=producer, raise_error=False
    )
    assert resp.code == 413
    assert await api.all_images() == []


@pytest.mark.gen_test
async def test_unknown_fields_and_client_timestamps_are_ignored(api) -> None:
    reply = await api.put(
        {"id": "x", "name": "n", "created_at": "1999-01-01T00:00:00Z", "extra": {"nested": True}}
    )
    assert reply.status == 200
    assert not reply.json["created_at"].startswith("1999")
    assert "extra" not in reply.json


# Today's rules for ids apply to creating one, not to finding one: older
# writers stored ids they refuse, and those must stay readable and deletable.
@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/images/" + "x" * 256, "/images/a%00b", "/images/a%20b"])
async def test_any_id_in_the_path_is_looked_up(api, path: str) -> None:
    reply = await api.get(path)
    assert reply.status == 404, reply.body
    assert reply.json["error"] == "image not found"
    assert (await api.delete(path)).status == 204


@pytest.mark.gen_test
async def test_a_path_that_is_not_utf8_is_400(api) -> None:
    for method in ("GET", "DELETE"):
        reply = await api.request(method, "/images/%ff")
        assert reply.status == 400, (method, reply.body)
        assert reply.json["error"]


# The Go service kept an entry as it was when a PUT had no tags (it issued no
# UPDATE): a CI job re-registering an image without tags must not revoke it.
@pytest.mark.gen_test
async def test_put_without_tags_keeps_the_entry_and_empty_tags_clear_them(api) -> None:
    first = await put(api, "keep", "myorg/app", ["v1", "latest"])
    await asyncio.sleep(0.002)
    assert await put(api, "keep", "myorg/app") == first
    reply = await api.put({"id": "keep", "name": "myorg/app", "tags": None})
    assert reply.status == 200 and reply.json == first
    assert (await api.get("/images/keep")).json == first
    assert (await api.get("/allowed?image=myorg/app:v1")).json["allowed"] is True
    cleared = await put(api, "keep", "myorg/app", [])
    assert cleared["tags"] == []
    assert cleared["created_at"] == first["created_at"]
    assert cleared["updated_at"] > first["updated_at"]
    assert (await api.get("/allowed?image=myorg/app:v1")).json["allowed"] is False
    assert await api.all_images() == [cleared]


@pytest.mark.gen_test
async def test_a_path_that_is_not_utf8_is_named_not_quoted(api) -> None:
    reply = await api.get("/images/%ff")
    assert reply.status == 400
    assert reply.json["error"] == "the URL path is not valid UTF-8"


@pytest.mark.gen_test
@pytest.mark.parametrize("query", ["name=" + "n" * 256, "name=%ff", "sort=%ff", "name=a%00"])
async def test_bad_list_queries_are_400(api, query: str) -> None:
    reply = await api.get("/images?" + query)
    assert reply.status == 400, reply.body


# -- concurrency -----------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_puts_of_one_id_give_one_row_and_no_errors(api) -> None:
    replies = await asyncio.gather(
        *(api.put({"id": "same", "name": "n", "tags": [f"t{i}"]}) for i in range(40))
    )
    assert {r.status for r in replies} == {200}
    listed = await api.all_images()
    assert len(listed) == 1
    assert listed[0]["tags"][0] in {f"t{i}" for i in range(40)}
    assert len({r.json["created_at"] for r in replies}) == 1


@pytest.mark.gen_test(timeout=60)
async def test_interleaved_puts_and_deletes_never_fail(api) -> None:
    ops = []
    for i in range(30):
        ops.append(api.put({"id": "flip", "name": "n", "tags": [str(i)]}))
        ops.append(api.delete("/images/flip"))
    replies = await asyncio.gather(*ops)
    assert all(r.status in (200, 204) for r in replies)
    assert len(await api.all_images()) <= 1


# -- other endpoints and errors -----------------------------------------------------


@pytest.mark.gen_test
async def test_health_ping_answers_200_when_the_database_answers(api) -> None:
    reply = await api.get("/health/ping")
    assert reply.status == 200 and reply.json["status"] == "ok"


@pytest.mark.gen_test
async def test_unknown_path_is_404_json(api) -> None:
    for path in ("/", "/nope", "/images/", "/imagesx"):
        reply = await api.get(path)
        assert reply.status == 404, path
        assert reply.json["error"]


@pytest.mark.gen_test
async def test_unsupported_method_is_405_with_allow(api) -> None:
    reply = await api.request("POST", "/images", {"id": "a", "name": "n"})
    assert reply.status == 405
    assert set(reply.headers["Allow"].split(", ")) == {"GET", "HEAD", "PUT"}
    assert reply.json["error"]
    reply = await api.request("PATCH", "/images/a")
    assert reply.status == 405
    assert set(reply.headers["Allow"].split(", ")) == {"GET", "HEAD", "DELETE"}
    assert await api.all_images() == []


@pytest.mark.gen_test
async def test_request_id_is_echoed_or_generated(api) -> None:
    sent = await api.get("/images", headers={"X-Request-ID": "abc-123"})
    assert sent.headers["X-Request-ID"] == "abc-123"
    made = await api.get("/images")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    # Not echoed, but replaced by a fresh id: too long, or with characters
    # a log line or header should not carry.
    for unsafe in ("x" * 129, "evil\u00e9", "a b", "a;b"):
        bad = await api.get("/images", headers={"X-Request-ID": unsafe})
        assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["X-Request-ID"]), unsafe


# -- forged paging cursors -----------------------------------------------------------


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
