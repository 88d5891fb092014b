"""The Go service's table, adopted in place (PostgreSQL only).

The Go service (gorm v1 over lib/pq) kept one `images` table: `id
varchar(255)`, `name text`, `tags varchar(100)` holding the text of an array
literal as lib/pq writes it (`{"latest","v1.1"}`), and nullable timestamps;
every column but `id` nullable. Adopting it converts those columns, in
place, to the shape the first migration creates, so the ordinary migrations
carry on from there. The table keeps its name and its columns keep theirs:
the Go service selects `*` from `images` and would create a new, empty table
under any other name, so it keeps working on the adopted table (a rolling
upgrade, a rollback).

What a value becomes (each as the Go service showed it):
- `tags` NULL -> `{}` (it showed no tags); elements are kept exactly,
  duplicates, `""` and the string `"NULL"` included; a NULL element (only an
  unquoted `{NULL}` written by hand makes one, and the Go service could not
  read that row) is dropped.
- a NULL timestamp -> 0001-01-01 00:00:00 UTC, the Go zero time it showed.
- a NULL name -> `""`, the Go zero string it showed.

A `tags` value that is not a one-dimensional array literal cannot be
converted; adoption then refuses, naming the ids, and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.errors import StorageError

# The table exactly as the Go service's gorm AutoMigrate created it (for
# reference, the tests and bench/adopt.py; adoption only reads its shape).
GO_SERVICE_DDL = """
CREATE TABLE public.images (
    created_at timestamp with time zone,
    updated_at timestamp with time zone,
    id character varying(255) NOT NULL,
    name text,
    tags character varying(100)
);
ALTER TABLE ONLY public.images ADD CONSTRAINT images_pkey PRIMARY KEY (id);
"""

# What the Go service showed for a NULL timestamp (Go's zero time.Time).
ZERO_TIME = "0001-01-01 00:00:00+00"

# The columns gorm created; a table without all of them is not the Go
# service's, and adopting it would be a guess.
GORM_COLUMNS = frozenset({"id", "name", "tags", "created_at", "updated_at"})

TABLE_EXISTS_SQL = "SELECT to_regclass('images') IS NOT NULL"
COLUMNS_SQL = """
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = to_regclass('images') AND attnum > 0 AND NOT attisdropped
"""

# Whether a `tags` value converts to a one-dimensional text[]. PostgreSQL 15
# has no pg_input_is_valid; a cast inside an exception block is the test. A
# session-local (pg_temp) function, so checking writes nothing to the schema.
TAGS_CHECK_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION pg_temp.imagelist_tags_convert(value text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RETURN value IS NULL OR coalesce(array_ndims(value::text[]), 1) = 1;
EXCEPTION WHEN others THEN
    RETURN false;
END
$$
"""
BAD_TAGS_SQL = """
SELECT id, tags FROM images WHERE NOT pg_temp.imagelist_tags_convert(tags::text) ORDER BY id
"""

ADOPT_SQL = f"""
ALTER TABLE images
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN name TYPE text COLLATE "C" USING coalesce(name, ''),
    ALTER COLUMN name SET NOT NULL,
    ALTER COLUMN tags TYPE text[] USING coalesce(array_remove(tags::text::text[], NULL), '{{}}'),
    ALTER COLUMN tags SET DEFAULT '{{}}',
    ALTER COLUMN tags SET NOT NULL,
    ALTER COLUMN created_at TYPE timestamptz USING coalesce(created_at, '{ZERO_TIME}'),
    ALTER COLUMN created_at SET NOT NULL,
    ALTER COLUMN updated_at TYPE timestamptz USING coalesce(updated_at, '{ZERO_TIME}'),
    ALTER COLUMN updated_at SET NOT NULL
"""
COUNT_SQL = "SELECT count(*) FROM images"

# What the dry run reports: NULLs the adoption fills in, per column.
NULLS_SQL = """
SELECT count(*) FILTER (WHERE tags IS NULL),
       count(*) FILTER (WHERE name IS NULL),
       count(*) FILTER (WHERE created_at IS NULL),
       count(*) FILTER (WHERE updated_at IS NULL)
FROM images
"""

# Ids shown in a refusal; the dry run lists them all.
SHOWN_IDS = 10


class AdoptionRefused(StorageError):
    """The table cannot be adopted as it is; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Found:
    """What `images` is, before any migration ran."""

    #: "none" (no table), "go" (the Go service's), or "unknown".
    kind: str
    columns: dict[str, str]


async def inspect_table(cur: Any) -> Found:
    """What the `images` table is, on a database without imagelist's schema."""
    await cur.execute(TABLE_EXISTS_SQL)
    (exists,) = await cur.fetchone()
    if not exists:
        return Found("none", {})
    await cur.execute(COLUMNS_SQL)
    columns = {name: kind for name, kind in await cur.fetchall()}
    if columns.keys() < GORM_COLUMNS:
        return Found("unknown", columns)
    # A hand conversion may already have made tags an array: still adoptable.
    tags = columns["tags"]
    if tags in ("text[]", "character varying[]") or not tags.endswith("[]"):
        return Found("go", columns)
    return Found("unknown", columns)


async def bad_tags(cur: Any) -> list[tuple[str, str]]:
    """(id, tags) of every row whose tags cannot become an array."""
    await cur.execute(TAGS_CHECK_FUNCTION_SQL)
    await cur.execute(BAD_TAGS_SQL)
    return [(row[0], row[1]) for row in await cur.fetchall()]


async def adopt(cur: Any) -> int:
    """Convert the Go service's table in place to the first migration's
    column shapes; return its row count. Runs inside the caller's migration
    transaction, under its lock: on any error, everything rolls back."""
    found = await inspect_table(cur)
    if found.kind != "go":
        raise AdoptionRefused(
            "table images exists but is neither imagelist's nor the Go service's "
            f"(columns: {', '.join(sorted(found.columns))}); refusing to touch it"
        )
    bad = await bad_tags(cur)
    if bad:
        shown = ", ".join(repr(image_id) for image_id, _ in bad[:SHOWN_IDS])
        more = f" and {len(bad) - SHOWN_IDS} more" if len(bad) > SHOWN_IDS else ""
        raise AdoptionRefused(
            f"cannot adopt the Go service's table: {len(bad)} rows have tags that are "
            f"not an array literal (ids {shown}{more}); fix or delete them (see "
            "imagelist --migrate-dry-run) and start again; nothing was changed"
        )
    await cur.execute(ADOPT_SQL)
    await cur.execute(COUNT_SQL)
    (rows,) = await cur.fetchone()
    return int(rows)


# Each row as adoption would serve it (tags None where they cannot be
# converted), for the dry run to check against today's rules.
SURVEY_ROWS_SQL = """
SELECT id, coalesce(name, ''),
       CASE WHEN pg_temp.imagelist_tags_convert(tags::text)
            THEN coalesce(array_remove(tags::text::text[], NULL), '{}') END
FROM images ORDER BY id
"""
SCHEMA_TABLE_EXISTS_SQL = "SELECT to_regclass('imagelist_schema') IS NOT NULL"
VERSION_SQL = "SELECT coalesce(max(version), 0) FROM imagelist_schema"


@dataclass(frozen=True, slots=True)
class Survey:
    """What migrating would find and do; gathered without changing anything."""

    #: "none" (empty database), "go" (the Go service's table), "imagelist",
    #: or "unknown" (a table named images that is neither: refused).
    schema: str
    #: imagelist's schema version now, and the one migrating leads to.
    version: int
    latest: int
    #: Per column, rows whose NULL adoption fills in (Go table only).
    nulls: dict[str, int]
    #: (id, tags as stored) of rows whose tags cannot be converted.
    bad_tags: list[tuple[str, str]]
    #: Every row (id, name, tags) as imagelist would serve it.
    rows: list[tuple[str, str, tuple[str, ...] | None]]


async def survey(cur: Any, latest: int) -> Survey:
    """Look, change nothing: the caller runs this in a transaction it rolls
    back (the check function lives in pg_temp and goes with it)."""
    version = 0
    await cur.execute(SCHEMA_TABLE_EXISTS_SQL)
    if (await cur.fetchone())[0]:
        await cur.execute(VERSION_SQL)
        (version,) = await cur.fetchone()
    found = await inspect_table(cur)
    schema = "imagelist" if version else found.kind
    nulls: dict[str, int] = {}
    bad: list[tuple[str, str]] = []
    rows: list[tuple[str, str, tuple[str, ...] | None]] = []
    if schema in ("go", "imagelist"):
        bad = await bad_tags(cur)
        if schema == "go":
            await cur.execute(NULLS_SQL)
            counts = await cur.fetchone()
            nulls = dict(zip(("tags", "name", "created_at", "updated_at"), counts, strict=True))
        await cur.execute(SURVEY_ROWS_SQL)
        rows = [(r[0], r[1], None if r[2] is None else tuple(r[2])) for r in await cur.fetchall()]
    return Survey(schema, int(version), latest, nulls, bad, rows)
