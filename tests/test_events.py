"""The audit trail through the real app on both backends: one event per
change, in the change's transaction, named after the token and request;
GET /events paging, filters and validation; retention."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import urllib.parse
from pathlib import Path

import psycopg2
import pytest
from tokenfiles import bearer, entry, tokens_yaml

from storage.errors import OutOfScope, StorageError
from storage.model import EventQuery, NewEntry, Writer
from storage.retention import prune_events_forever, prune_once

from helpers import running_app

SECRET = "ci-Secret-token-1"
AUTH = bearer(SECRET)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
LINK = re.compile(r'^<(/events\?[^>]*)>; rel="next"$')


@pytest.fixture
def app_options(tmp_path: Path) -> list[str]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(tokens_yaml(entry("ci-pipeline", SECRET)))
    return ["--tokens-file", str(tokens)]


async def put(api, body: dict, request_id: str | None = None) -> dict:
    headers = dict(AUTH)
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    reply = await api.put(body, headers=headers)
    assert reply.status == 200, reply.body
    return reply.json


async def delete(api, path: str, request_id: str):
    return await api.delete(path, headers={**AUTH, "X-Request-ID": request_id})


def next_params(reply) -> dict[str, list[str]]:
    """The query of a reply's Link next URL."""
    path = LINK.match(reply.headers["Link"]).group(1)
    return urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)


async def events(api, query: str = "") -> list[dict]:
    reply = await api.get("/events" + query)
    assert reply.status == 200, reply.body
    assert LINK.match(reply.headers["Link"]), reply.headers["Link"]
    return reply.json


def without_time(event: dict) -> dict:
    assert TIMESTAMP.match(event["at"])
    return {k: v for k, v in event.items() if k not in ("seq", "at")}


@pytest.mark.gen_test
async def test_each_change_is_one_event_named_after_token_and_request(api) -> None:
    await put(api, {"id": "a1", "name": "quay.io/team-a/app", "tags": ["1.4"]}, "req-create")
    await put(api, {"id": "a1", "name": "quay.io/team-a/app", "tags": ["1.4", "1.5"]}, "req-up")
    # Nothing changes but updated_at: still an update, recorded.
    await put(api, {"id": "a1", "name": "quay.io/team-a/app", "tags": ["1.4", "1.5"]}, "req-same")
    assert (await delete(api, "/images/a1", "req-del")).status == 204
    # A missing id: nothing to record.
    assert (await delete(api, "/images/a1", "req-gone")).status == 204
    assert (await api.delete("/images/never", headers=AUTH)).status == 204
    got = await events(api)
    common = {"id": "a1", "name": "quay.io/team-a/app", "actor": "ci-pipeline"}
    assert [without_time(e) for e in got] == [
        {**common, "action": "created", "tags_before": None, "tags_after": ["1.4"],
         "request_id": "req-create"},
        {**common, "action": "updated", "tags_before": ["1.4"], "tags_after": ["1.4", "1.5"],
         "request_id": "req-up"},
        {**common, "action": "updated", "tags_before": ["1.4", "1.5"],
         "tags_after": ["1.4", "1.5"], "request_id": "req-same"},
        {**common, "action": "deleted", "tags_before": ["1.4", "1.5"], "tags_after": None,
         "request_id": "req-del"},
    ]  # fmt: skip
    seqs = [e["seq"] for e in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert [e["at"] for e in got] == sorted(e["at"] for e in got)


@pytest.mark.gen_test
async def test_refused_writes_leave_no_event(api) -> None:
    assert (await api.put({"id": "x", "name": "a/b", "tags": ["t"]})).status == 401
    reply = await api.put({"id": "", "name": "a/b"}, headers=AUTH)
    assert reply.status == 400
    assert (await api.delete("/images/x")).status == 401
    assert await events(api) == []


@pytest.mark.gen_test
async def test_anonymous_when_auth_is_off_and_a_generated_request_id(database_url) -> None:
    from tornado.httpclient import AsyncHTTPClient

    from client import Client

    async with running_app(database_url) as running:
        api = Client(AsyncHTTPClient(), running.url)
        reply = await api.put({"id": "n1", "name": "nginx", "tags": ["1"]})
        assert reply.status == 200
        [event] = await events(api)
        assert event["actor"] == "anonymous"
        assert event["request_id"] == reply.headers["X-Request-ID"]


@pytest.mark.gen_test
async def test_filters_paging_and_the_link_that_tails(api) -> None:
    for n in range(5):
        await put(api, {"id": f"img{n}", "name": "quay.io/team-a/app", "tags": [str(n)]})
    await put(api, {"id": "img0", "name": "quay.io/team-a/app", "tags": ["again"]})
    everything = await events(api)
    assert len(everything) == 6
    only = await events(api, "?image_id=img0")
    assert [e["action"] for e in only] == ["created", "updated"]
    assert await events(api, "?actor=ci-pipeline") == everything
    assert await events(api, "?actor=someone-else") == []
    # Page by page through the Link header, then an empty page whose Link
    # stays put: a tailing reader polls it.
    seen: list[dict] = []
    path = "/events?limit=4"
    for _ in range(4):
        reply = await api.get(path)
        seen += reply.json
        path = LINK.match(reply.headers["Link"]).group(1)
        if not reply.json:
            break
    assert seen == everything
    assert next_params(reply) == {"after": [str(everything[-1]["seq"])], "limit": ["4"]}
    await put(api, {"id": "img9", "name": "quay.io/team-a/app", "tags": ["late"]})
    late = await api.get(path)
    assert [e["id"] for e in late.json] == ["img9"]
    # Filters travel in the Link.
    reply = await api.get("/events?image_id=img0&actor=ci-pipeline&limit=1")
    assert next_params(reply) == {
        "after": [str(reply.json[0]["seq"])],
        "limit": ["1"],
        "image_id": ["img0"],
        "actor": ["ci-pipeline"],
    }


@pytest.mark.parametrize(
    "query",
    [
        "after=-1",
        "after=abc",
        "after=1.5",
        f"after={2**63}",
        "limit=0",
        "limit=1001",
        "limit=ten",
        "limit=",
        "image_id=",
        "image_id=a%00b",
        "actor=",
        "actor=x%00",
        "actor=" + "a" * 256,
        "image_id=" + "a" * 2705,
        "after=%C3%28",
        # More digits than Python turns into an int (4,300): no 500.
        "after=" + "0" * 5000 + "1",
        "limit=" + "9" * 5000,
    ],
)
@pytest.mark.gen_test
async def test_bad_parameters_are_400_json(api, query: str) -> None:
    reply = await api.get("/events?" + query)
    assert reply.status == 400, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json["error"] and reply.json["details"]["parameter"] in query


@pytest.mark.gen_test
async def test_largest_parameters_are_accepted(api) -> None:
    await put(api, {"id": "z", "name": "a/b"})
    assert await events(api, f"?after={2**63 - 1}&limit=1000") == []
    assert len(await events(api, "?after=0&limit=1")) == 1
    assert await events(api, "?image_id=" + "a" * 2704 + "&actor=" + "b" * 255) == []


@pytest.mark.gen_test
async def test_the_longest_token_name_is_an_actor_that_can_be_asked_for(api, ctx) -> None:
    from config.tokens import parse_tokens

    name = "équipe-" + "é" * 248  # the longest a tokens file takes
    [token] = parse_tokens(f"tokens: [{{name: '{name}', token: abc}}]\n".encode(), "t")
    await ctx.storage.put(NewEntry("long", "a/b"), Writer(actor=token.name))
    [event] = await events(api, "?actor=" + urllib.parse.quote(name))
    assert event["actor"] == name
    reply = await api.get("/events?actor=" + urllib.parse.quote(name))
    assert next_params(reply)["actor"] == [name]


# -- atomicity ----------------------------------------------------------------


# Run off the loop (asyncio.to_thread): a DDL statement waits for the app's
# connections, which the loop releases.
def admin_sql(ctx, sqlite_sql: str, postgres_sql: str) -> None:
    """Run one administrative statement on the app's database, outside it."""
    url = ctx.config.database_url
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        conn.execute(sqlite_sql)
        conn.commit()
    else:
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            cur.execute(postgres_sql)
    conn.close()


def refuse(ctx, table: str, name: str) -> None:
    """Make the database refuse rows named `name` into `table` (images or
    image_events), as a constraint would."""
    admin_sql(
        ctx,
        f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table}"
        f" WHEN NEW.name = '{name}' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        f"ALTER TABLE {table} ADD CONSTRAINT refuse CHECK (name <> '{name}') NOT VALID",
    )


def unrefuse(ctx, table: str) -> None:
    admin_sql(ctx, f"DROP TRIGGER refuse_{table}", f"ALTER TABLE {table} DROP CONSTRAINT refuse")


@pytest.mark.gen_test
async def test_a_failed_change_leaves_no_event(api, ctx) -> None:
    storage = ctx.storage
    await asyncio.to_thread(refuse, ctx, "images", "bad/name")
    try:
        with pytest.raises(StorageError):
            await storage.put(NewEntry("b1", "bad/name", ("1",)), Writer(actor="ci"))
    finally:
        await asyncio.to_thread(unrefuse, ctx, "images")
    # Refused by scope, on create and on delete.
    no = Writer(actor="ci", may_write=lambda name: False)
    with pytest.raises(OutOfScope):
        await storage.put(NewEntry("s1", "quay.io/team-b/x", ("1",)), no)
    await storage.put(NewEntry("s1", "quay.io/team-b/x", ("1",)), Writer(actor="admin"))
    with pytest.raises(OutOfScope):
        await storage.put(NewEntry("s1", "quay.io/team-b/x", ("2",)), no)
    with pytest.raises(OutOfScope):
        await storage.delete("s1", no)
    got = await storage.events(EventQuery())
    assert [(e.action, e.image_id, e.actor) for e in got] == [("created", "s1", "admin")]
    assert (await storage.get("s1")).tags == ("1",)


@pytest.mark.gen_test
async def test_a_change_whose_event_fails_is_not_made(api, ctx) -> None:
    storage = ctx.storage
    await storage.put(NewEntry("keep", "bad/name", ("1",)), Writer(actor="ci"))
    await asyncio.to_thread(refuse, ctx, "image_events", "bad/name")
    try:
        with pytest.raises(StorageError):
            await storage.put(NewEntry("new", "bad/name", ("1",)), Writer(actor="ci"))
        with pytest.raises(StorageError):
            await storage.put(NewEntry("keep", "bad/name", ("2",)), Writer(actor="ci"))
        with pytest.raises(StorageError):
            await storage.delete("keep", Writer(actor="ci"))
    finally:
        await asyncio.to_thread(unrefuse, ctx, "image_events")
    assert (await api.get("/images/new")).status == 404
    assert (await api.get("/images/keep")).json["tags"] == ["1"]
    assert [e["action"] for e in await events(api)] == ["created"]
    # And the store writes on afterwards.
    await storage.delete("keep", Writer(actor="ci"))
    assert [e["action"] for e in await events(api)] == ["created", "deleted"]


@pytest.mark.gen_test
async def test_metrics_count_the_events_written(api) -> None:
    await put(api, {"id": "m1", "name": "a/b", "tags": ["1"]})
    await put(api, {"id": "m1", "name": "a/b", "tags": ["2"]})
    await api.delete("/images/m1", headers=AUTH)
    await api.delete("/images/m1", headers=AUTH)
    text = (await api.get("/metrics")).body.decode()
    for action in ("created", "updated", "deleted"):
        assert f'imagelist_events_written_total{{action="{action}"}} 1.0' in text
    assert "imagelist_events_pruned_total 0.0" in text


# -- retention ----------------------------------------------------------------


def age_events(ctx, up_to_seq: int, days: int) -> None:
    """Backdate the events up to `up_to_seq` by `days` (past the guard that
    keeps them append-only on PostgreSQL)."""
    url = ctx.config.database_url
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        conn.execute(
            "UPDATE image_events SET at = at - ? WHERE seq <= ?",
            (days * 86400 * 1_000_000, up_to_seq),
        )
        conn.commit()
        conn.close()
        return
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE image_events DISABLE TRIGGER image_events_append_only")
        cur.execute(
            "UPDATE image_events SET at = at - make_interval(days => %s) WHERE seq <= %s",
            (days, up_to_seq),
        )
        cur.execute("ALTER TABLE image_events ENABLE TRIGGER image_events_append_only")
    conn.close()


@pytest.mark.gen_test
async def test_retention_prunes_old_events_in_batches(api, ctx) -> None:
    storage = ctx.storage
    for n in range(5):
        await storage.put(NewEntry(f"old{n}", "a/b", ("1",)), Writer(actor="ci"))
    old = await storage.events(EventQuery())
    for n in range(3):
        await storage.put(NewEntry(f"new{n}", "a/b", ("1",)), Writer(actor="ci"))
    await asyncio.to_thread(age_events, ctx, old[-1].seq, 400)
    # 0 keeps every event.
    assert await prune_once(storage, 0) == 0
    await prune_events_forever(storage, 0)  # returns at once
    batches: list[int] = []
    assert await prune_once(storage, 365, batches.append, batch=2) == 5
    assert batches == [2, 2, 1]
    left = await storage.events(EventQuery())
    assert [e.image_id for e in left] == ["new0", "new1", "new2"]
    assert await prune_once(storage, 365, batch=2) == 0
    # Younger than the retention: kept.
    await asyncio.to_thread(age_events, ctx, left[0].seq, 30)
    assert await prune_once(storage, 365) == 0
    assert len(await storage.events(EventQuery())) == 3
    assert await prune_once(storage, 29) == 1
    # A retention reaching back before the calendar does (year 1): nothing
    # is that old, and the prune must not die of it.
    for days in (800_000, 10**12):
        assert await prune_once(storage, days) == 0
    assert len(await storage.events(EventQuery())) == 2


def test_retention_option_and_environment() -> None:
    from config.options import ConfigError, load_config

    assert load_config([], env={}).events_retention_days == 365
    env = {"IMAGELIST_EVENTS_RETENTION_DAYS": "0"}
    assert load_config([], env=env).events_retention_days == 0
    assert load_config(["--events-retention-days", "30"], env=env).events_retention_days == 30
    for bad in ("-1", "1.5", "forever"):
        with pytest.raises(ConfigError, match="--events-retention-days"):
            load_config(["--events-retention-days", bad], env={})


@pytest.mark.parametrize(("days", "left"), [("1", 1), ("0", 3), ("800000", 3)])
def test_the_daemon_prunes_at_start(tmp_path: Path, days: str, left: int) -> None:
    """The real daemon, on a SQLite file holding two events from 400 days
    ago: pruned at start unless the retention is 0 (or reaches back before
    year 1, when the daemon must still stop cleanly)."""
    from daemon import Daemon

    path = tmp_path / "imagelist.db"
    url = f"sqlite:///{path}"
    with Daemon("--database-url", url) as first:
        for n in range(3):
            status, _, _ = first.request(
                "PUT", "/images", {"id": f"e{n}", "name": "a/b", "tags": ["1"]}
            )
            assert status == 200
    conn = sqlite3.connect(path)
    conn.execute("UPDATE image_events SET at = at - ? WHERE seq <= 2", (400 * 86400 * 10**6,))
    conn.commit()
    conn.close()
    with Daemon("--database-url", url, env={"IMAGELIST_EVENTS_RETENTION_DAYS": days}) as d:
        if left == 1:
            d.wait_for_log("events_pruned")
        status, body, _ = d.request("GET", "/events")
        assert status == 200
        assert [e["id"] for e in body][-left:] == ["e0", "e1", "e2"][-left:]
        assert len(body) == left
        _, metrics, _ = d.request("GET", "/metrics")
        assert f"imagelist_events_pruned_total {3 - left:.1f}" in metrics.decode()
    assert d.stop() == 0, d.output
    assert "uncaught_exception" not in "\n".join(d.output)
