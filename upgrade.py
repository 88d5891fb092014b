"""`imagelist --migrate` and `imagelist --migrate-dry-run`: an upgrade that
can be rehearsed. The dry run connects, looks, prints what migrating would
change (and what today's rules would refuse of the data it keeps), and
changes nothing; `--migrate` does it and exits, so that the schema change
(the Go service's table adopted) is a step of its own, before any instance
serves.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from handlers.validation import check_id, check_name, check_tags
from storage import Storage
from storage.errors import Invalid
from storage.legacy import Survey
from storage.reference import normalize_name

# Offending values printed per kind; the counts are always complete.
SHOWN = 20

SCHEMAS = {
    "none": "no images table yet: imagelist creates its own",
    "go": "the Go service's images table: adopted in place (one transaction)",
    "imagelist": "imagelist's own schema",
    "unknown": "a table named images that is neither imagelist's nor the Go service's: refused",
}
# As the API will show them.
ZERO = "0001-01-01T00:00:00.000000Z"
FILLS = {"tags": "[]", "name": '""', "created_at": ZERO, "updated_at": ZERO}


def _refusal(check: Callable[[Any], Any], value: Any) -> str | None:
    try:
        check(value)
    except Invalid as exc:
        return str(exc)
    return None


def report(survey: Survey, kind: str, out: TextIO) -> bool:
    """Print the dry run's report; whether migrating would succeed."""

    def line(text: str = "") -> None:
        print(text, file=out)

    def listing(title: str, found: list[tuple[str, str]]) -> None:
        line(f"{title}: {len(found)}")
        for value, why in found[:SHOWN]:
            line(f"    {value!r}: {why}")
        if len(found) > SHOWN:
            line(f"    ... and {len(found) - SHOWN} more")

    line(f"imagelist --migrate-dry-run ({kind}): nothing was changed")
    line(f"schema found: {SCHEMAS.get(survey.schema, survey.schema)}")
    if survey.version < survey.latest:
        line(f"migrations to apply: {survey.version + 1} to {survey.latest}")
    else:
        line(f"migrations to apply: none (schema version {survey.version})")
    line(f"entries: {len(survey.rows)}")
    if survey.nulls:
        filled = ", ".join(f"{col} {n} (-> {FILLS[col]})" for col, n in survey.nulls.items())
        line(f"NULLs to fill: {filled}")
    ok = survey.schema != "unknown" and not survey.bad_tags
    listing(
        "tags that are not an array literal (fix them first: adoption refuses them)",
        [(image_id, f"tags {tags!r}") for image_id, tags in survey.bad_tags],
    )
    ids, names, tags, unmatchable = [], [], [], []
    for image_id, name, row_tags in survey.rows:
        if (why := _refusal(check_id, image_id)) is not None:
            ids.append((image_id, why))
        if (why := _refusal(check_name, name)) is not None:
            names.append((image_id, f"name {name!r}: {why}"))
        elif normalize_name(name) is None:
            unmatchable.append((image_id, f"name {name!r}"))
        if row_tags and (why := _refusal(check_tags, list(row_tags))) is not None:
            tags.append((image_id, why))
    line("kept and served as stored, though a new entry like them would be refused:")
    listing("  ids", ids)
    listing("  names", names)
    listing("  tags", tags)
    listing("names that are not repository names (they never allow an image)", unmatchable)
    line("result: " + ("ready to migrate" if ok else "migrating would be refused; nothing changes"))
    return ok


async def run(action: str, storage: Storage, out: TextIO = sys.stdout) -> int:
    """Exit status of `--migrate` / `--migrate-dry-run`."""
    if action == "migrate":
        await storage.migrate()
        return 0
    return 0 if report(await storage.survey(), storage.kind, out) else 1
