"""The old Go service's own three tests, ported by name and intent."""

from __future__ import annotations

import pytest


@pytest.mark.gen_test
async def test_create_image(api) -> None:
    reply = await api.put({"id": "123abc", "name": "myorg/apache2", "tags": ["latest", "2.4"]})
    assert reply.status == 200
    body = reply.json
    assert body["id"] == "123abc"
    assert body["name"] == "myorg/apache2"
    assert body["tags"] == ["latest", "2.4"]
    assert (await api.get("/images/123abc")).json == body


@pytest.mark.gen_test
async def test_malformed_payload_returns_400(api) -> None:
    reply = await api.put(raw=b'{"id": "123abc", "name": ')
    assert reply.status == 400
    assert "error" in reply.json
    assert await api.all_images() == []


@pytest.mark.gen_test
async def test_second_put_updates_only_tags(api) -> None:
    first = (await api.put({"id": "123abc", "name": "myorg/apache2", "tags": ["v1"]})).json
    second = await api.put({"id": "123abc", "name": "someone/else", "tags": ["v2", "v3"]})
    assert second.status == 200
    assert second.json["name"] == "myorg/apache2"
    assert second.json["tags"] == ["v2", "v3"]
    assert second.json["created_at"] == first["created_at"]
    assert second.json["updated_at"] > first["updated_at"]
    assert await api.all_images() == [second.json]
