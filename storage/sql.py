"""SQL shared by both backends, written once with a placeholder for the
parameter style (`:name` for sqlite3, `%(name)s` for psycopg2).

Sort keys come from `storage.model.SORT_KEYS` only; nothing from a request is
ever formatted into SQL text. Text columns compare by byte order on both
backends (SQLite's BINARY collation, PostgreSQL columns declared
`COLLATE "C"`), so the order is identical everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from storage.model import SORT_KEYS, ListQuery, NewEntry
from storage.reference import reference_keys

Param = Callable[[str], str]

SELECT_COLUMNS = "id, name, tags, created_at, updated_at"
EVENT_COLUMNS = "seq, at, action, image_id, name, tags_before, tags_after, actor, request_id"


def pyformat(name: str) -> str:
    """psycopg2's parameter style."""
    return f"%({name})s"


def named(name: str) -> str:
    """sqlite3's parameter style."""
    return f":{name}"


# Each entry as the API's JSON object, built by the database: a whole list
# is then joined text in Python rather than rows turned into objects turned
# into JSON (several times the CPU per entry, bench/). The same compact form
# orjson writes, timestamps with all six fractional digits. PostgreSQL keeps
# it in a trigger-maintained column (storage/migrations.py).
# SQLite keeps microseconds since the epoch; strftime has no microseconds.
SQLITE_JSON_COLUMN = """json_object('id', id, 'name', name, 'tags', json(tags),
 'created_at', strftime('%Y-%m-%dT%H:%M:%S', created_at / 1000000, 'unixepoch')
               || printf('.%06dZ', created_at % 1000000),
 'updated_at', strftime('%Y-%m-%dT%H:%M:%S', updated_at / 1000000, 'unixepoch')
               || printf('.%06dZ', updated_at % 1000000))"""


def list_sql(
    sort: str, *, by_name: bool, after: bool, param: Param, columns: str = SELECT_COLUMNS
) -> str:
    """SELECT for one page of `GET /images`: descending, ties broken by id."""
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r}")
    where = []
    if by_name:
        where.append(f"name = {param('name')}")
    if after:
        if sort == "id":
            where.append(f"id < {param('after_id')}")
        else:
            where.append(f"({sort}, id) < ({param('after_value')}, {param('after_id')})")
    order = "id DESC" if sort == "id" else f"{sort} DESC, id DESC"
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {columns} FROM images{clause} ORDER BY {order} LIMIT {param('limit')}"


def all_list_sql(param: Param, columns: str = SELECT_COLUMNS) -> dict[tuple[str, bool, bool], str]:
    """Every page query, keyed by (sort, by_name, after), built at import time."""
    return {
        (sort, by_name, after): list_sql(
            sort, by_name=by_name, after=after, param=param, columns=columns
        )
        for sort in SORT_KEYS
        for by_name in (False, True)
        for after in (False, True)
    }


def list_key(query: ListQuery) -> tuple[str, bool, bool]:
    """The key of `query`'s statement in an `all_list_sql` table."""
    return (query.sort, query.name is not None, query.after is not None)


def list_params(
    query: ListQuery, after_value: Callable[[str | int], object] = lambda v: v
) -> dict[str, object]:
    """Bound parameters of a page query; `after_value` converts the keyset
    value to what the backend compares it with."""
    params: dict[str, object] = {"limit": query.limit, "name": query.name}
    if query.after is not None:
        params["after_id"] = query.after.id
        params["after_value"] = after_value(query.after.value)
    return params


def write_params(new: NewEntry) -> dict[str, object]:
    """Parameters of the upsert both backends share; each adds its tags."""
    norm_name, digest = reference_keys(new.name, new.id)
    return {"id": new.id, "name": new.name, "norm_name": norm_name, "digest": digest}


@dataclass(frozen=True, slots=True)
class Statements:
    """A backend's SQL for the operations `Storage` implements once, in its
    driver's parameter style."""

    get: str
    delete: str
    count: str
    ping: str
    #: One page of `GET /images`, keyed by `storage.sql.list_key`.
    list: Mapping[tuple[str, bool, bool], str]
    #: The same pages as the API's JSON text of each entry.
    list_json: Mapping[tuple[str, bool, bool], str]
    #: (reference index, entry columns...) of the entry allowing each reference.
    match: str
    #: A page of audit events, keyed by (filtered by image id, by actor).
    events: Mapping[tuple[bool, bool], str]


def backend_statements(param: Param, *, entry_json: str, match: str) -> Statements:
    """A backend's Statements: the shared SQL in its parameter style, its
    expression for an entry's JSON text, and its match query."""
    return Statements(
        get=f"SELECT {SELECT_COLUMNS} FROM images WHERE id = {param('id')}",
        delete=f"DELETE FROM images WHERE id = {param('id')} RETURNING name",
        count="SELECT count(*) FROM images",
        ping="SELECT 1",
        list=all_list_sql(param),
        list_json=all_list_sql(param, entry_json),
        match=match,
        events={
            (by_id, by_actor): events_sql(param, by_id=by_id, by_actor=by_actor)
            for by_id in (False, True)
            for by_actor in (False, True)
        },
    )


def events_sql(param: Param, *, by_id: bool, by_actor: bool) -> str:
    """SELECT for one page of `GET /events`: oldest first, after a seq."""
    where = [f"seq > {param('after')}"]
    if by_id:
        where.append(f"image_id = {param('image_id')}")
    if by_actor:
        where.append(f"actor = {param('actor')}")
    return (
        f"SELECT {EVENT_COLUMNS} FROM image_events WHERE {' AND '.join(where)}"
        f" ORDER BY seq LIMIT {param('limit')}"
    )
