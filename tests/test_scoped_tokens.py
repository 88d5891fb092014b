"""Scoped tokens through the real HTTP app, on both backends: what a token
whose `scopes` do not cover an entry can and cannot do to it.

Entries other teams own are created by an unscoped token first; every
refusal is checked to have changed nothing, by reading the table back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import tornado.web
from tokenfiles import bearer, entry, tokens_yaml, write_in_place

from imagelist import RunningApp

from client import Client, Reply
from helpers import Start, app_starter, eventually

ADMIN, TEAM_A, FROZEN = "admin-Sc0pe-Secret", "team-a-Sc0pe-Secret", "frozen-Sc0pe-Secret"
SECRETS = (ADMIN, TEAM_A, FROZEN)
TOKENS = tokens_yaml(
    entry("admin", ADMIN),
    entry("team-a", TEAM_A, scopes=["quay.io/team-a/*", "registry.example.com:5000/*"]),
    entry("frozen", FROZEN, scopes=[]),
)
# Entries of another team, and one whose name is no repository name.
THEIRS = {"id": "theirs", "name": "quay.io/team-b/app", "tags": ["v1"]}
EVIL_PREFIX = {"id": "evil", "name": "quay.io/team-a-evil/app", "tags": ["v1"]}
ODD = {"id": "odd", "name": "quay.io/team-a/app:1.0", "tags": ["v1"]}
WRITE_METHODS = [
    m for m in tornado.web.RequestHandler.SUPPORTED_METHODS if m not in ("GET", "HEAD", "OPTIONS")
]


@pytest.fixture
def tokens_path(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "tokens.yaml"
    path.parent.mkdir()
    path.write_text(TOKENS)
    return path


@pytest.fixture
def start(database_url: str, tokens_path: Path, io_loop) -> Iterator[Start]:
    """The app as the daemon assembles it with `--tokens-file`, seeded with
    other teams' entries by the unscoped token."""
    options = ("--tokens-file", str(tokens_path))
    seeds = (THEIRS, EVIL_PREFIX, ODD)
    with app_starter(io_loop, database_url, *options, seeds=seeds, headers=bearer(ADMIN)) as begin:
        yield begin


async def table(api: Client) -> list[dict[str, Any]]:
    return await api.all_images("?sort=id")


async def forbidden_count(api: Client, token: str) -> float:
    text = (await api.get("/metrics")).body.decode()
    line = f'imagelist_token_forbidden_writes_total{{token="{token}"}} '
    for row in text.splitlines():
        if row.startswith(line):
            return float(row.split()[-1])
    return 0.0


def assert_403(reply: Reply, token: str, repository: str) -> None:
    assert reply.status == 403, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json
    assert body == {
        "error": f"token {token!r} may not write repository {repository!r}",
        "request_id": reply.headers["X-Request-ID"],
        "details": {"token": token, "repository": repository},
    }
    for secret in SECRETS:
        assert secret not in reply.body.decode()


# -- PUT ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_create_needs_the_name_in_scope(start: Start) -> None:
    api, _ = await start()
    before = await table(api)
    for name in ("quay.io/team-a-evil/x", "quay.io/team-a", "quay.io/team-b/app", "nginx"):
        reply = await api.put({"id": "new", "name": name}, headers=bearer(TEAM_A))
        assert_403(reply, "team-a", name)
    assert await table(api) == before

    for name in ("quay.io/team-a/app", "quay.io/team-a/deep/er", "registry.example.com:5000/x"):
        reply = await api.put({"id": f"new-{name}", "name": name}, headers=bearer(TEAM_A))
        assert reply.status == 200, reply.body
        assert reply.json["name"] == name
    assert len(await table(api)) == len(before) + 3


@pytest.mark.gen_test(timeout=60)
async def test_update_needs_the_stored_name_in_scope(start: Start) -> None:
    api, _ = await start()
    before = await table(api)
    # The body names the token's own repository; the entry is team-b's.
    takeover = {"id": "theirs", "name": "quay.io/team-a/app", "tags": ["evil"]}
    assert_403(await api.put(takeover, headers=bearer(TEAM_A)), "team-a", THEIRS["name"])
    no_tags = {"id": "theirs", "name": "quay.io/team-a/app"}
    assert_403(await api.put(no_tags, headers=bearer(TEAM_A)), "team-a", THEIRS["name"])
    assert_403(await api.put(EVIL_PREFIX, headers=bearer(TEAM_A)), "team-a", EVIL_PREFIX["name"])
    assert await table(api) == before  # tags and timestamps untouched

    # Its own entries, it updates as before.
    mine = {"id": "mine", "name": "quay.io/team-a/app", "tags": ["v1"]}
    assert (await api.put(mine, headers=bearer(TEAM_A))).status == 200
    reply = await api.put({**mine, "tags": ["v2"]}, headers=bearer(TEAM_A))
    assert reply.status == 200
    assert reply.json["tags"] == ["v2"]


@pytest.mark.gen_test(timeout=60)
async def test_names_that_are_not_repositories_need_an_unscoped_token(start: Start) -> None:
    api, _ = await start()
    before = await table(api)
    for name in ("quay.io/team-a/app:1.0", "not a repository", "Quay.io/Team-A/app"):
        reply = await api.put({"id": "x", "name": name}, headers=bearer(TEAM_A))
        assert_403(reply, "team-a", name)
    assert_403(await api.put(ODD, headers=bearer(TEAM_A)), "team-a", ODD["name"])
    assert_403(await api.delete("/images/odd", headers=bearer(TEAM_A)), "team-a", ODD["name"])
    assert await table(api) == before
    assert (await api.put({"id": "x", "name": "any name"}, headers=bearer(ADMIN))).status == 200


# -- DELETE ------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_delete_needs_the_stored_name_in_scope(start: Start) -> None:
    api, _ = await start()
    mine = {"id": "mine", "name": "quay.io/team-a/app", "tags": ["v1"]}
    assert (await api.put(mine, headers=bearer(TEAM_A))).status == 200
    before = await table(api)
    for victim in (THEIRS, EVIL_PREFIX):
        reply = await api.delete(f"/images/{victim['id']}", headers=bearer(TEAM_A))
        assert_403(reply, "team-a", victim["name"])
    assert await table(api) == before

    assert (await api.delete("/images/mine", headers=bearer(TEAM_A))).status == 204
    assert (await api.get("/images/mine")).status == 404
    # An id that does not exist: 204, as for every token (idempotent).
    assert (await api.delete("/images/mine", headers=bearer(TEAM_A))).status == 204
    assert (await api.delete("/images/never", headers=bearer(FROZEN))).status == 204


# -- scopes: [] and no scopes ------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_an_empty_scope_writes_nothing(start: Start) -> None:
    api, _ = await start()
    before = await table(api)
    new = {"id": "new", "name": "quay.io/team-a/app"}
    assert_403(await api.put(new, headers=bearer(FROZEN)), "frozen", new["name"])
    assert_403(await api.put(THEIRS, headers=bearer(FROZEN)), "frozen", THEIRS["name"])
    assert_403(await api.delete("/images/theirs", headers=bearer(FROZEN)), "frozen", THEIRS["name"])
    assert await table(api) == before


@pytest.mark.gen_test(timeout=60)
async def test_an_unscoped_token_writes_everything_as_before(start: Start) -> None:
    api, _ = await start()
    for item in (THEIRS, EVIL_PREFIX, ODD, {"id": "n", "name": "n"}):
        assert (await api.put({**item, "tags": ["v9"]}, headers=bearer(ADMIN))).status == 200
        assert (await api.delete(f"/images/{item['id']}", headers=bearer(ADMIN))).status == 204
    assert await table(api) == []


# -- what the operator sees --------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_refusal_is_logged_and_counted_without_the_secret(start: Start) -> None:
    api, _ = await start()
    assert await forbidden_count(api, "team-a") == 0
    with structlog.testing.capture_logs() as logs:
        put = await api.put(THEIRS, headers={**bearer(TEAM_A), "X-Request-ID": "req-put-1"})
        delete = await api.delete(
            "/images/evil", headers={**bearer(TEAM_A), "X-Request-ID": "req-del-1"}
        )
    assert (put.status, delete.status) == (403, 403)
    forbidden = [e for e in logs if e["event"] == "auth_forbidden"]
    assert [(e["token"], e["repository"], e["request_id"]) for e in forbidden] == [
        ("team-a", THEIRS["name"], "req-put-1"),
        ("team-a", EVIL_PREFIX["name"], "req-del-1"),
    ]
    assert all(e["log_level"] == "warning" for e in forbidden)
    for secret in SECRETS:
        assert secret not in repr(logs)
    assert await forbidden_count(api, "team-a") == 2
    assert await forbidden_count(api, "admin") == 0


# -- every write route -------------------------------------------------------------------


def routes(running: RunningApp) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    """The route templates the running application serves, read from its router."""
    app = running.server.request_callback
    assert isinstance(app, tornado.web.Application)
    found = []
    for rule in app.wildcard_router.rules:
        handler = rule.target
        assert isinstance(handler, type) and issubclass(handler, tornado.web.RequestHandler)
        found.append((str(handler.route), handler))
    return found


@pytest.mark.gen_test(timeout=120)
async def test_no_write_route_changes_an_entry_out_of_scope(start: Start) -> None:
    api, running = await start()
    served = routes(running)
    assert {"/images", "/images/{id}"} <= {route for route, _ in served}
    before = await table(api)
    bodies = [
        {"id": "theirs", "name": "quay.io/team-a/app", "tags": ["evil"]},
        {"id": "theirs", "name": "quay.io/team-b/app", "tags": []},
        {"id": "evil", "name": "quay.io/team-a/app"},
    ]
    statuses: dict[tuple[str, str], set[int]] = {}
    for route, _ in served:
        for victim in ("theirs", "evil", "odd"):
            path = route.replace("{id}", victim)
            assert "{" not in path, f"route {route} has a parameter this walk does not fill"
            for method in WRITE_METHODS:
                for body in bodies:
                    reply = await api.request(
                        method, path, body if method != "DELETE" else None, headers=bearer(TEAM_A)
                    )
                    assert reply.status < 500, (method, path, reply.body)
                    statuses.setdefault((method, route), set()).add(reply.status)
    assert await table(api) == before
    # The two routes that write did refuse (not, say, fail validation).
    assert statuses[("PUT", "/images")] == {403}
    assert statuses[("DELETE", "/images/{id}")] == {403}


# -- reloads -----------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_reload_changes_what_a_token_may_write(start: Start, tokens_path: Path) -> None:
    api, _ = await start()
    update = {**THEIRS, "tags": ["v2"]}
    assert (await api.put(update, headers=bearer(TEAM_A))).status == 403
    write_in_place(
        tokens_path,
        tokens_yaml(
            entry("admin", ADMIN),
            entry("team-a", TEAM_A, scopes=["quay.io/team-b/*"]),
            entry("frozen", FROZEN, scopes=[]),
        ),
    )

    async def status() -> int:
        return (await api.put(update, headers=bearer(TEAM_A))).status

    await eventually(status, 200)
    mine = {"id": "mine", "name": "quay.io/team-a/app"}
    assert (await api.put(mine, headers=bearer(TEAM_A))).status == 403


@pytest.mark.gen_test(timeout=60)
async def test_a_bad_pattern_keeps_the_last_good_set(start: Start, tokens_path: Path) -> None:
    api, _ = await start()

    async def reload_errors() -> float:
        text = (await api.get("/metrics")).body.decode()
        row = next(r for r in text.splitlines() if r.startswith("imagelist_token_reload_errors"))
        return float(row.split()[-1])

    errors = await reload_errors()
    bad = tokens_yaml(
        entry("admin", ADMIN),
        entry("team-a", TEAM_A, scopes=["quay.io/team-b/*"]),
        entry("frozen", FROZEN, scopes=["MyOrg/*"]),
    )
    with structlog.testing.capture_logs() as logs:
        write_in_place(tokens_path, bad)
        await eventually(reload_errors, errors + 1)
    (failed,) = [e for e in logs if e["event"] == "tokens_reload_failed"]
    assert "entry 3 ('frozen'): 'scopes': pattern 1: 'MyOrg/*'" in failed["error"]
    assert failed["effect"] == "keeping the last good set"
    # The old scopes still hold: team-a keeps its repositories, not team-b's.
    mine = {"id": "mine", "name": "quay.io/team-a/app"}
    assert (await api.put(mine, headers=bearer(TEAM_A))).status == 200
    assert (await api.put({**THEIRS, "tags": []}, headers=bearer(TEAM_A))).status == 403


# -- races -------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_scoped_create_racing_another_teams_create_never_writes_their_entry(
    start: Start,
) -> None:
    """Both try to create the same id at once: whoever wins, team-b's entry
    never ends up with team-a's tags, and nobody gets a 500."""
    api, _ = await start()
    outcomes: set[tuple[int, int]] = set()
    for round_ in range(40):
        entry_id = f"race-{round_}"
        theirs = {"id": entry_id, "name": "quay.io/team-b/app", "tags": ["theirs"]}
        mine = {"id": entry_id, "name": "quay.io/team-a/app", "tags": ["mine"]}
        first, second = await asyncio.gather(
            api.put(theirs, headers=bearer(ADMIN)), api.put(mine, headers=bearer(TEAM_A))
        )
        outcomes.add((first.status, second.status))
        stored = (await api.get(f"/images/{entry_id}")).json
        if stored["name"] == "quay.io/team-b/app":
            assert second.status == 403, second.body
            assert stored["tags"] == ["theirs"]
        else:
            assert second.status == 200
    assert outcomes <= {(200, 200), (200, 403)}


# -- the audit trail -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_the_trail_names_the_scoped_token_and_records_no_refusal(start: Start) -> None:
    api, _ = await start()
    seeded = (await api.get("/events?limit=1000")).json
    last = seeded[-1]["seq"]

    ok = await api.put(
        {"id": "mine", "name": "quay.io/team-a/app", "tags": ["1.4"]}, headers=bearer(TEAM_A)
    )
    assert ok.status == 200, ok.body
    assert (
        await api.put({"id": "theirs", "name": "quay.io/team-a/app"}, headers=bearer(TEAM_A))
    ).status == 403
    assert (await api.delete("/images/theirs", headers=bearer(TEAM_A))).status == 403
    assert (await api.delete("/images/mine", headers=bearer(TEAM_A))).status == 204

    events = (await api.get(f"/events?after={last}")).json
    assert [(e["action"], e["id"], e["actor"]) for e in events] == [
        ("created", "mine", "team-a"),
        ("deleted", "mine", "team-a"),
    ]
    assert events[0]["request_id"] == ok.headers["X-Request-ID"]
    assert {e["actor"] for e in seeded} == {"admin"}
