"""Schema history of both backends: literal SQL, frozen once released.

A released migration never changes, not even its whitespace: a database
migrated with one text and a fresh one migrated with another would differ
under the same schema version, silently. tests/test_migrations.py keeps a
digest of every released migration and fails when one changes. New
behaviour is a new migration, appended; a trigger function that changes is
a new `..._vN` function the new migration points the trigger at.

One step is not SQL: an entry's reference keys (normalized repository name
and digest) come from the Python reference grammar (storage/reference.py).
A migration with `recompute_keys` recomputes them for every stored entry,
with the code running the migration. When that normalization changes, append
a migration with `recompute_keys=True` (tests/test_migrations.py fails until
one records the new normalization).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from storage.reference import reference_keys

log = logging.getLogger("imagelist.storage")

#: Entries read per page while recomputing reference keys.
KEYS_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Migration:
    #: Literal SQL, statements separated by `;` (SQLite runs them one by one).
    sql: str
    #: Afterwards, recompute every entry's reference keys (see module doc).
    recompute_keys: bool = False

    def frozen_text(self) -> str:
        """What must never change once released."""
        return self.sql + ("\n-- then: recompute reference keys" if self.recompute_keys else "")


POSTGRES: tuple[Migration, ...] = (
    Migration(
        """
    CREATE TABLE IF NOT EXISTS images (
        id          text COLLATE "C" PRIMARY KEY,
        name        text COLLATE "C" NOT NULL,
        tags        text[] NOT NULL DEFAULT '{}',
        created_at  timestamptz NOT NULL,
        updated_at  timestamptz NOT NULL
    );
    CREATE INDEX IF NOT EXISTS images_updated_at ON images (updated_at, id);
    CREATE INDEX IF NOT EXISTS images_created_at ON images (created_at, id);
    CREATE INDEX IF NOT EXISTS images_name ON images (name, id);
    """
    ),
    # Each entry's normalized name and digest, indexed, so an admission
    # decision is one index lookup.
    Migration(
        """
ALTER TABLE images ADD COLUMN IF NOT EXISTS norm_name text COLLATE "C";
ALTER TABLE images ADD COLUMN IF NOT EXISTS digest text COLLATE "C";
CREATE INDEX IF NOT EXISTS images_norm_name_digest ON images (norm_name, digest);
""",
        recompute_keys=True,
    ),
    # Each entry's API JSON, kept by a trigger on every write (by any
    # instance, any version, or an admin's psql). Reading it back makes a
    # list page a plain index scan: building the JSON at read time cost
    # PostgreSQL more CPU than the daemon spent serving the list. The
    # compact form orjson writes, timestamps with all six fractional digits.
    Migration(
        """
ALTER TABLE images ADD COLUMN IF NOT EXISTS entry_json text;
CREATE OR REPLACE FUNCTION imagelist_entry_json() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.entry_json := '{"id":' || to_json(NEW.id)::text || ',"name":' || to_json(NEW.name)::text || ',"tags":' || array_to_json(NEW.tags)::text || ',"created_at":"' || to_char(NEW.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '","updated_at":"' || to_char(NEW.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"}';
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS images_entry_json ON images;
CREATE TRIGGER images_entry_json BEFORE INSERT OR UPDATE ON images
    FOR EACH ROW EXECUTE FUNCTION imagelist_entry_json();
UPDATE images SET entry_json = NULL;
"""  # noqa: E501 - frozen as released
    ),
    # Trigger functions carry their version from here on: a changed one is
    # created as _v2 by a new migration, and the trigger repointed to it.
    Migration(
        """
ALTER FUNCTION imagelist_entry_json() RENAME TO imagelist_entry_json_v1;
"""
    ),
    # Rows from writers other than imagelist (the Go service during a rolling
    # upgrade or after a rollback, an admin's psql). Their NULLs are filled
    # (tags [], name "", a missing timestamp "now"), so every row reads back.
    # Their reference keys are Python's to compute, so such a row is marked
    # `keys_stale`, its keys cleared (it never matches on keys that are not
    # its own), until the sweep (storage/sweep.py) computes them. imagelist's
    # own writes compute the keys and say so (keys_stale = false); a rename
    # by anyone else makes them stale again. Rows without keys from before
    # this migration (written by SQL) are marked stale here. BEFORE triggers
    # fire in name order: this one must run before images_entry_json renders
    # the row, hence the leading digits. Idempotent, like the ones before.
    Migration(
        """
ALTER TABLE images ADD COLUMN IF NOT EXISTS keys_stale boolean NOT NULL DEFAULT false;
ALTER TABLE images ALTER COLUMN keys_stale SET DEFAULT true;
CREATE INDEX IF NOT EXISTS images_keys_stale ON images (id) WHERE keys_stale;
UPDATE images SET keys_stale = true WHERE norm_name IS NULL;
CREATE OR REPLACE FUNCTION imagelist_row_defaults_v1() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.name := coalesce(NEW.name, '');
    NEW.tags := coalesce(array_remove(NEW.tags, NULL), '{}');
    IF TG_OP = 'INSERT' THEN
        NEW.created_at := coalesce(NEW.created_at, now());
        IF NEW.keys_stale THEN
            NEW.norm_name := NULL;
            NEW.digest := NULL;
        END IF;
    ELSE
        NEW.created_at := coalesce(NEW.created_at, OLD.created_at);
        IF NEW.id IS DISTINCT FROM OLD.id OR NEW.name IS DISTINCT FROM OLD.name THEN
            NEW.keys_stale := true;
            NEW.norm_name := NULL;
            NEW.digest := NULL;
        END IF;
    END IF;
    NEW.updated_at := coalesce(NEW.updated_at, now());
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS images_00_row_defaults ON images;
CREATE TRIGGER images_00_row_defaults BEFORE INSERT OR UPDATE ON images
    FOR EACH ROW EXECUTE FUNCTION imagelist_row_defaults_v1();
"""
    ),
)

SQLITE: tuple[Migration, ...] = (
    Migration(
        """
    CREATE TABLE IF NOT EXISTS images (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        tags        TEXT NOT NULL,      -- JSON array of strings
        created_at  INTEGER NOT NULL,   -- microseconds since the epoch, UTC
        updated_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS images_updated_at ON images (updated_at, id);
    CREATE INDEX IF NOT EXISTS images_created_at ON images (created_at, id);
    CREATE INDEX IF NOT EXISTS images_name ON images (name, id);
    """
    ),
    Migration(
        """
ALTER TABLE images ADD COLUMN norm_name TEXT;
ALTER TABLE images ADD COLUMN digest TEXT;
CREATE INDEX IF NOT EXISTS images_norm_name_digest ON images (norm_name, digest);
""",
        recompute_keys=True,
    ),
)


def split_statements(sql: str) -> list[str]:
    """A migration's statements, for drivers that run one at a time. The
    migrations split here hold no `;` inside a statement."""
    return [s for s in sql.split(";") if s.strip()]


@dataclass
class KeyBackfill:
    """The driver-neutral part of recomputing reference keys: which page to
    read next, each entry's keys, and the one warning at the end. A backend
    loops: read `page_params()`, hand the rows to `plan()`, write its result,
    until `plan()` returns nothing."""

    after: str = ""
    unmatchable: int = 0
    _done: bool = field(default=False, repr=False)

    def page_params(self) -> dict[str, object]:
        return {"after": self.after, "limit": KEYS_PAGE}

    def plan(self, rows: Sequence[tuple[str, str]]) -> list[tuple[str, str | None, str | None]]:
        """(id, normalized name, digest) for each (id, name) row read."""
        if not rows:
            self.finish()
            return []
        keys = []
        for entry_id, name in rows:
            norm_name, digest = reference_keys(name, entry_id)
            self.unmatchable += norm_name is None
            keys.append((entry_id, norm_name, digest))
        self.after = rows[-1][0]
        return keys

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self.unmatchable:
            # Old clients may store any name; such an entry is kept, but it
            # can never allow an image, which its owner should learn.
            log.warning(
                "unmatchable_entries",
                extra={
                    "count": self.unmatchable,
                    "effect": "their names are not repository names: they never allow an image",
                },
            )
