"""Bearer-token auth through the real app, with the tokens file watched on the test's loop.

The app, its token registry and watcher are built by the daemon's own
assembly from `--tokens-file`; files are changed on disk the ways real tools change them,
and each test polls (bounded) until the change shows through the API.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from tokenfiles import (
    ConfigMapMount,
    bearer,
    entry,
    replace_by_rename,
    sha256_hex,
    tokens_yaml,
    write_in_place,
)
from tornado.httpclient import AsyncHTTPClient

from imagelist import RunningApp

from client import Client
from helpers import eventually, running_app

ALICE, BOB, CAROL = "alice-Secret-1", "bob-Secret-2", "carol-Secret-3"
FIRST = tokens_yaml(entry("alice", ALICE), entry("bob", BOB, is_disabled=True))
CHALLENGE = 'Bearer realm="imagelist"'
AuthApp = Callable[[Path], Awaitable[tuple[Client, RunningApp]]]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # Auth does not touch storage: one backend is enough here.
    return f"sqlite:///{tmp_path}/imagelist.db"


@pytest.fixture
def app_options() -> list[str]:
    return ["--max-body-size", "1024"]


@pytest.fixture
def auth_app(database_url: str, app_options: list[str], io_loop) -> Iterator[AuthApp]:
    """Start the app with `--tokens-file PATH`, as the daemon does; closed
    when the test ends."""
    stack = AsyncExitStack()
    http = AsyncHTTPClient(force_instance=True)

    async def start(path: Path) -> tuple[Client, RunningApp]:
        running = await stack.enter_async_context(
            running_app(database_url, *app_options, "--tokens-file", str(path))
        )
        return Client(http, running.url), running

    yield start
    http.close()
    io_loop.run_sync(stack.aclose)


@pytest.fixture
def tokens_path(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "tokens.yaml"
    path.parent.mkdir()
    path.write_text(FIRST)
    return path


async def status_with(api, token: str | None) -> int:
    """An authenticated no-op write: DELETE of an absent id is 204."""
    headers = bearer(token) if token is not None else None
    return (await api.delete("/images/probe", headers=headers)).status


async def metric(api, name: str) -> float:
    text = (await api.get("/metrics")).body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def assert_401(reply) -> None:
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == CHALLENGE
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json
    assert set(body) == {"error", "request_id"}
    assert body["request_id"] == reply.headers["X-Request-ID"]
    for secret in (ALICE, BOB, CAROL):
        assert secret not in reply.body.decode()


# -- the 401 contract ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_writes_need_a_valid_enabled_token(auth_app, tokens_path) -> None:
    api, _ = await auth_app(tokens_path)
    image = {"id": "sha256:abc", "name": "myorg/app"}
    for headers in (None, bearer("wrong"), bearer(BOB)):
        assert_401(await api.put(image, headers=headers))
        assert_401(await api.delete("/images/sha256:abc", headers=headers))
    assert await api.all_images() == []

    reply = await api.put(image, headers=bearer(ALICE))
    assert reply.status == 200
    assert_401(await api.delete("/images/sha256:abc", headers=bearer(BOB)))
    assert [i["id"] for i in await api.all_images()] == ["sha256:abc"]
    assert (await api.delete("/images/sha256:abc", headers=bearer(ALICE))).status == 204
    assert await api.all_images() == []


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        f"Basic {ALICE}",
        f"Token {ALICE}",
        f"Bearer {ALICE} extra",
        f"Bearer{ALICE}",
        f"{ALICE}",
    ],
)
@pytest.mark.gen_test(timeout=30)
async def test_malformed_authorization_is_401(auth_app, tokens_path, header) -> None:
    api, _ = await auth_app(tokens_path)
    reply = await api.put({"id": "a", "name": "n"}, headers={"Authorization": header})
    assert_401(reply)
    assert await api.all_images() == []


@pytest.mark.gen_test(timeout=30)
async def test_the_scheme_is_case_insensitive(auth_app, tokens_path) -> None:
    api, _ = await auth_app(tokens_path)
    reply = await api.put({"id": "a", "name": "n"}, headers={"Authorization": f"bearer {ALICE}"})
    assert reply.status == 200


@pytest.mark.gen_test(timeout=30)
async def test_401_comes_before_body_errors(auth_app, tokens_path) -> None:
    api, _ = await auth_app(tokens_path)
    assert_401(await api.put(raw=b'{"id": "a", "name": '))
    assert_401(await api.put({"id": "", "name": "n"}))
    assert_401(await api.put(raw=b"x" * 4096))  # over --max-body-size 1024
    assert_401(await api.delete("/images/" + "x" * 300))  # an over-long id
    # ...and with a token, the body's own error.
    assert (await api.put(raw=b'{"id": "a", "name": ', headers=bearer(ALICE))).status == 400
    assert (await api.put(raw=b"x" * 4096, headers=bearer(ALICE))).status == 413


@pytest.mark.gen_test(timeout=30)
async def test_reads_stay_open(auth_app, tokens_path) -> None:
    api, _ = await auth_app(tokens_path)
    await api.put({"id": "a", "name": "n"}, headers=bearer(ALICE))
    assert (await api.get("/images")).status == 200
    assert (await api.get("/images/a")).status == 200
    assert (await api.get("/images/missing")).status == 404
    assert (await api.get("/health/ping")).status == 200
    assert (await api.get("/metrics")).status == 200


@pytest.mark.gen_test(timeout=30)
async def test_hashed_tokens(auth_app, tokens_path) -> None:
    tokens_path.write_text(
        tokens_yaml(
            entry("ci", token_sha256=sha256_hex(CAROL)),
            entry("old", token_sha256=sha256_hex(ALICE).upper(), is_disabled=True),
        )
    )
    api, _ = await auth_app(tokens_path)
    assert await status_with(api, CAROL) == 204
    assert await status_with(api, ALICE) == 401
    # The digest itself is not a credential.
    assert await status_with(api, sha256_hex(CAROL)) == 401


@pytest.mark.gen_test(timeout=30)
async def test_without_a_tokens_file_writes_are_open(api) -> None:
    assert (await api.put({"id": "a", "name": "n"})).status == 200
    assert (await api.put({"id": "b", "name": "n"}, headers=bearer("anything"))).status == 200


# -- reloads -------------------------------------------------------------------------


@pytest.mark.parametrize("change", [write_in_place, replace_by_rename])
@pytest.mark.gen_test(timeout=30)
async def test_a_changed_file_applies_without_restart(auth_app, tokens_path, change):
    api, _ = await auth_app(tokens_path)
    reloads = await metric(api, "imagelist_token_reloads_total")
    assert await status_with(api, ALICE) == 204

    change(tokens_path, tokens_yaml(entry("alice", ALICE, is_disabled=True), entry("carol", CAROL)))
    await eventually(lambda: status_with(api, CAROL), 204)
    assert await status_with(api, ALICE) == 401
    assert await metric(api, "imagelist_token_reloads_total") == reloads + 1
    assert await metric(api, "imagelist_token_last_reload_timestamp_seconds") > 0

    # The same file again: replaced by the other method too.
    other = replace_by_rename if change is write_in_place else write_in_place
    other(tokens_path, FIRST)
    await eventually(lambda: status_with(api, ALICE), 204)
    assert await status_with(api, CAROL) == 401


@pytest.mark.gen_test(timeout=30)
async def test_a_configmap_symlink_swap_applies(auth_app, tmp_path) -> None:
    mount = ConfigMapMount(tmp_path / "secret-volume", "tokens.yaml", FIRST)
    api, _ = await auth_app(mount.path)
    assert await status_with(api, ALICE) == 204

    mount.update(tokens_yaml(entry("carol", CAROL)))
    await eventually(lambda: status_with(api, CAROL), 204)
    assert await status_with(api, ALICE) == 401

    # The second swap works as well as the first (the watch survives).
    mount.update(tokens_yaml(entry("alice", ALICE)))
    await eventually(lambda: status_with(api, ALICE), 204)
    assert await status_with(api, CAROL) == 401


@pytest.mark.gen_test(timeout=30)
async def test_a_symlink_to_a_file_elsewhere_is_followed(auth_app, tmp_path) -> None:
    target_dir = tmp_path / "srv" / "config"
    target_dir.mkdir(parents=True)
    target = target_dir / "real-tokens.yaml"
    target.write_text(FIRST)
    link = tmp_path / "etc-imagelist" / "tokens.yaml"
    link.parent.mkdir()
    link.symlink_to(target)
    api, _ = await auth_app(link)

    # Edited where it really lives: no event next to the link.
    write_in_place(target, tokens_yaml(entry("carol", CAROL)))
    await eventually(lambda: status_with(api, CAROL), 204)

    # The link repointed at a file in yet another directory, then that file edited.
    other = tmp_path / "opt" / "tokens.yaml"
    other.parent.mkdir()
    other.write_text(tokens_yaml(entry("alice", ALICE)))
    tmp_link = link.with_name("tokens.yaml.new")
    tmp_link.symlink_to(other)
    os.replace(tmp_link, link)
    await eventually(lambda: status_with(api, ALICE), 204)
    write_in_place(other, tokens_yaml(entry("bob", BOB)))
    await eventually(lambda: status_with(api, BOB), 204)
    assert await status_with(api, ALICE) == 401


@pytest.mark.gen_test(timeout=30)
async def test_an_invalid_file_keeps_the_last_good_set(auth_app, tokens_path) -> None:
    api, _ = await auth_app(tokens_path)
    errors = await metric(api, "imagelist_token_reload_errors_total")
    reloads = await metric(api, "imagelist_token_reloads_total")

    for n, bad in enumerate(
        [
            f"tokens: [{{name: carol, token: '{CAROL}}}]\n",  # bad YAML
            tokens_yaml(entry("carol", CAROL), entry("carol", ALICE)),  # duplicate name
            tokens_yaml(entry("carol", "")),  # empty token
        ],
        start=1,
    ):
        replace_by_rename(tokens_path, bad)
        await eventually(lambda: metric(api, "imagelist_token_reload_errors_total"), errors + n)
        assert await status_with(api, ALICE) == 204
        assert await status_with(api, CAROL) == 401
    assert await metric(api, "imagelist_token_reloads_total") == reloads

    write_in_place(tokens_path, tokens_yaml(entry("carol", CAROL)))
    await eventually(lambda: status_with(api, CAROL), 204)
    assert await status_with(api, ALICE) == 401
    assert await metric(api, "imagelist_token_reloads_total") == reloads + 1


@pytest.mark.gen_test(timeout=30)
async def test_a_deleted_file_fails_closed_until_it_is_back(auth_app, tokens_path) -> None:
    api, _ = await auth_app(tokens_path)
    assert await status_with(api, ALICE) == 204
    tokens_path.unlink()
    await eventually(lambda: status_with(api, ALICE), 401)
    assert_401(await api.put({"id": "a", "name": "n"}, headers=bearer(ALICE)))
    assert await metric(api, "imagelist_token_reload_errors_total") >= 1
    assert (await api.get("/images")).status == 200  # reads stay open

    # Re-created with the very same contents: the hash must not hide it.
    tokens_path.write_text(FIRST)
    await eventually(lambda: status_with(api, ALICE), 204)


@pytest.mark.gen_test(timeout=30)
async def test_a_deleted_directory_recreated_is_watched_again(auth_app, tmp_path) -> None:
    target_dir = tmp_path / "srv"
    target_dir.mkdir()
    (target_dir / "tokens.yaml").write_text(FIRST)
    link = tmp_path / "etc" / "tokens.yaml"
    link.parent.mkdir()
    link.symlink_to(target_dir / "tokens.yaml")
    api, _ = await auth_app(link)

    shutil.rmtree(target_dir)
    await eventually(lambda: status_with(api, ALICE), 401)
    target_dir.mkdir()
    (target_dir / "tokens.yaml").write_text(tokens_yaml(entry("carol", CAROL)))
    # Nothing changes next to the link, and the old watch went with the
    # directory: the watcher re-checks until the directory is back.
    await eventually(lambda: status_with(api, CAROL), 204)
    write_in_place(target_dir / "tokens.yaml", tokens_yaml(entry("alice", ALICE)))
    await eventually(lambda: status_with(api, ALICE), 204)


@pytest.mark.gen_test(timeout=30)
async def test_sighup_hook_reloads_and_forces(auth_app, tokens_path) -> None:
    api, running = await auth_app(tokens_path)
    reloads = await metric(api, "imagelist_token_reloads_total")
    running.ctx.reload()  # what SIGHUP calls
    # Forced: counted although the contents did not change.
    assert await metric(api, "imagelist_token_reloads_total") == reloads + 1
    # A change applied by the hook at once, whatever the watcher does later.
    replace_by_rename(tokens_path, tokens_yaml(entry("carol", CAROL)))
    running.ctx.reload()
    assert await status_with(api, CAROL) == 204
    assert await status_with(api, ALICE) == 401


@pytest.mark.gen_test(timeout=30)
async def test_a_symlinked_directory_is_watched(auth_app, tmp_path) -> None:
    # /etc/imagelist -> /srv/imagelist-config: the file's own directory is a link.
    real = tmp_path / "srv" / "imagelist-config"
    real.mkdir(parents=True)
    (real / "tokens.yaml").write_text(FIRST)
    linked_dir = tmp_path / "etc-imagelist"
    linked_dir.symlink_to(real, target_is_directory=True)
    api, _ = await auth_app(linked_dir / "tokens.yaml")

    replace_by_rename(real / "tokens.yaml", tokens_yaml(entry("carol", CAROL)))
    await eventually(lambda: status_with(api, CAROL), 204)
    write_in_place(linked_dir / "tokens.yaml", FIRST)
    await eventually(lambda: status_with(api, ALICE), 204)
