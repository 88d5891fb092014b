"""Which digest pins a tag: the pure rule, table-driven, then what both
backends' match() hands it and what GET /allowed reports as `pin`."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass

import pytest

from storage.pinning import pin_digest, pinned
from storage.reference import parse_reference

A = "a" * 64
B = "b" * 64
C = "c" * 64
S512 = "5" * 128

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Entry:
    id: str
    updated_at: dt.datetime


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


# (reference, [(entry id, updated second)], digest it pins to or None)
PIN_CASES = [
    ("quay.io/t/app:1.4", [], None),
    ("quay.io/t/app:1.4", [(f"quay.io/t/app@sha256:{A}", 1)], f"sha256:{A}"),
    # bare hex and sha256:<hex> ids may be image (config) ids: never pinned
    ("quay.io/t/app:1.4", [(A, 1)], None),
    ("quay.io/t/app:1.4", [(f"sha256:{A}", 1)], None),
    ("quay.io/t/app:1.4", [("build-42", 1)], None),
    # a repo digest of another repository names content this one may lack
    ("quay.io/t/app:1.4", [(f"quay.io/t/other@sha256:{A}", 1)], None),
    ("quay.io/t/app:1.4", [(f"docker.io/t/app@sha256:{A}", 1)], None),
    # ...but any spelling of the same repository is the same repository
    ("t/app:1.4", [(f"docker.io/t/app@sha256:{A}", 1)], f"sha256:{A}"),
    ("docker.io/t/app:1.4", [(f"index.docker.io/t/app@sha256:{A}", 1)], f"sha256:{A}"),
    ("nginx", [(f"docker.io/library/nginx@sha256:{A}", 1)], f"sha256:{A}"),
    ("quay.io/t/app:1.4", [(f"quay.io/t/app:1.4@sha256:{A}", 1)], f"sha256:{A}"),
    ("quay.io/t/app:1.4", [(f"quay.io/t/app@sha512:{S512}", 1)], f"sha512:{S512}"),
    # not a reference at all
    ("quay.io/t/app:1.4", [("quay.io/t/app@sha256:short", 1)], None),
    ("quay.io/t/app:1.4", [(f"Quay.io/T/App@sha256:{A}", 1)], None),
    # the newest pinning entry wins; other entries never block it
    (
        "quay.io/t/app:1.4",
        [(f"quay.io/t/app@sha256:{A}", 1), (f"quay.io/t/app@sha256:{B}", 2)],
        f"sha256:{B}",
    ),
    (
        "quay.io/t/app:1.4",
        [(f"quay.io/t/app@sha256:{B}", 2), (f"quay.io/t/app@sha256:{A}", 3), (C, 9)],
        f"sha256:{A}",
    ),
    (
        "quay.io/t/app:1.4",
        [(f"quay.io/t/app@sha256:{A}", 1), (f"quay.io/t/x@sha256:{B}", 5)],
        f"sha256:{A}",
    ),
    # equal times: the greatest id, as every ranking of entries breaks ties
    (
        "quay.io/t/app:1.4",
        [(f"quay.io/t/app@sha256:{B}", 1), (f"quay.io/t/app@sha256:{A}", 1)],
        f"sha256:{B}",
    ),
    # a reference with a digest is decided by it, never re-pinned
    (f"quay.io/t/app@sha256:{B}", [(f"quay.io/t/app@sha256:{B}", 1)], None),
    (f"quay.io/t/app:1.4@sha256:{B}", [(f"quay.io/t/app@sha256:{A}", 1)], None),
]


@pytest.mark.parametrize(("reference", "entries", "digest"), PIN_CASES)
def test_pin_digest(reference: str, entries: list[tuple[str, int]], digest: str | None) -> None:
    ref = parse_reference(reference)
    assert pin_digest(ref, [Entry(i, at(s)) for i, s in entries]) == digest
    assert pin_digest(ref, [Entry(i, at(s)) for i, s in reversed(entries)]) == digest


def test_pinned_keeps_the_reference_as_written() -> None:
    assert pinned("app:1.4", f"sha256:{A}") == f"app:1.4@sha256:{A}"
    assert pinned("nginx", f"sha256:{A}") == f"nginx@sha256:{A}"
    # What it writes is a reference the runtime parses to the digest.
    assert parse_reference(pinned("quay.io/t/app:1.4", f"sha256:{A}")).digest == f"sha256:{A}"


async def allowed(api, image: str) -> dict:
    reply = await api.get("/allowed?image=" + urllib.parse.quote(image, safe=""))
    assert reply.status == 200, reply.body
    return reply.json


async def put(api, image_id: str, name: str, tags: list[str]) -> None:
    reply = await api.put({"id": image_id, "name": name, "tags": tags})
    assert reply.status == 200, reply.body


@pytest.mark.gen_test
async def test_allowed_reports_the_pin_newest_pinning_entry_first(api) -> None:
    ref = "quay.io/t/app:1.4"
    assert (await allowed(api, ref))["pin"] is None  # not allowed: nothing to pin

    await put(api, f"quay.io/t/app@sha256:{A}", "quay.io/t/app", ["1.4"])
    answer = await allowed(api, ref)
    assert answer["allowed"] is True and answer["pin"] == f"{ref}@sha256:{A}"

    # Newer entries that cannot pin do not take the pin away: a bare id, a
    # repo digest of another repository. The decision names the newest.
    await put(api, B, "quay.io/t/app", ["1.4"])
    await put(api, f"quay.io/elsewhere/app@sha256:{C}", "quay.io/t/app", ["1.4"])
    answer = await allowed(api, ref)
    assert answer["entry"]["id"] == f"quay.io/elsewhere/app@sha256:{C}"
    assert answer["pin"] == f"{ref}@sha256:{A}"

    # CI records a re-pushed tag: the newest repo digest pins.
    await put(api, f"quay.io/t/app@sha256:{B}", "quay.io/t/app", ["1.4"])
    assert (await allowed(api, ref))["pin"] == f"{ref}@sha256:{B}"
    # Re-recording the first one makes it the newest again.
    await put(api, f"quay.io/t/app@sha256:{A}", "quay.io/t/app", ["1.4", "stable"])
    assert (await allowed(api, ref))["pin"] == f"{ref}@sha256:{A}"
    # Each tag pins through the entries that list it.
    assert (await allowed(api, "quay.io/t/app:stable"))["pin"] == (
        f"quay.io/t/app:stable@sha256:{A}"
    )
    # Deleted entries pin nothing any more.
    for image_id in (f"quay.io/t/app@sha256:{A}", f"quay.io/t/app@sha256:{B}"):
        assert (await api.delete("/images/" + urllib.parse.quote(image_id, safe=""))).status == 204
    answer = await allowed(api, ref)
    assert answer["allowed"] is True and answer["pin"] is None


@pytest.mark.gen_test
async def test_allowed_never_pins_digest_references_or_image_ids(api) -> None:
    await put(api, f"sha256:{A}", "myorg/tool", ["1"])
    await put(api, B, "myorg/other", ["1"])
    await put(api, f"docker.io/myorg/app@sha256:{C}", "myorg/app", ["1"])
    assert (await allowed(api, "myorg/tool:1"))["pin"] is None
    assert (await allowed(api, "myorg/other:1"))["pin"] is None
    assert (await allowed(api, f"myorg/app@sha256:{C}"))["pin"] is None
    assert (await allowed(api, f"myorg/app:1@sha256:{C}"))["pin"] is None
    # The familiar spelling pins, written as the caller wrote it.
    assert (await allowed(api, "myorg/app:1"))["pin"] == f"myorg/app:1@sha256:{C}"
    assert (await allowed(api, "index.docker.io/myorg/app:1"))["pin"] == (
        f"index.docker.io/myorg/app:1@sha256:{C}"
    )


@pytest.mark.gen_test
async def test_match_returns_the_pinning_entries_among_many(api, ctx) -> None:
    """The database narrows a tag listed by many entries to the handful the
    rule needs; the answer must stay the rule's, on both backends."""
    await put(api, f"quay.io/t/app@sha256:{A}", "quay.io/t/app", ["latest"])
    await put(api, f"quay.io/t/app:old@sha256:{B}", "quay.io/t/app", ["latest"])
    for n in range(20):
        await put(api, f"{n:064x}", "quay.io/t/app", ["latest"])
        await put(api, f"quay.io/other/app@sha256:{n:064x}", "quay.io/t/app", ["latest"])
    ref = parse_reference("quay.io/t/app:latest")
    (entries,) = await ctx.storage.match([ref])
    assert entries[0].id == f"quay.io/other/app@sha256:{19:064x}"  # the newest decides
    assert len(entries) < 10
    assert pin_digest(ref, entries) == f"sha256:{B}"
    assert (await allowed(api, "quay.io/t/app"))["pin"] == f"quay.io/t/app@sha256:{B}"
    # A digest reference needs only the entry that decides it.
    (entries,) = await ctx.storage.match([parse_reference(f"quay.io/t/app@sha256:{A}")])
    assert [e.id for e in entries] == [f"quay.io/t/app@sha256:{A}"]
