"""Attacks on scoped tokens beyond the plain cases of test_scoped_tokens:
through the real app on both backends, what a holder of a scoped (or just
revoked) token tries, each checked to change nothing it may not change; and
tokens files that would silently widen a token or echo a secret."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest
import structlog
from tokenfiles import bearer, entry, tokens_yaml, write_in_place
from tornado.httpclient import AsyncHTTPClient

from config.tokens import TokenFileError, parse_tokens

from client import Client
from helpers import Start, app_starter, eventually, running_app

ADMIN, TEAM_A = "admin-Att4ck-Secret", "team-a-Att4ck-Secret"
SCOPED = ["quay.io/team-a/*"]
THEIRS = {"id": "theirs", "name": "quay.io/team-b/app", "tags": ["v1"]}


def tokens(team_a: dict[str, object]) -> str:
    return tokens_yaml(entry("admin", ADMIN), entry("team-a", TEAM_A, **team_a))


@pytest.fixture
def tokens_path(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "tokens.yaml"
    path.parent.mkdir()
    path.write_text(tokens({"scopes": SCOPED}))
    return path


@pytest.fixture
def start(database_url: str, tokens_path: Path, io_loop) -> Iterator[Start]:
    """The app as the daemon assembles it with `--tokens-file`, holding
    another team's entry written by the unscoped token."""
    options = ("--tokens-file", str(tokens_path))
    with app_starter(
        io_loop, database_url, *options, seeds=(THEIRS,), headers=bearer(ADMIN)
    ) as begin:
        yield begin


async def table(api: Client) -> list[dict[str, object]]:
    return await api.all_images("?sort=id")


# -- a token changed while a request's body is still coming ------------------------------


@pytest.mark.parametrize(
    ("change", "status"),
    [({"scopes": SCOPED, "is_disabled": True}, 401), ({"scopes": ["quay.io/team-c/*"]}, 403)],
    ids=["revoked", "narrowed"],
)
@pytest.mark.gen_test(timeout=60)
async def test_a_token_change_applies_to_a_request_whose_body_was_still_coming(
    start: Start, tokens_path: Path, change: dict[str, object], status: int
) -> None:
    """The headers (and the token) arrive before the change, the body after:
    the write is judged by the token set of when it is made. Otherwise a
    leaked token revoked now keeps writing through requests opened earlier,
    for as long as a body may take (30 s)."""
    api, running = await start()
    body = orjson.dumps({"id": "late", "name": "quay.io/team-a/app", "tags": ["v1"]})
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    head = (
        f"PUT /images HTTP/1.1\r\nHost: imagelist\r\nAuthorization: Bearer {TEAM_A}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body[:5])
    await writer.drain()

    async def inflight() -> int:
        return running.ctx.inflight

    await eventually(inflight, 1)  # authorized, and waiting for the rest of its body
    write_in_place(tokens_path, tokens(change))

    async def fresh_status() -> int:
        probe = {"id": "probe", "name": "quay.io/team-a/app"}
        return (await api.put(probe, headers=bearer(TEAM_A))).status

    await eventually(fresh_status, status)
    writer.write(body[5:])
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert TEAM_A.encode() not in answer
    assert (await api.get("/images/late")).status == 404


# -- races -------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_scoped_create_settles_however_the_id_churns(start: Start) -> None:
    """Writers creating and deleting one id as fast as they can (here the
    scoped token itself, in its own repository): each create either creates
    the entry or updates the one it finds, never a 5xx. PostgreSQL used to
    give up after the row appeared and vanished three times between its
    check and its insert (503 and an error log, about once a second here)."""
    api, _ = await start()
    item = {"id": "churn", "name": "quay.io/team-a/app", "tags": ["v1"]}
    statuses: set[int] = set()
    deadline = time.monotonic() + 4

    async def churn() -> None:
        while time.monotonic() < deadline:
            statuses.add((await api.put(item, headers=bearer(TEAM_A))).status)
            statuses.add((await api.delete("/images/churn", headers=bearer(TEAM_A))).status)

    with structlog.testing.capture_logs() as logs:
        await asyncio.gather(*(churn() for _ in range(8)))
    assert statuses == {200, 204}
    assert [e for e in logs if e["log_level"] == "error"] == []


# -- spellings of names, ids and requests ------------------------------------------------

DIGEST = "sha256:" + "b" * 64
# Team-b's entry pinned by a repo digest: an id with '/' and '@' in the path.
PINNED = {"id": f"quay.io/team-b/app@{DIGEST}", "name": "quay.io/team-b/app", "tags": ["v1"]}
# Other teams' repositories spelled as a scoped token might hope slips through.
SPELLINGS = [
    "QUAY.IO/team-b/app",
    "quay.io/team-a/../team-b/app",
    "quay.io/team-a/./app",
    "quay.io/team-a//app",
    "quay.io/team-a/app/",
    "quay.io/team-a%2Fapp",
    "quay.io/team-a",
    "quay.io./team-a/app",
    "quay.io:443/team-a/app",
    "quay.io/team-\u0430/app",  # a Cyrillic a
    "quay.io/team-a/app ",
    " quay.io/team-a/app",
    f"quay.io/team-a/app@{DIGEST}",
    "quay.io/team-a/app:latest",
    "quay.io/team-a/" + "x" * 250,
]


async def raw_request(port: int, head: str) -> bytes:
    """One request written by hand (repeated headers, odd methods); the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_no_spelling_reaches_another_teams_entry(start: Start) -> None:
    api, running = await start()
    assert (await api.put(PINNED, headers=bearer(ADMIN))).status == 200
    before = await table(api)
    for name in SPELLINGS:
        reply = await api.put({"id": "new", "name": name, "tags": ["x"]}, headers=bearer(TEAM_A))
        assert reply.status in (400, 403), (name, reply.status, reply.body)
        for id_ in (PINNED["id"], "theirs"):
            reply = await api.put({"id": id_, "name": name, "tags": ["x"]}, headers=bearer(TEAM_A))
            assert reply.status in (400, 403), (name, id_, reply.status)
    for path in (
        "quay.io%2Fteam-b%2Fapp%40" + DIGEST.replace(":", "%3A"),
        f"quay.io/team-b/app%40{DIGEST}",
        f"quay.io/team-b/app@{DIGEST}",
        "%74heirs",
    ):
        reply = await api.delete(f"/images/{path}", headers=bearer(TEAM_A))
        assert reply.status == 403, (path, reply.status)
    for head in (
        # Both tokens, as two headers: neither is taken (Tornado joins them).
        f"DELETE /images/theirs HTTP/1.1\r\nHost: i\r\nAuthorization: Bearer {TEAM_A}\r\n"
        f"Authorization: Bearer {ADMIN}\r\nContent-Length: 0\r\n\r\n",
        # A method override is not a method.
        "POST /images/theirs HTTP/1.1\r\nHost: i\r\nX-HTTP-Method-Override: DELETE\r\n"
        f"Authorization: Bearer {TEAM_A}\r\nContent-Length: 0\r\n\r\n",
    ):
        answer = await raw_request(running.port, head)
        assert answer.split(b" ")[1] in (b"401", b"405"), answer
    assert await table(api) == before


# -- the tokens file ---------------------------------------------------------------------

DUPLICATED = """\
tokens:
  - name: team-a
    token: 'dup-Sc0pe-Secret'
    scopes: ['quay.io/team-a/*']
    is_disabled: true
{again}
"""


@pytest.mark.parametrize(
    ("again", "problem"),
    [
        ("    scopes: ['docker.io/*']", "duplicate key 'scopes' (line 6, column 5)"),
        ("    is_disabled: false", "duplicate key 'is_disabled' (line 6, column 5)"),
        ("    token: 'other-Sc0pe-Secret'", "duplicate key 'token' (line 6, column 5)"),
        ("tokens: []", "duplicate key 'tokens' (line 6, column 1)"),
        ("    dup-Sc0pe-Secret: 1\n    dup-Sc0pe-Secret: 2", "duplicate key (line 7, column 5)"),
    ],
    ids=["scopes", "is_disabled", "token", "tokens", "unknown"],
)
def test_a_key_given_twice_is_refused_not_the_last_one_taken(again: str, problem: str) -> None:
    """YAML keeps the last of two equal keys without a word: a second
    `scopes` would widen the token, a second `is_disabled` re-enable it.
    The file is refused instead, naming the key only when it is one of the
    file's own (any other key might be a secret pasted in the wrong place)."""
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(DUPLICATED.format(again=again).encode(), "tokens.yaml")
    message = str(caught.value)
    assert message.startswith("tokens file tokens.yaml: not valid YAML: ")
    assert problem in message
    assert "Secret" not in message


def test_a_merge_key_may_still_be_overridden() -> None:
    """YAML merge keys (`<<: *base`) are a shared default, which an entry's
    own key overrides: that is not a key given twice."""
    doc = (
        "tokens:\n"
        "  - &a {name: a, token: 'merge-a-Secret', scopes: ['quay.io/team-a/*']}\n"
        "  - <<: *a\n"
        "    name: b\n"
        "    token: 'merge-b-Secret'\n"
        "    scopes: ['quay.io/team-b/*']\n"
    )
    a, b = parse_tokens(doc.encode(), "tokens.yaml")
    assert a.scope is not None and a.scope.describe() == ["quay.io/team-a/*"]
    assert b.scope is not None and b.scope.describe() == ["quay.io/team-b/*"]


@pytest.mark.parametrize("which", ["its own", "another entry's", "a hashed entry's"])
def test_a_token_pasted_among_the_scopes_is_not_echoed(which: str) -> None:
    """A pattern that is one of the file's tokens (pasted one line off) is
    refused without quoting it: the message goes to the log and to
    `--show-tokens`, which promise never to carry a secret."""
    secret = "Pasted-Sc0pe-Secret"
    a = entry("team-a", secret if which == "its own" else "a-Sc0pe-Secret", scopes=["x/*", secret])
    if which == "a hashed entry's":
        other = entry("other", token_sha256=hashlib.sha256(secret.encode()).hexdigest())
    else:
        other = entry("other", secret if which == "another entry's" else "o-Sc0pe-Secret")
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(tokens_yaml(a, other).encode(), "tokens.yaml")
    message = str(caught.value)
    assert "entry 1 ('team-a'): 'scopes': pattern 2 is a token of this file" in message
    assert "Sc0pe-Secret" not in message


# -- a token changed while its write waits for the database ------------------------------


class Blocker:
    """Another writer holding the database so that imagelist's next write
    waits for it: SQLite's write lock, or PostgreSQL's only pooled
    connection (a read queued behind an exclusive table lock holds it)."""

    def __init__(self, database_url: str) -> None:
        if database_url.startswith("sqlite:///"):
            self.conn: Any = sqlite3.connect(
                database_url.removeprefix("sqlite:///"), isolation_level=None
            )
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.conn = psycopg2.connect(database_url)
            self.conn.cursor().execute("LOCK TABLE images IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback() if hasattr(self.conn, "autocommit") else self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.mark.parametrize(
    ("change", "status"),
    [({"scopes": SCOPED, "is_disabled": True}, 401), ({"scopes": ["quay.io/team-c/*"]}, 403)],
    ids=["revoked", "narrowed"],
)
@pytest.mark.gen_test(timeout=60)
async def test_a_token_change_applies_to_a_write_waiting_for_the_database(
    database_url: str, tokens_path: Path, change: dict[str, object], status: int
) -> None:
    """Requests authorized, then held before their transaction (the pool or
    the write lock busy) while the token is revoked or narrowed: when they
    get the database they are judged by the token set in force then, and
    write nothing. Otherwise a flood of slow reads would keep a revoked
    token writing for as long as a write may wait (--db-timeout)."""
    http = AsyncHTTPClient(force_instance=True)
    options = ("--tokens-file", str(tokens_path), "--db-pool-size", "1", "--db-timeout", "20")
    async with running_app(database_url, *options) as running:
        api = Client(http, running.url)
        mine = {"id": "mine", "name": "quay.io/team-a/app", "tags": ["v1"]}
        assert (await api.put(mine, headers=bearer(TEAM_A))).status == 200
        before = await table(api)

        blocker = Blocker(database_url)
        try:
            held = [
                asyncio.ensure_future(api.get("/images/mine")),  # PostgreSQL: takes the pool
                asyncio.ensure_future(
                    api.put({**mine, "id": "late", "tags": ["v2"]}, headers=bearer(TEAM_A))
                ),
                asyncio.ensure_future(api.delete("/images/mine", headers=bearer(TEAM_A))),
            ]

            async def inflight() -> int:
                return running.ctx.inflight

            # SQLite's reads do not wait for its write lock: only the writes are held.
            await eventually(inflight, 2 if database_url.startswith("sqlite") else 3)
            await asyncio.sleep(0.3)  # past their token check, waiting for the database
            write_in_place(tokens_path, tokens(change))

            async def verdict() -> tuple[bool, object]:
                assert running.ctx.tokens is not None
                seen = running.ctx.tokens.check(TEAM_A.encode())
                return seen.ok, seen.scope is not None and seen.scope.allows(mine["name"])

            await eventually(verdict, (False, False) if status == 401 else (True, False))
        finally:
            blocker.release()
        got, put, delete = await asyncio.gather(*held)
        assert got.status == 200
        assert (put.status, delete.status) == (status, status), (put.body, delete.body)
        assert TEAM_A not in put.body.decode() + delete.body.decode()
        assert await table(api) == before
    http.close()
