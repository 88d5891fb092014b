"""SQL shared by both backends, written once with a placeholder for the
parameter style (`:name` for sqlite3, `%(name)s` for psycopg2).

Sort keys come from `storage.model.SORT_KEYS` only; nothing from a request is
ever formatted into SQL text. Text columns compare by byte order on both
backends (SQLite's BINARY collation, PostgreSQL columns declared
`COLLATE "C"`), so the order is identical everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from storage.model import SORT_KEYS

Param = Callable[[str], str]

SELECT_COLUMNS = "id, name, tags, created_at, updated_at"


def list_sql(sort: str, *, by_name: bool, after: bool, param: Param) -> str:
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
    return f"SELECT {SELECT_COLUMNS} FROM images{clause} ORDER BY {order} LIMIT {param('limit')}"


def all_list_sql(param: Param) -> dict[tuple[str, bool, bool], str]:
    """Every page query, keyed by (sort, by_name, after), built at import time."""
    return {
        (sort, by_name, after): list_sql(sort, by_name=by_name, after=after, param=param)
        for sort in SORT_KEYS
        for by_name in (False, True)
        for after in (False, True)
    }
