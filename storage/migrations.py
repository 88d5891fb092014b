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
    # Every change to an entry, by any writer (another instance, an older
    # version, the old Go service, psql), is announced to the admission
    # replicas (storage/replica_postgres.py) on channel imagelist_changes,
    # the payload being the id: a NOTIFY payload is at most 8,000 bytes, so
    # an id too long for one, or a TRUNCATE, asks for a full reload on
    # imagelist_reload instead. Delivered at commit, in commit order.
    Migration(
        """
CREATE OR REPLACE FUNCTION imagelist_notify_change_v1() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('imagelist_reload', '');
        RETURN NULL;
    END IF;
    FOREACH changed IN ARRAY CASE TG_OP WHEN 'INSERT' THEN ARRAY[NEW.id]
                                        WHEN 'DELETE' THEN ARRAY[OLD.id]
                                        ELSE ARRAY[OLD.id, NEW.id] END
    LOOP
        IF octet_length(changed) <= 4000 THEN
            PERFORM pg_notify('imagelist_changes', changed);
        ELSE
            PERFORM pg_notify('imagelist_reload', '');
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS images_notify_change ON images;
CREATE TRIGGER images_notify_change AFTER INSERT OR UPDATE OR DELETE ON images
    FOR EACH ROW EXECUTE FUNCTION imagelist_notify_change_v1();
DROP TRIGGER IF EXISTS images_notify_truncate ON images;
CREATE TRIGGER images_notify_truncate AFTER TRUNCATE ON images
    FOR EACH STATEMENT EXECUTE FUNCTION imagelist_notify_change_v1();
"""
    ),
    # The audit trail: one event per change to an entry, by any writer.
    # imagelist's own writes name their token and request in transaction-
    # local settings (imagelist.actor, imagelist.request_id); any other
    # writer is named by its database role (session_user). An UPDATE that
    # moves only the columns imagelist derives (reference keys, keys_stale,
    # entry_json: the sweep, a key recomputation) is no change of the
    # entry and is not recorded, unless imagelist itself wrote it (a PUT
    # is always one event). Reference keys set by anyone but imagelist's
    # own computation of them (which marks its transaction imagelist.keys)
    # are a change: they decide what the entry allows. That test is the
    # UPDATE trigger's WHEN, which
    # runs at once, so such updates (a key recomputation touches every
    # row) queue nothing until commit. An UPDATE that changes an id (only
    # SQL does) is the old entry deleted and a new one created: two events,
    # so a reader following either id, or replaying the trail, sees both.
    #
    # Sequence numbers follow commit order, so a reader paging by seq never
    # skips an event committed after it read a greater one: the trigger is
    # a deferred constraint trigger (it runs at COMMIT) that takes one
    # advisory lock, held until the transaction ends, before numbering.
    # Writers therefore commit one at a time; the lock is held for the
    # event insert and the commit only. A TRUNCATE of images is one deleted
    # event per row, numbered at once (a statement trigger cannot wait for
    # commit), under the same lock, held from then until its commit.
    #
    # SECURITY DEFINER with a pinned search_path: a role that may write
    # images records events without any right on image_events. Events are
    # append-only: UPDATE, DELETE and TRUNCATE are refused unless the
    # transaction set imagelist.prune (the retention prune does; the
    # table's owner can always drop the guard, as it can drop any trigger).
    Migration(
        """
CREATE SEQUENCE IF NOT EXISTS image_events_seq;
CREATE TABLE IF NOT EXISTS image_events (
    seq          bigint PRIMARY KEY,
    at           timestamptz NOT NULL,
    action       text NOT NULL CHECK (action IN ('created', 'updated', 'deleted')),
    image_id     text COLLATE "C" NOT NULL,
    name         text COLLATE "C" NOT NULL,
    tags_before  text[],
    tags_after   text[],
    actor        text COLLATE "C" NOT NULL,
    request_id   text
);
CREATE INDEX IF NOT EXISTS image_events_image_id ON image_events (image_id, seq);
CREATE INDEX IF NOT EXISTS image_events_actor ON image_events (actor, seq);
CREATE INDEX IF NOT EXISTS image_events_at ON image_events (at);
CREATE OR REPLACE FUNCTION imagelist_record_event_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    actor text := coalesce(nullif(current_setting('imagelist.actor', true), ''), session_user);
    request_id text := nullif(current_setting('imagelist.request_id', true), '');
    moved boolean := TG_OP = 'UPDATE' AND OLD.id <> NEW.id;
BEGIN
    PERFORM pg_advisory_xact_lock(1768777573);
    IF TG_OP = 'DELETE' OR moved THEN
        INSERT INTO image_events (seq, at, action, image_id, name, tags_before, tags_after,
                                  actor, request_id)
        VALUES (nextval('image_events_seq'), clock_timestamp(), 'deleted', OLD.id, OLD.name,
                OLD.tags, NULL, actor, request_id);
    END IF;
    IF TG_OP = 'INSERT' OR moved THEN
        INSERT INTO image_events (seq, at, action, image_id, name, tags_before, tags_after,
                                  actor, request_id)
        VALUES (nextval('image_events_seq'), clock_timestamp(), 'created', NEW.id, NEW.name,
                NULL, NEW.tags, actor, request_id);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO image_events (seq, at, action, image_id, name, tags_before, tags_after,
                                  actor, request_id)
        VALUES (nextval('image_events_seq'), clock_timestamp(), 'updated', NEW.id, NEW.name,
                OLD.tags, NEW.tags, actor, request_id);
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION imagelist_record_truncate_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1768777573);
    INSERT INTO image_events (seq, at, action, image_id, name, tags_before, tags_after,
                              actor, request_id)
    SELECT nextval('image_events_seq'), clock_timestamp(), 'deleted', gone.id, gone.name,
           gone.tags, NULL,
           coalesce(nullif(current_setting('imagelist.actor', true), ''), session_user),
           nullif(current_setting('imagelist.request_id', true), '')
    FROM (SELECT id, name, tags FROM images ORDER BY id) AS gone;
    RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION imagelist_events_append_only_v1() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('imagelist.prune', true), '') = 'on' AND TG_OP <> 'UPDATE' THEN
        RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NULL END;
    END IF;
    RAISE EXCEPTION 'image_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION imagelist_record_event_v1() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION imagelist_record_truncate_v1() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END
$$;
DROP TRIGGER IF EXISTS images_record_event ON images;
CREATE CONSTRAINT TRIGGER images_record_event AFTER INSERT OR DELETE ON images
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION imagelist_record_event_v1();
DROP TRIGGER IF EXISTS images_record_update ON images;
CREATE CONSTRAINT TRIGGER images_record_update AFTER UPDATE ON images
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN ((OLD.id, OLD.name, OLD.tags, OLD.created_at, OLD.updated_at)
              IS DISTINCT FROM (NEW.id, NEW.name, NEW.tags, NEW.created_at, NEW.updated_at)
          OR current_setting('imagelist.actor', true) <> ''
          OR ((OLD.norm_name, OLD.digest) IS DISTINCT FROM (NEW.norm_name, NEW.digest)
              AND coalesce(current_setting('imagelist.keys', true), '') <> 'on'))
    EXECUTE FUNCTION imagelist_record_event_v1();
DROP TRIGGER IF EXISTS images_record_truncate ON images;
CREATE TRIGGER images_record_truncate BEFORE TRUNCATE ON images
    FOR EACH STATEMENT EXECUTE FUNCTION imagelist_record_truncate_v1();
DROP TRIGGER IF EXISTS image_events_append_only ON image_events;
CREATE TRIGGER image_events_append_only BEFORE UPDATE OR DELETE ON image_events
    FOR EACH ROW EXECUTE FUNCTION imagelist_events_append_only_v1();
DROP TRIGGER IF EXISTS image_events_no_truncate ON image_events;
CREATE TRIGGER image_events_no_truncate BEFORE TRUNCATE ON image_events
    FOR EACH STATEMENT EXECUTE FUNCTION imagelist_events_append_only_v1();
"""  # noqa: E501 - frozen once released
    ),
)

#: The channels migration 6's trigger notifies.
CHANGES_CHANNEL = "imagelist_changes"
RELOAD_CHANNEL = "imagelist_reload"

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
    # The audit trail (see the PostgreSQL migration): written by imagelist
    # (every instance on the file) in the same transaction as the change.
    # Another program writing the file (the sqlite3 shell, which the
    # admission replica notices) records nothing: there is no trigger.
    # AUTOINCREMENT: a pruned sequence number is never handed out again.
    Migration(
        """
CREATE TABLE IF NOT EXISTS image_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,   -- microseconds since the epoch, UTC
    action       TEXT NOT NULL,
    image_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    tags_before  TEXT,               -- JSON array of strings, NULL when created
    tags_after   TEXT,               -- JSON array of strings, NULL when deleted
    actor        TEXT NOT NULL,
    request_id   TEXT
);
CREATE INDEX IF NOT EXISTS image_events_image_id ON image_events (image_id, seq);
CREATE INDEX IF NOT EXISTS image_events_actor ON image_events (actor, seq);
CREATE INDEX IF NOT EXISTS image_events_at ON image_events (at);
"""
    ),
)

#: The advisory lock the PostgreSQL event trigger numbers events under.
EVENTS_LOCK_KEY = 1768777573  # "imge"


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
