"""The API document and the README say what the daemon does: the document
is valid OpenAPI (as served too), HEAD works wherever GET does, and the
README's error bodies, log events and messages are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate
from tokenfiles import bearer, entry, tokens_yaml

from config import ConfigError, load_config
from config.tokens import TokenFileError, parse_tokens

from daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
DOC = yaml.safe_load((ROOT / "openapi.yaml").read_text())
README = (ROOT / "README.md").read_text()


def test_the_document_is_valid_openapi() -> None:
    validate(DOC)


@pytest.mark.gen_test
async def test_the_served_document_is_valid_openapi(api) -> None:
    reply = await api.get("/openapi.json")
    assert reply.status == 200
    validate(reply.json)
    assert reply.json["paths"]["/images/{id}"]["delete"]["responses"]["204"] == {
        "description": "Deleted, or was not there."
    }


GET_PATHS = [
    "/images",
    "/images?limit=2",
    "/images/nope",
    "/health/live",
    "/health/ping",
    "/metrics",
    "/openapi.json",
    "/openapi.yaml",
    "/allowed?image=nginx",
    "/allowed",
]


@pytest.mark.gen_test
@pytest.mark.parametrize("path", GET_PATHS)
async def test_head_answers_like_get_without_a_body(api, path: str) -> None:
    assert (await api.put({"id": "h1", "name": "nginx", "tags": ["latest"]})).status == 200
    got = await api.get(path)
    head = await api.request("HEAD", path)
    assert head.status == got.status
    assert head.body == b""
    assert head.headers.get("Content-Type") == got.headers.get("Content-Type")
    if path not in ("/metrics",):  # counters move between the two requests
        assert head.headers.get("Content-Length") == str(len(got.body))


@pytest.mark.gen_test
async def test_head_is_405_where_get_is_not_served(api) -> None:
    reply = await api.request("HEAD", "/admission/validate")
    assert reply.status == 405
    assert reply.headers["Allow"] == "POST"


def readme_401_messages() -> list[str]:
    section = README.split("### Requests", 1)[1].split("###", 1)[0]
    text = " ".join(section.split())
    found = re.findall(r"`(authorization required[^`]*|malformed Authorization[^`]*)`", text)
    return [*found, "invalid or disabled token"]


def test_the_readme_401_bodies_and_auth_rejected_reasons_are_the_real_ones(
    tmp_path: Path,
) -> None:
    missing, malformed, invalid = readme_401_messages()
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(tokens_yaml(entry("ci", "Readme-T0ken")))
    with Daemon("--database-url", f"sqlite:///{tmp_path}/db", "--tokens-file", str(tokens)) as d:
        for headers, message in (
            ({}, missing),
            ({"Authorization": "Basic abc"}, malformed),
            (bearer("wrong"), invalid),
        ):
            status, body, _ = d.request("DELETE", "/images/x", headers=headers)
            assert (status, body["error"]) == (401, message)
            assert set(body) == {"error", "request_id"}  # no details: nothing more to say
    reasons = [e["reason"] for e in d.logs() if e["event"] == "auth_rejected"]
    assert reasons == ["missing", "malformed", "unknown"]


def test_the_readme_duplicate_name_example_is_the_real_message() -> None:
    example = re.search(r"`(tokens file /etc/imagelist/tokens\.yaml: [^`]*duplicate[^`]*)`", README)
    assert example is not None
    data = tokens_yaml(entry("ci", "one-token"), entry("ci", "two-token")).encode()
    with pytest.raises(TokenFileError) as raised:
        parse_tokens(data, "/etc/imagelist/tokens.yaml")
    assert str(raised.value) == example.group(1)


def test_a_tokens_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(["--tokens-file", str(tmp_path)], env={})
