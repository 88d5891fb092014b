"""The admission replica in process: it answers as the database's match
query does, on both backends, and it follows every writer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.model import NewEntry
from storage.reference import parse_reference
from storage.replica import SCAN_AT_MOST, IndexBuilder, ReplicaIndex, replica_entry

from helpers import eventually

H1 = "a" * 64
H2 = "b" * 64
H3 = "c" * 96  # sha384

# Entries whose answers depend on every rule: normalized names, the three
# id forms, shared tags (the most recently updated wins, then the greatest
# id), names that are not repository names, and big repositories (indexed
# rather than scanned).
ENTRIES = [
    NewEntry(H1, "nginx", ("1.25", "latest")),
    NewEntry(f"sha256:{H2}", "docker.io/library/nginx", ("1.25",)),
    NewEntry(f"quay.io/x/app@sha256:{H1}", "quay.io/x/app", ("1",)),
    NewEntry(f"sha384:{H3}", "quay.io/x/app", ("2",)),
    NewEntry("short", "myorg/apache2", ("2.4",)),
    NewEntry("odd", "Not A Repo", ("1",)),
    *(NewEntry(f"big{i:02d}", "quay.io/big/app", (f"b{i}", "shared")) for i in range(24)),
]
REFERENCES = [
    "nginx",
    "nginx:1.25",
    "docker.io/library/nginx:1.25",
    f"nginx@sha256:{H1}",
    f"nginx@sha256:{H2}",
    f"nginx:9@sha256:{H2}",
    f"quay.io/x/app@sha256:{H1}",
    f"quay.io/x/app@sha384:{H3}",
    "quay.io/x/app:1",
    "quay.io/x/app:2",
    "docker.io/myorg/apache2:2.4",
    "myorg/apache2:2.5",
    "quay.io/big/app:b7",
    "quay.io/big/app:shared",
    "quay.io/big/app:b99",
    "redis",
]


async def answers(ctx) -> tuple[list[str | None], list[str | None]]:
    refs = [parse_reference(r) for r in REFERENCES]
    database = [e[0].id if e else None for e in await ctx.storage.match(refs)]
    replica = [e.id if e else None for e in map(ctx.replica.index.find, refs)]
    return database, replica


@pytest.mark.gen_test(timeout=60)
async def test_the_replica_answers_as_the_database_does(ctx) -> None:
    for entry in ENTRIES:
        await ctx.storage.put(entry)
        await asyncio.sleep(0.002)  # distinct updated_at
    database, replica = await answers(ctx)
    assert replica == database
    assert database.count(None) == 3  # the test would be weak otherwise
    # Updating moves an entry first among those sharing a tag.
    await ctx.storage.put(NewEntry("big03", "quay.io/big/app", ("shared",)))
    database, replica = await answers(ctx)
    assert replica == database
    assert replica[REFERENCES.index("quay.io/big/app:shared")] == "big03"
    # Deleting down to a scanned repository, and to nothing.
    for i in range(24):
        await ctx.storage.delete(f"big{i:02d}")
        if i in (0, 7, 8, 20):
            assert (await answers(ctx))[1] == (await answers(ctx))[0]
    await ctx.storage.delete(H1)
    database, replica = await answers(ctx)
    assert replica == database


@pytest.mark.gen_test(timeout=30)
async def test_a_write_updates_this_replica_before_its_response(api, ctx) -> None:
    assert (await api.put({"id": "w", "name": "nginx", "tags": ["1"]})).status == 200
    assert ctx.replica.index.get("w").tags == ("1",)
    assert (await api.get("/allowed?image=nginx:1")).json["allowed"] is True
    assert (await api.delete("/images/w")).status == 204
    assert ctx.replica.index.get("w") is None
    assert (await api.get("/allowed?image=nginx:1")).json["allowed"] is False


@pytest.mark.gen_test(timeout=30)
async def test_an_allowed_image_costs_no_database_query(api, ctx) -> None:
    assert (await api.put({"id": "w", "name": "nginx", "tags": ["1"]})).status == 200
    # Until its first load is done the replica is not used.
    await eventually(lambda: is_current(ctx), True)
    calls = []
    real = ctx.storage.match

    async def spy(refs):
        calls.append(refs)
        return await real(refs)

    ctx.storage.match = spy
    reply = await api.get("/allowed?image=nginx:1")
    assert reply.json["allowed"] is True and reply.json["entry"]["id"] == "w"
    assert calls == []
    metrics = (await api.get("/metrics")).body.decode()
    assert "imagelist_replica_entries 1.0" in metrics


WRITER = """
import json, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA busy_timeout = 5000")
if sys.argv[2] == "insert":
    now = int(time.time() * 1e6)
    conn.execute(
        "INSERT INTO images (id, name, tags, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        ("other", "quay.io/o/app", json.dumps(["1"]), now, now),
    )
else:
    conn.execute("DELETE FROM images WHERE id = 'other'")
"""


async def write_from_another_process(path: Path, what: str) -> None:
    command = [sys.executable, "-c", WRITER, str(path), what]
    await asyncio.to_thread(subprocess.run, command, check=True)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.gen_test(timeout=30)
async def test_sqlite_another_process_writing_the_file_is_seen_by_the_next_decision(
    api, ctx, database_url: str
) -> None:
    path = Path(database_url.removeprefix("sqlite:///"))
    await api.get("/allowed?image=quay.io/o/app:1")  # loaded, and checked once
    reloads = reloads_of(ctx)
    await write_from_another_process(path, "insert")
    # No wait: the decision itself notices (PRAGMA data_version).
    assert (await api.get("/allowed?image=quay.io/o/app:1")).json["allowed"] is True
    await write_from_another_process(path, "delete")
    assert (await api.get("/allowed?image=quay.io/o/app:1")).json["allowed"] is False
    assert reloads_of(ctx) == reloads + 2
    # Our own writes do not make it reload.
    assert (await api.put({"id": "own", "name": "nginx", "tags": ["1"]})).status == 200
    assert (await api.get("/allowed?image=nginx:1")).json["allowed"] is True
    assert reloads_of(ctx) == reloads + 2


async def is_current(ctx) -> bool:
    return ctx.replica.current()


def reloads_of(ctx) -> float:
    return ctx.metrics.registry.get_sample_value("imagelist_replica_reloads_total")


def test_replica_max_age_option() -> None:
    from config import ConfigError, load_config

    assert load_config([], env={}).replica_max_age == 600
    config = load_config([], env={"IMAGELIST_REPLICA_MAX_AGE": "30"})
    assert config.replica_max_age == 30
    with pytest.raises(ConfigError, match="--replica-max-age"):
        load_config(["--replica-max-age", "-1"], env={})


# -- the index a full load builds ----------------------------------------------

BUILT = st.lists(
    st.tuples(
        st.integers(0, 40),  # id
        st.sampled_from(["nginx", "docker.io/library/nginx", "quay.io/x/app", "Not A Repo"]),
        st.lists(st.sampled_from(["1", "2", "latest"]), max_size=3, unique=True),
        st.integers(0, 5),  # updated_at: ties are common, then the id decides
    ),
    max_size=3 * SCAN_AT_MOST,  # past the size where a repository is indexed
)
#: Two ids that are digests (the others are short ids, which are none).
BUILT_IDS = {0: f"sha256:{H1}", 1: f"quay.io/x/app@sha256:{H2}"}
BUILT_REFERENCES = [
    parse_reference(r)
    for r in (
        "nginx:1",
        "nginx:latest",
        "quay.io/x/app:2",
        f"nginx@sha256:{H1}",
        f"quay.io/x/app@sha256:{H2}",
    )
]


@settings(max_examples=200, deadline=None)
@given(rows=BUILT)
def test_a_built_index_answers_as_one_grown_entry_by_entry(rows) -> None:
    """A full load builds its index off to the side in one go; it must hold
    what the same rows put one by one into a live index hold."""
    built, grown = IndexBuilder(), ReplicaIndex()
    for n, name, tags, at in rows:
        entry = replica_entry(
            BUILT_IDS.get(n, f"e{n}"), name, tags, at, at, None, None, built.shared
        )
        built.add(entry)
        grown.put(entry)
    index = built.build()
    assert {e.id for e in index.entries()} == {e.id for e in grown.entries()}
    for ref in BUILT_REFERENCES:
        assert [e.id for e in index.allowing(ref)] == [e.id for e in grown.allowing(ref)], ref


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.gen_test(timeout=30)
async def test_a_full_load_logs_its_wall_and_cpu_seconds(
    caplog, api, ctx, database_url: str
) -> None:
    path = Path(database_url.removeprefix("sqlite:///"))
    await api.get("/allowed?image=quay.io/o/app:1")  # loaded, and checked once
    caplog.set_level("INFO", logger="imagelist.replica")
    await write_from_another_process(path, "insert")  # the next decision reloads
    assert (await api.get("/allowed?image=quay.io/o/app:1")).json["allowed"] is True
    (loaded,) = [r for r in caplog.records if r.msg == "replica_loaded"]
    assert loaded.entries == 1 and loaded.first is False
    assert loaded.cpu_seconds >= 0 and 0 <= loaded.seconds < 30
