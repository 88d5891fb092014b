"""The matcher, table-driven, through GET /allowed on both backends."""

from __future__ import annotations

import urllib.parse

import pytest
from k8s import admission_review, pod_spec

from storage.model import NewEntry
from storage.reference import parse_reference

H_NGINX = "a1" * 32  # bare 64-hex image id
H_APACHE = "b2" * 32
H_BUSYBOX = "c3" * 32
H384 = "d4" * 48
H512 = "e5" * 64
H_OTHER = "f6" * 32

ENTRIES = [
    {"id": H_NGINX, "name": "nginx", "tags": ["1.25", "latest"]},
    {"id": f"sha256:{H_APACHE}", "name": "myorg/apache2", "tags": ["2.4"]},
    {"id": f"quay.io/foo/app@sha384:{H384}", "name": "quay.io/foo/app", "tags": ["v1"]},
    {"id": f"sha512:{H512}", "name": "docker.io/myorg/tool", "tags": []},
    {"id": "legacy-redis", "name": "index.docker.io/library/redis", "tags": ["7"]},
    {"id": H_BUSYBOX, "name": "docker.io/library/busybox", "tags": ["1.36"]},
    # names that are not repository names: stored, never match
    {"id": "tagged-name", "name": "nginx:1.0", "tags": ["1.0"]},
    {"id": "spaced-name", "name": "Not A Repo", "tags": ["latest"]},
]

# (reference, entry id that allows it or None, resolved reference)
CASES = [
    ("nginx", H_NGINX, "docker.io/library/nginx:latest"),
    ("nginx:1.25", H_NGINX, "docker.io/library/nginx:1.25"),
    ("library/nginx:1.25", H_NGINX, "docker.io/library/nginx:1.25"),
    ("docker.io/nginx:1.25", H_NGINX, "docker.io/library/nginx:1.25"),
    ("docker.io/library/nginx:1.25", H_NGINX, "docker.io/library/nginx:1.25"),
    ("index.docker.io/nginx:1.25", H_NGINX, "docker.io/library/nginx:1.25"),
    ("nginx:1.26", None, "docker.io/library/nginx:1.26"),
    ("nginx:1.0", None, "docker.io/library/nginx:1.0"),  # only a bad-named entry lists it
    ("quay.io/nginx:1.25", None, "quay.io/nginx:1.25"),  # another registry
    # digests: bare-hex id; the digest decides over any tag
    (f"nginx@sha256:{H_NGINX}", H_NGINX, f"docker.io/library/nginx@sha256:{H_NGINX}"),
    (f"nginx:nope@sha256:{H_NGINX}", H_NGINX, f"docker.io/library/nginx@sha256:{H_NGINX}"),
    (f"nginx:1.25@sha256:{H_APACHE}", None, f"docker.io/library/nginx@sha256:{H_APACHE}"),
    (f"nginx@sha256:{H_OTHER}", None, f"docker.io/library/nginx@sha256:{H_OTHER}"),
    # sha256:<hex> id; familiar and full names alike
    ("myorg/apache2:2.4", f"sha256:{H_APACHE}", "docker.io/myorg/apache2:2.4"),
    ("docker.io/myorg/apache2:2.4", f"sha256:{H_APACHE}", "docker.io/myorg/apache2:2.4"),
    ("index.docker.io/myorg/apache2:2.4", f"sha256:{H_APACHE}", "docker.io/myorg/apache2:2.4"),
    (
        f"myorg/apache2@sha256:{H_APACHE}",
        f"sha256:{H_APACHE}",
        f"docker.io/myorg/apache2@sha256:{H_APACHE}",
    ),
    (f"myorg/apache2@sha256:{H_NGINX}", None, f"docker.io/myorg/apache2@sha256:{H_NGINX}"),
    ("myorg/apache2", None, "docker.io/myorg/apache2:latest"),
    # repo-digest id with sha384
    (
        f"quay.io/foo/app@sha384:{H384}",
        f"quay.io/foo/app@sha384:{H384}",
        f"quay.io/foo/app@sha384:{H384}",
    ),
    (
        f"quay.io/foo/app:v9@sha384:{H384}",
        f"quay.io/foo/app@sha384:{H384}",
        f"quay.io/foo/app@sha384:{H384}",
    ),
    ("quay.io/foo/app:v1", f"quay.io/foo/app@sha384:{H384}", "quay.io/foo/app:v1"),
    ("foo/app:v1", None, "docker.io/foo/app:v1"),
    (f"quay.io/foo/app@sha256:{H_OTHER}", None, f"quay.io/foo/app@sha256:{H_OTHER}"),
    # sha512
    (f"myorg/tool@sha512:{H512}", f"sha512:{H512}", f"docker.io/myorg/tool@sha512:{H512}"),
    ("myorg/tool", None, "docker.io/myorg/tool:latest"),
    # legacy index.docker.io name stored, familiar reference asked
    ("redis:7", "legacy-redis", "docker.io/library/redis:7"),
    ("busybox:1.36", H_BUSYBOX, "docker.io/library/busybox:1.36"),
    (f"busybox:1.36@sha512:{H512}", None, f"docker.io/library/busybox@sha512:{H512}"),
]

INVALID = ["Nginx", "nginx:", "nginx@sha256:abc", "!!", "nginx\n", f"nginx@md5:{'0' * 32}"]


def q(ref: str) -> str:
    return "/allowed?image=" + urllib.parse.quote(ref, safe="")


async def seed(api) -> None:
    for entry in ENTRIES:
        reply = await api.put(entry)
        assert reply.status == 200, reply.body


@pytest.mark.gen_test
async def test_matcher_table(api) -> None:
    await seed(api)
    for reference, entry_id, resolved in CASES:
        reply = await api.get(q(reference))
        assert reply.status == 200, (reference, reply.body)
        body = reply.json
        assert body["image"] == resolved, reference
        assert body["allowed"] is (entry_id is not None), (reference, body)
        if entry_id is None:
            assert body["entry"] is None
            assert "no entry for" in body["reason"]
        else:
            assert body["entry"]["id"] == entry_id, reference
            assert entry_id in body["reason"]
            assert set(body["entry"]) == {"id", "name", "tags", "created_at", "updated_at"}


@pytest.mark.gen_test
async def test_invalid_or_missing_reference_is_400(api) -> None:
    for reference in INVALID:
        reply = await api.get(q(reference))
        assert reply.status == 400, reference
        assert "invalid image reference" in reply.json["error"]
    for path in ("/allowed", "/allowed?image=", "/allowed?other=nginx"):
        reply = await api.get(path)
        assert reply.status == 400, path
        assert "image" in reply.json["error"]


@pytest.mark.gen_test
async def test_writes_change_the_next_decision(api) -> None:
    await api.put({"id": "n1", "name": "nginx", "tags": ["1.25"]})
    assert (await api.get(q("nginx:1.25"))).json["allowed"] is True
    await api.put({"id": "n1", "name": "nginx", "tags": ["1.26"]})
    assert (await api.get(q("nginx:1.25"))).json["allowed"] is False
    assert (await api.get(q("nginx:1.26"))).json["allowed"] is True
    assert (await api.delete("/images/n1")).status == 204
    assert (await api.get(q("nginx:1.26"))).json["allowed"] is False


@pytest.mark.gen_test
async def test_most_recently_updated_entry_is_named(api) -> None:
    await api.put({"id": "old", "name": "nginx", "tags": ["latest"]})
    await api.put({"id": "new", "name": "docker.io/library/nginx", "tags": ["latest"]})
    assert (await api.get(q("nginx"))).json["entry"]["id"] == "new"
    await api.put({"id": "old", "name": "nginx", "tags": ["latest", "x"]})
    assert (await api.get(q("nginx"))).json["entry"]["id"] == "old"


@pytest.mark.gen_test
async def test_entries_with_odd_names_are_stored_but_never_match(api, caplog) -> None:
    reply = await api.put({"id": "odd", "name": "Not A Repo:latest", "tags": ["latest"]})
    assert reply.status == 200
    warned = [r for r in caplog.records if r.msg == "unmatchable_entry"]
    assert [(r.entry_id, r.entry_name) for r in warned] == [("odd", "Not A Repo:latest")]
    assert (await api.get("/images/odd")).json["name"] == "Not A Repo:latest"
    assert (await api.get(q("not-a-repo"))).json["allowed"] is False


@pytest.mark.gen_test
async def test_storage_match_answers_in_order(ctx) -> None:
    # The Storage interface itself, on both backends.
    assert await ctx.storage.match([]) == []
    await ctx.storage.put(NewEntry(id=H_NGINX, name="nginx", tags=("1.25",)))
    refs = [
        parse_reference(r)
        for r in ("quay.io/x:1", "nginx:1.25", f"nginx@sha256:{H_NGINX}", "nginx:2", "nginx:1.25")
    ]
    found = await ctx.storage.match(refs)
    assert [[e.id for e in entries] for entries in found] == [
        [],
        [H_NGINX],
        [H_NGINX],
        [],
        [H_NGINX],
    ]


@pytest.mark.gen_test
async def test_at_most_one_storage_query_per_review(api, ctx) -> None:
    # A spy on the real store: however many images, at most one match()
    # call: the replica's denials, confirmed together (on SQLite the
    # replica is checked exact before each decision and asks nothing).
    calls = []
    real = ctx.storage.match

    async def counting(refs):
        calls.append(list(refs))
        return await real(refs)

    ctx.storage.match = counting
    images = ["nginx:1", "nginx:2", "redis:7", "nginx:1", "docker.io/library/nginx:2"]
    review = admission_review("Pod", pod_spec(images[:3], init=images[3:], ephemeral=["Bad!"]))
    reply = await api.request("POST", "/admission/validate", review)
    assert reply.status == 200
    if ctx.storage.kind == "sqlite":
        assert calls == []
        return
    assert len(calls) == 1
    # distinct normalized references only; the invalid one needs no lookup
    assert sorted(str(r) for r in calls[0]) == [
        "docker.io/library/nginx:1",
        "docker.io/library/nginx:2",
        "docker.io/library/redis:7",
    ]
