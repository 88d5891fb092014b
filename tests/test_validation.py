"""Table tests of request validation (pure logic)."""

from __future__ import annotations

import pytest

from handlers.errors import map_exception
from handlers.validation import parse_entry
from storage.errors import Invalid
from storage.model import NewEntry

GOOD = [
    ({"id": "a", "name": "n"}, NewEntry("a", "n", None)),
    (
        {"id": "sha256:" + "f" * 64, "name": "quay.io/x/y", "tags": ["1", "2", "1"]},
        NewEntry("sha256:" + "f" * 64, "quay.io/x/y", ("1", "2")),
    ),
    ({"id": "x" * 255, "name": "n" * 255, "tags": []}, NewEntry("x" * 255, "n" * 255, ())),
    ({"id": "a", "name": "name with space", "tags": None}, NewEntry("a", "name with space", None)),
    ({"id": "a", "name": "n", "unknown": 1}, NewEntry("a", "n", None)),
]

BAD = [
    ([], "object"),
    ({"name": "n"}, "id is required"),
    ({"id": "a"}, "name is required"),
    ({"id": None, "name": "n"}, "id must be a string"),
    ({"id": "", "name": "n"}, "id must not be empty"),
    ({"id": "x" * 256, "name": "n"}, "longer than 255"),
    ({"id": "a b", "name": "n"}, "whitespace"),
    ({"id": "a\tb", "name": "n"}, "whitespace"),
    ({"id": "a", "name": "n\x00"}, "non-printable"),
    ({"id": "a", "name": "n\ud800"}, "non-printable"),
    ({"id": "a", "name": "n\u2028"}, "non-printable"),
    ({"id": "a", "name": "n", "tags": "x"}, "array"),
    ({"id": "a", "name": "n", "tags": [1]}, r"tags\[0\] must be a string"),
    ({"id": "a", "name": "n", "tags": ["ok", ""]}, r"tags\[1\] must not be empty"),
    ({"id": "a", "name": "n", "tags": ["t"] * 1001}, "more than 1000"),
]


@pytest.mark.parametrize(("body", "expected"), GOOD)
def test_valid_bodies(body: dict, expected: NewEntry) -> None:
    assert parse_entry(body) == expected


@pytest.mark.parametrize(("body", "message"), BAD)
def test_invalid_bodies(body: object, message: str) -> None:
    with pytest.raises(Invalid, match=message) as info:
        parse_entry(body)
    answer = map_exception(info.value)
    assert answer is not None and answer.status == 400 and answer.message == str(info.value)
