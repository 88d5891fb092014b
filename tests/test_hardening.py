"""Hostile clients against the in-process app (both backends): a clear 4xx,
never a 500, nothing written."""

from __future__ import annotations

import urllib.parse

import pytest


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "limit",
    [
        "\u00b2",  # superscript two: isdigit(), but int() raises
        "\u2460",  # circled one
        "\u0661\u0660",  # Arabic-Indic ten: int() reads it as 10
        "\U0001d7d7",  # mathematical bold nine
        "\uff11\uff10",  # fullwidth ten
        "+5",
        " 5",
    ],
)
async def test_limit_takes_ascii_digits_only(api, limit: str) -> None:
    reply = await api.get("/images?limit=" + urllib.parse.quote(limit))
    assert reply.status == 400, reply.body
    assert reply.json["details"] == {"parameter": "limit"}
