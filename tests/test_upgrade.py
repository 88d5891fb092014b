"""Upgrading in place from the Go service: its database, on a real PostgreSQL.

The old database is built from the exact DDL gorm v1 created, and its rows
are written as the Go service (lib/pq) and admins (psql) wrote them. The Go
service's own statements then run against the adopted schema as lib/pq sends
them: parameters untyped, their types inferred by the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from storage import NewEntry, create_storage
from storage.legacy import GO_SERVICE_DDL
from storage.migrations import POSTGRES as MIGRATIONS
from storage.model import format_timestamp
from storage.reference import parse_reference

from daemon import Daemon
from helpers import eventually, wait_for
from pgcluster import create_database

ROOT = Path(__file__).resolve().parent.parent

ZERO = "0001-01-01T00:00:00.000000Z"
T1 = "2017-10-27T16:51:06.698062Z"
T2 = "2019-03-01T08:00:00.000001Z"
HEX = "ab" * 32


def pq_array(tags: list[str] | None) -> str | None:
    """A []string as lib/pq's StringArray writes it: every element quoted,
    `"` and `\\` escaped by a backslash; nil is NULL."""
    if tags is None:
        return None
    quoted = ('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in tags)
    return "{" + ",".join(quoted) + "}"


AWKWARD = ['say "hi"', "back\\slash", "NULL", "", "dup", "dup", "ünïcødé ✓", "a b", "c,d"]

# (created_at, updated_at, id, name, tags as stored) -> the entry the Go
# service showed (imagelist answers [] where it omitted tags).
OLD_ROWS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (
        (T1, T1, "123abc", "myorg/apache2", pq_array(["latest", "2.4"])),
        {"name": "myorg/apache2", "tags": ["latest", "2.4"], "created_at": T1, "updated_at": T1},
    ),
    (  # a PUT without tags: lib/pq writes NULL
        (T1, T2, "notags", "quay.io/foo/nginx", None),
        {"name": "quay.io/foo/nginx", "tags": [], "created_at": T1, "updated_at": T2},
    ),
    (
        (T2, T2, "awkward", "myorg/awkward", pq_array(AWKWARD)),
        {"name": "myorg/awkward", "tags": AWKWARD, "created_at": T2, "updated_at": T2},
    ),
    (  # written by hand: unquoted, and an empty array
        (T1, T1, "unquoted", "myorg/hand", "{v1,latest}"),
        {"name": "myorg/hand", "tags": ["v1", "latest"], "created_at": T1, "updated_at": T1},
    ),
    (
        (T1, T1, "empty", "myorg/hand", "{}"),
        {"name": "myorg/hand", "tags": [], "created_at": T1, "updated_at": T1},
    ),
    (  # an admin's row: NULL everything, an id with a space
        (None, None, "has space", None, None),
        {"name": "", "tags": [], "created_at": ZERO, "updated_at": ZERO},
    ),
    (  # a timestamp written with an offset, another with zero microseconds
        ("2020-01-01 12:00:00+02", None, f"sha256:{HEX}", "nginx", pq_array(["1.25"])),
        {
            "name": "nginx",
            "tags": ["1.25"],
            "created_at": "2020-01-01T10:00:00.000000Z",
            "updated_at": ZERO,
        },
    ),
    (
        (T2, T1, "ünï/ид", "ünï/app", pq_array(["x"])),
        {"name": "ünï/app", "tags": ["x"], "created_at": T2, "updated_at": T1},
    ),
]
EXPECTED = {row[2]: {"id": row[2], **shown} for row, shown in OLD_ROWS}


def old_database(server_url: str, rows: list[tuple[Any, ...]] | None = None) -> str:
    """A database as the Go service left it."""
    url = create_database(server_url, f"imagelist_old_{uuid.uuid4().hex[:8]}")
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute(GO_SERVICE_DDL)
        for row in [r for r, _ in OLD_ROWS] if rows is None else rows:
            cur.execute("INSERT INTO images VALUES (%s, %s, %s, %s, %s)", row)
    conn.close()
    return url


def snapshot(url: str) -> dict[str, Any]:
    """Everything adoption could change: relations, columns, triggers,
    functions, and every row as text."""
    conn = psycopg2.connect(url)
    out: dict[str, Any] = {}
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT relname, relkind FROM pg_class JOIN pg_namespace n ON n.oid = relnamespace"
            " WHERE nspname = 'public' ORDER BY 1"
        )
        out["relations"] = cur.fetchall()
        cur.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, attcollation"
            " FROM pg_attribute WHERE attrelid = 'images'::regclass AND attnum > 0 ORDER BY attnum"
        )
        out["columns"] = cur.fetchall()
        cur.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'images'::regclass ORDER BY 1")
        out["triggers"] = cur.fetchall()
        cur.execute(
            "SELECT proname FROM pg_proc JOIN pg_namespace n ON n.oid = pronamespace"
            " WHERE nspname = 'public' ORDER BY 1"
        )
        out["functions"] = cur.fetchall()
        cur.execute("SELECT images::text FROM images ORDER BY id")
        out["rows"] = cur.fetchall()
    conn.close()
    return out


def sql(url: str, statement: str, params: Any = None) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@pytest.fixture
def old_url(pg_server_url: str) -> str:
    return old_database(pg_server_url)


# The contract fixtures (running, ctx, api) assemble the app on this database
# (the daemon's key sweep is not part of it: tests call compute_stale_keys).
@pytest.fixture
def database_url(old_url: str) -> str:
    return old_url


def q(ref: str) -> str:
    return "/allowed?image=" + urllib.parse.quote(ref, safe="")


async def allowed(api: Any, ref: str) -> bool:
    reply = await api.get(q(ref))
    assert reply.status == 200, reply.body
    return bool(reply.json["allowed"])


def image_path(image_id: str) -> str:
    return "/images/" + urllib.parse.quote(image_id, safe="")


# -- adoption: every entry as the Go service showed it ---------------------


@pytest.mark.gen_test(timeout=60)
async def test_every_old_entry_is_served_as_the_go_service_showed_it(api, old_url) -> None:
    for image_id, expected in EXPECTED.items():
        reply = await api.get(image_path(image_id))
        assert reply.status == 200, (image_id, reply.body)
        assert reply.json == expected
    listed = await api.all_images()
    assert {e["id"]: e for e in listed} == EXPECTED
    assert len(listed) == len(EXPECTED)
    # Newest first; the NULL timestamps (now the Go zero time) last.
    assert [e["id"] for e in listed] == [
        e["id"] for e in sorted(EXPECTED.values(), key=lambda e: (e["updated_at"], e["id"]))
    ][::-1]
    for sort in ("created_at", "name", "id"):
        paged, cursor = [], ""
        while True:
            reply = await api.get(f"/images?sort={sort}&limit=3{cursor}")
            assert reply.status == 200, reply.body
            paged += reply.json
            link = reply.headers.get("Link")
            if not link:
                break
            cursor = "&cursor=" + urllib.parse.parse_qs(link[1:].split(">")[0])["cursor"][0]
        assert sorted(e["id"] for e in paged) == sorted(EXPECTED), sort
        assert paged == await api.all_images(f"?sort={sort}")
    assert await api.all_images("?name=myorg/hand") == [EXPECTED["unquoted"], EXPECTED["empty"]]
    # The schema is imagelist's own now, at the latest version.
    assert sql(old_url, "SELECT version FROM imagelist_schema") == [(len(MIGRATIONS),)]


@pytest.mark.gen_test(timeout=60)
async def test_old_entries_decide_admission(api) -> None:
    assert (await api.get(q("myorg/apache2:2.4"))).json["allowed"] is True
    assert (await api.get(q("docker.io/myorg/apache2:latest"))).json["allowed"] is True
    assert (await api.get(q(f"nginx@sha256:{HEX}"))).json["allowed"] is True
    assert (await api.get(q("nginx:1.25"))).json["allowed"] is True
    assert (await api.get(q("myorg/awkward:dup"))).json["allowed"] is True
    assert (await api.get(q("myorg/hand:v1"))).json["allowed"] is True
    assert (await api.get(q("quay.io/foo/nginx:latest"))).json["allowed"] is False


@pytest.mark.gen_test(timeout=60)
async def test_ids_and_tags_todays_rules_refuse_are_read_deleted_and_retagged(api) -> None:
    # Tags today's rules refuse ("", "a b") are served as stored, and the
    # entry can be given new valid tags.
    reply = await api.put({"id": "awkward", "name": "myorg/awkward", "tags": ["v2"]})
    assert reply.status == 200 and reply.json["tags"] == ["v2"]
    assert reply.json["created_at"] == EXPECTED["awkward"]["created_at"]
    # A PUT without tags keeps them, as the Go service did.
    kept = await api.put({"id": "unquoted", "name": "myorg/hand"})
    assert kept.status == 200 and kept.json == EXPECTED["unquoted"]
    # An id with a space, raw-encoded in the path.
    assert (await api.get("/images/has%20space")).json == EXPECTED["has space"]
    assert (await api.delete("/images/has%20space")).status == 204
    assert (await api.get("/images/has%20space")).status == 404
    # Creating such an id is still refused.
    assert (await api.put({"id": "new space", "name": "n"})).status == 400


# -- the Go service keeps working on the adopted schema ----------------------

# As PostgreSQL logged them (gorm v1 over lib/pq). PREPARE without parameter
# types is what lib/pq does: the server infers each type from the column.
GO_STATEMENTS = {
    "automigrate": "SELECT count(*) FROM INFORMATION_SCHEMA.tables"
    " WHERE table_name = $1 AND table_type = 'BASE TABLE'",
    "find": 'SELECT * FROM "images"  WHERE "images"."id" = $1 AND (("id" = $2))'
    ' ORDER BY "images"."id" ASC LIMIT 1',
    "insert": 'INSERT INTO "images" ("created_at","updated_at","id","name","tags")'
    ' VALUES ($1,$2,$3,$4,$5) RETURNING "images"."id"',
    "update": 'UPDATE "images" SET "tags" = $1, "updated_at" = $2'
    '  WHERE "images"."id" = $3 AND (("id" = $4))',
    "get": 'SELECT * FROM "images"  WHERE ("id" = $1) ORDER BY "images"."id" ASC LIMIT 1',
    "by_name": 'SELECT * FROM "images"  WHERE ("name" = $1) ORDER BY id desc',
    "all": 'SELECT * FROM "images"   ORDER BY updated_at desc',
    "delete": 'DELETE FROM "images"  WHERE "images"."id" = $1',
}


class GoService:
    """The Go service's statements on one connection, parameters untyped:
    psycopg2 renders a str as a plain quoted literal, of type unknown."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            for name, statement in GO_STATEMENTS.items():
                cur.execute(f"PREPARE go_{name} AS {statement}")

    def parameter_types(self) -> dict[str, str]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT name, parameter_types::text FROM pg_prepared_statements")
            return dict(cur.fetchall())

    def run(self, name: str, *params: str | None) -> list[tuple]:
        assert all(p is None or isinstance(p, str) for p in params)  # untyped
        with self.conn.cursor() as cur:
            placeholders = ", ".join(["%s"] * len(params))
            cur.execute(
                f"EXECUTE go_{name}({placeholders})" if params else f"EXECUTE go_{name}", params
            )
            return cur.fetchall() if cur.description else []

    def put(self, image_id: str, name: str, tags: list[str] | None) -> None:
        """PUT /images as the Go service did it."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000001Z", time.gmtime())
        if not self.run("find", image_id, image_id):
            self.run("insert", now, now, image_id, name, pq_array(tags))
        elif tags is not None:
            self.run("update", pq_array(tags), now, image_id, image_id)

    def close(self) -> None:
        self.conn.close()

    def view(self) -> dict[str, dict[str, Any]]:
        """Every entry as the Go service showed it (`SELECT *`, its list),
        in imagelist's rendering: tags parsed from the literal as lib/pq
        does (here by the server's own array input), [] for none; NULL
        timestamps as the Go zero time, a NULL name as ""."""
        with self.conn.cursor() as cur:
            cur.execute("EXECUTE go_all")
            columns = [d[0] for d in cur.description]
            rows = [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]
            shown = {}
            for row in rows:
                tags = row["tags"]
                if isinstance(tags, str):  # the old varchar column
                    cur.execute("SELECT %s::text[]", (tags,))
                    (tags,) = cur.fetchone()
                shown[row["id"]] = {
                    "id": row["id"],
                    "name": row["name"] or "",
                    "tags": tags or [],
                    **{
                        col: ZERO if row[col] is None else format_timestamp(row[col])
                        for col in ("created_at", "updated_at")
                    },
                }
        return shown


def test_the_api_after_adoption_is_what_the_go_service_showed_before(old_url) -> None:
    go = GoService(old_url)
    try:
        before = go.view()
    finally:
        go.close()
    assert before == EXPECTED
    with Daemon("--database-url", old_url) as daemon:
        daemon.wait_for_log("legacy_schema_adopted")
        status, listed, _ = daemon.request("GET", "/images")
        assert status == 200 and len(listed) == len(before)
        assert {e["id"]: e for e in listed} == before
        for image_id, entry in before.items():
            assert daemon.request("GET", image_path(image_id))[1] == entry
    # ...and the Go service, started again on the adopted table, still sees
    # exactly what it saw (a rollback).
    go = GoService(old_url)
    try:
        assert go.view() == before
    finally:
        go.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_go_service_keeps_working_on_the_adopted_schema(api, ctx, old_url) -> None:
    go = GoService(old_url)
    try:
        types = go.parameter_types()
        # The server inferred the types lib/pq never sent.
        assert types["go_insert"] == (
            '{"timestamp with time zone","timestamp with time zone",text,text,text[]}'
        )
        assert types["go_update"] == '{text[],"timestamp with time zone",text,text}'
        assert go.run("automigrate", "images") == [(1,)]  # no new table
        go.put("go-new", "myorg/fromgo", ["v1", 'q"uote'])
        go.put("go-notags", "myorg/fromgo", None)  # NULL tags
        go.put("123abc", "ignored", ["2.5"])
        go.put("notags", "ignored", None)  # no UPDATE at all
        rows = go.run("get", "go-new")
        assert rows and rows[0][2:5] == ("go-new", "myorg/fromgo", ["v1", 'q"uote'])
        assert {r[2] for r in go.run("by_name", "myorg/fromgo")} == {"go-new", "go-notags"}
        assert len(go.run("all")) == len(EXPECTED) + 2
        assert go.run("find", "has space", "has space")[0][3] == ""
    finally:
        go.close()
    new = (await api.get("/images/go-new")).json
    assert new["tags"] == ["v1", 'q"uote'] and new["name"] == "myorg/fromgo"
    assert (await api.get("/images/go-notags")).json["tags"] == []
    assert (await api.get("/images/123abc")).json["tags"] == ["2.5"]
    assert (await api.get("/images/notags")).json == EXPECTED["notags"]
    assert len(await api.all_images()) == len(EXPECTED) + 2
    # The replica computes the keys of the Go service's rows as their
    # notices arrive; the sweep (called here as the daemon's loop calls it)
    # stores them, for the database's own match.
    await eventually(lambda: allowed(api, "myorg/fromgo:v1"), True)
    assert await ctx.storage.compute_stale_keys() > 0
    assert await allowed(api, "myorg/fromgo:v1") is True
    # imagelist writes the same table the Go service reads.
    assert (await api.put({"id": "from-imagelist", "name": "a/b", "tags": ["t"]})).status == 200
    go = GoService(old_url)
    try:
        assert go.run("get", "from-imagelist")[0][2:5] == ("from-imagelist", "a/b", ["t"])
        go.run("delete", "from-imagelist")
    finally:
        go.close()
    assert (await api.get("/images/from-imagelist")).status == 404


@pytest.mark.gen_test(timeout=60)
async def test_a_rename_by_sql_moves_admission_to_the_new_name(api, ctx, old_url) -> None:
    assert await allowed(api, "myorg/apache2:2.4") is True
    sql(old_url, "UPDATE images SET name = 'myorg/renamed' WHERE id = '123abc'")
    # The rename's notice reaches the replica (README: within 1 s): the old
    # name stops allowing, the new one allows.
    await eventually(lambda: allowed(api, "myorg/apache2:2.4"), False)
    assert await ctx.storage.compute_stale_keys() >= 1
    await eventually(lambda: allowed(api, "myorg/renamed:2.4"), True)
    sql(old_url, "INSERT INTO images (id, name, tags) VALUES ('psql', 'myorg/psql', NULL)")
    entry = (await api.get("/images/psql")).json
    assert entry["tags"] == [] and entry["created_at"] != ZERO  # a NULL from SQL means "now"


# The store alone, without the app's sweep: what compute_stale_keys does.
@pytest.mark.gen_test(timeout=60)
async def test_rows_other_writers_add_allow_nothing_until_their_keys_are_computed(
    old_url,
) -> None:
    store = create_storage(old_url)
    await store.open()
    try:
        # The two old entries whose names are no repository names were left
        # without keys by the migration; the sweep looks at them once.
        assert await store.compute_stale_keys() == 2
        assert await store.compute_stale_keys() == 0
        go = GoService(old_url)
        try:
            go.put("go-a", "myorg/fromgo", ["v1"])
            go.put("go-b", "myorg/fromgo", ["v2"])
        finally:
            go.close()
        ref = parse_reference("myorg/fromgo:v1")
        assert await store.match([ref]) == [()]
        assert await store.compute_stale_keys(limit=1) == 1  # batches are bounded
        assert await store.compute_stale_keys() == 1
        assert await store.compute_stale_keys() == 0
        found = await store.match([ref])
        assert [e.id for e in found[0]] == ["go-a"]
        # A PUT through imagelist of a row SQL wrote computes its keys too.
        sql(old_url, "INSERT INTO images (id, name, tags) VALUES ('psql', 'myorg/psql', NULL)")
        await store.put(NewEntry("psql", "myorg/psql", ("v9",)))
        found = await store.match([parse_reference("myorg/psql:v9")])
        assert [e.id for e in found[0]] == ["psql"]
        assert await store.compute_stale_keys() == 0
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_empty_old_table_is_adopted_and_writable_by_both(pg_server_url) -> None:
    url = old_database(pg_server_url, rows=[])
    store = create_storage(url)
    await store.open()
    try:
        await store.put(NewEntry("mine", "myorg/app", ("v1",)))
        go = GoService(url)
        try:
            go.put("theirs", "myorg/app", None)
            go.put("mine", "ignored", ["v2"])
        finally:
            go.close()
        assert (await store.get("theirs")).tags == ()
        assert (await store.get("mine")).tags == ("v2",)
        assert await store.count() == 2
    finally:
        await store.close()


# -- atomic, once, idempotent ---------------------------------------------


POISON = """
CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 'notags' THEN RAISE EXCEPTION 'poisoned row'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER poison BEFORE UPDATE ON images FOR EACH ROW EXECUTE FUNCTION poison();
"""


def test_adoption_that_fails_half_way_changes_nothing(old_url) -> None:
    # An admin's trigger refuses the first row update, which comes after
    # the columns were converted and the first migration ran.
    sql(old_url, POISON)
    before = snapshot(old_url)
    daemon = Daemon("--database-url", old_url).start(wait=False)
    try:
        assert daemon.wait(60) == 1
    finally:
        daemon.stop()
    refused = [e for e in daemon.logs() if e["event"] == "storage_open_failed"]
    assert refused and "poisoned row" in refused[0]["error"], daemon.output
    events = [e["event"] for e in daemon.logs()]
    assert "schema_migrated" not in events, events
    assert "legacy_schema_adopted" not in events
    assert snapshot(old_url) == before
    sql(old_url, "DROP TRIGGER poison ON images")
    with Daemon("--database-url", old_url) as again:
        adopted = again.wait_for_log("legacy_schema_adopted")
        assert adopted["rows"] == len(EXPECTED) and adopted["seconds"] > 0
        status, body, _ = again.request("GET", "/images/notags")
        assert status == 200 and body == EXPECTED["notags"]


def test_tags_that_are_no_array_refuse_adoption_naming_the_ids(pg_server_url) -> None:
    rows = [
        (T1, T1, "ok", "n", "{a}"),
        (T1, T1, "bad1", "n", "latest"),
        (T1, T1, "bad2", "n", "{{a},{b}}"),
    ]
    url = old_database(pg_server_url, rows)
    before = snapshot(url)
    daemon = Daemon("--database-url", url).start(wait=False)
    try:
        assert daemon.wait(60) == 1
    finally:
        daemon.stop()
    refused = next(e for e in daemon.logs() if e["event"] == "storage_open_failed")
    assert "2 rows have tags that are not an array literal" in refused["error"]
    assert "'bad1', 'bad2'" in refused["error"]
    assert snapshot(url) == before


@pytest.mark.gen_test(timeout=90)
async def test_instances_starting_together_adopt_once_and_a_restart_is_a_no_op(
    old_url, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="imagelist.storage")
    stores = [create_storage(old_url, pool_size=1) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        adopted = [r for r in caplog.records if r.getMessage() == "legacy_schema_adopted"]
        assert len(adopted) == 1
        assert adopted[0].rows == len(EXPECTED)  # type: ignore[attr-defined]
        migrated = [r.version for r in caplog.records if r.getMessage() == "schema_migrated"]
        assert migrated == list(range(1, len(MIGRATIONS) + 1))
        for store in stores:
            assert (await store.get("awkward")).tags == tuple(AWKWARD)
        await asyncio.gather(
            *(s.put(NewEntry(f"n{i}", "x/y", ("t",))) for i, s in enumerate(stores))
        )
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert sql(old_url, "SELECT version FROM imagelist_schema") == [(len(MIGRATIONS),)]
    before = snapshot(old_url)
    caplog.clear()
    again = create_storage(old_url)
    await again.open()
    try:
        assert await again.count() == len(EXPECTED) + 4
    finally:
        await again.close()
    assert not [r for r in caplog.records if r.name == "imagelist.storage"]
    assert snapshot(old_url) == before


# -- the old environment and defaults -------------------------------------


def test_the_go_service_environment_starts_imagelist_on_its_database(old_url, tmp_path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n  - name: ci\n    token: 'LF8zuwb2dJMjZLphiSUQHTeA'\n")
    parsed = urllib.parse.urlsplit(old_url)
    env = {
        "DBHOST": parsed.hostname or "",
        "DBPORT": str(parsed.port),
        "DBNAME": parsed.path.lstrip("/"),
        "DBPASSWORD": "not-logged-anywhere",
        "TOKENS_FILE": str(tokens),
    }
    env = {k: v for k, v in {**os.environ, **env}.items() if not k.startswith("IMAGELIST_")}
    daemon = Daemon(env=env)
    daemon.env = env  # exactly this environment, no IMAGELIST_ variable
    with daemon:
        warning = daemon.wait_for_log("legacy_environment")
        assert warning["level"] == "warning"
        assert sorted(warning["variables"]) == [
            "DBHOST",
            "DBNAME",
            "DBPASSWORD",
            "DBPORT",
            "TOKENS_FILE",
        ]
        assert daemon.wait_for_log("listening")["storage"] == "postgres"
        status, body, _ = daemon.request("GET", "/images/123abc")
        assert status == 200 and body == EXPECTED["123abc"]
        # Writes need a token again, as with the Go service.
        assert daemon.request("PUT", "/images", {"id": "x", "name": "y"})[0] == 401
    assert not [line for line in daemon.output if "not-logged-anywhere" in line]


# -- the rehearsal: --migrate-dry-run and --migrate ---------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGELIST_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "imagelist.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=str(ROOT),
    )


def test_dry_run_reports_and_changes_nothing_then_migrate_adopts(old_url) -> None:
    sql(old_url, "INSERT INTO images VALUES (now(), now(), 'broken', 'n', 'latest')")
    before = snapshot(old_url)
    done = run_cli("--migrate-dry-run", "--database-url", old_url)
    report = done.stdout
    assert done.returncode == 1, report
    assert "schema found: the Go service's images table" in report
    assert f"migrations to apply: 1 to {len(MIGRATIONS)}" in report
    assert f"entries: {len(EXPECTED) + 1}" in report
    assert 'NULLs to fill: tags 2 (-> []), name 1 (-> ""), created_at 1' in report
    assert "    'broken': tags 'latest'" in report
    assert "  ids: 1\n    'has space': id contains non-printable or whitespace characters" in report
    assert "  names: 1\n    'has space': name '': name must not be empty" in report
    assert "  tags: 1\n    'awkward': tags[0] contains non-printable or whitespace" in report
    assert "result: migrating would be refused" in report
    assert snapshot(old_url) == before

    sql(old_url, "DELETE FROM images WHERE id = 'broken'")
    done = run_cli("--migrate-dry-run", "--database-url", old_url)
    assert done.returncode == 0 and "result: ready to migrate" in done.stdout, done.stdout
    assert snapshot(old_url) == {
        **before,
        "rows": [r for r in before["rows"] if "broken" not in r[0]],
    }

    done = run_cli("--migrate", "--database-url", old_url)
    assert done.returncode == 0, done.stdout
    assert '"event":"legacy_schema_adopted"' in done.stdout
    assert sql(old_url, "SELECT version FROM imagelist_schema") == [(len(MIGRATIONS),)]
    done = run_cli("--migrate-dry-run", "--database-url", old_url)
    assert done.returncode == 0
    assert "schema found: imagelist's own schema" in done.stdout
    assert "migrations to apply: none" in done.stdout


def test_migrate_on_a_database_that_is_down_fails_clearly() -> None:
    from pgcluster import free_port

    done = run_cli(
        "--migrate", "--database-url", f"postgresql://u:secret@127.0.0.1:{free_port()}/x"
    )
    assert done.returncode == 1
    assert "migrate_failed" in done.stdout and "secret" not in done.stdout


def test_version_prints_the_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("imagelist ")


# -- rows any writer adds decide admission within seconds --------------------


def test_rows_the_go_service_writes_decide_admission_within_seconds(old_url) -> None:
    with Daemon("--database-url", old_url) as daemon:
        daemon.wait_for_log("legacy_schema_adopted")
        go = GoService(old_url)
        try:
            go.put("rolling", "myorg/rolling", ["v1"])
            written = time.monotonic()
            # Bounded wait; README documents "within 2 seconds" for a burst
            # of up to 1,000 rows (a one-second sweep plus one batch).
            deadline = written + 15
            while True:
                status, body, _ = daemon.request("GET", q("myorg/rolling:v1"))
                assert status == 200, body
                if body["allowed"] or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert body["allowed"] is True
            took = time.monotonic() - written
            assert [e for e in daemon.logs() if e["event"] == "entry_keys_computed"]
        finally:
            go.close()
        # Revoking through the Go service (a DELETE) needs no sweep: its
        # notice reaches the replica (README: within 1 s).
        go = GoService(old_url)
        try:
            go.run("delete", "rolling")
        finally:
            go.close()
        wait_for(lambda: daemon.request("GET", q("myorg/rolling:v1"))[1]["allowed"], False)
    print(f"allowed {took:.2f} s after the Go service's write")


# (environment, arguments) -> (database URL parts, Go variables named).
OLD_DEFAULTS = {
    "host": "localhost",
    "port": "5432",
    "user": "postgres",
    "dbname": "imagelist",
    "sslmode": "disable",
}
ENV_TABLE = [
    ({"DBHOST": "db1"}, [], {**OLD_DEFAULTS, "host": "db1"}, ["DBHOST"]),
    (
        {"DBHOST": "db1", "DBPORT": "6543", "DBUSER": "u", "DBNAME": "n", "DBSSLMODE": "require"},
        [],
        {"host": "db1", "port": "6543", "user": "u", "dbname": "n", "sslmode": "require"},
        ["DBHOST", "DBPORT", "DBUSER", "DBNAME", "DBSSLMODE"],
    ),
    # The old default password is not kept; a given one is used.
    ({"DBPASSWORD": "pw"}, [], {**OLD_DEFAULTS, "password": "pw"}, ["DBPASSWORD"]),
    # IMAGELIST_ variables win over the Go service's, and flags over both.
    ({"DBHOST": "db1", "IMAGELIST_DBHOST": "db2"}, [], {**OLD_DEFAULTS, "host": "db2"}, []),
    ({"DBHOST": "db1"}, ["--dbhost", "db3"], {**OLD_DEFAULTS, "host": "db3"}, []),
    (
        {"DBHOST": "db1", "IMAGELIST_DBNAME": "n2", "DBNAME": "n1"},
        [],
        {**OLD_DEFAULTS, "host": "db1", "dbname": "n2"},
        ["DBHOST"],
    ),
    # The separate options only: a --database-url wins over them all.
    ({"DBHOST": "db1"}, ["--database-url", "postgresql://x@h/d"], "postgresql://x@h/d", ["DBHOST"]),
    # An empty Go variable is not set.
    ({"DBHOST": ""}, [], None, []),
    ({}, [], None, []),
]


@pytest.mark.parametrize(("env", "argv", "expected", "named"), ENV_TABLE)
def test_the_go_environment_and_defaults(env, argv, expected, named) -> None:
    from psycopg2.extensions import parse_dsn

    from config import load_config

    config = load_config(argv, env=env)
    assert sorted(config.legacy_env) == sorted(named)
    if expected is None:
        assert config.database_url.startswith("sqlite:")
    elif isinstance(expected, str):
        assert config.database_url == expected
    else:
        assert parse_dsn(config.database_url) == expected


def test_the_go_environment_for_everything_else(tmp_path) -> None:
    from config import ConfigError, load_config

    tokens, cert, key = (tmp_path / n for n in ("tokens.yaml", "cert.pem", "key.pem"))
    for path in (tokens, cert, key):
        path.write_text("x")
    env = {
        "LISTEN": "127.0.0.1:9001",
        "TOKENS_FILE": str(tokens),
        "CERTFILE": str(cert),
        "KEYFILE": str(key),
        "DEBUG": "true",
    }
    config = load_config([], env=env)
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9001)
    assert config.tokens_file == str(tokens)
    assert (config.certfile, config.keyfile) == (str(cert), str(key))
    assert config.debug is True
    assert sorted(config.legacy_env) == sorted(env)
    # Flags and IMAGELIST_ variables win.
    config = load_config(
        ["--listen", ":9002"], env={**env, "IMAGELIST_DEBUG": "false", "IMAGELIST_TOKENS_FILE": ""}
    )
    assert config.listen_port == 9002 and config.debug is False and config.tokens_file is None
    assert sorted(config.legacy_env) == ["CERTFILE", "KEYFILE"]
    with pytest.raises(ConfigError, match="DEBUG='maybe': expected true or false"):
        load_config([], env={"DEBUG": "maybe"})


def test_dry_run_wants_a_writable_server_when_the_dsn_says_so(old_url) -> None:
    name = urllib.parse.urlsplit(old_url).path.lstrip("/")
    conn = psycopg2.connect(old_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    conn.close()
    dsn = old_url + "?target_session_attrs=read-write"
    done = run_cli("--migrate-dry-run", "--database-url", dsn)
    assert done.returncode == 1
    assert "server is read-only" in done.stdout, done.stdout
