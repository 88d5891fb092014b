"""Scope patterns against entry names (table-driven), and the patterns the
tokens file refuses, with messages that name the entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tokenfiles import entry, tokens_yaml

from config.scopes import PatternError, Scope, parse_pattern, parse_scope
from config.tokens import TokenFileError, describe_tokens, parse_tokens

# (pattern, entry name, may write)
TABLE = [
    # One repository.
    ("quay.io/team-a/app", "quay.io/team-a/app", True),
    ("quay.io/team-a/app", "quay.io/team-a/app2", False),
    ("quay.io/team-a/app", "quay.io/team-a/app/sub", False),
    ("quay.io/team-a/app", "quay.io/team-a", False),
    # Below a path: segment boundaries, never a string prefix.
    ("quay.io/team-a/*", "quay.io/team-a/app", True),
    ("quay.io/team-a/*", "quay.io/team-a/deep/er/app", True),
    ("quay.io/team-a/*", "quay.io/team-a-evil/app", False),
    ("quay.io/team-a/*", "quay.io/team-aa/app", False),
    ("quay.io/team-a/*", "quay.io/team-a", False),
    ("quay.io/team-a/*", "quay.io/team", False),
    ("quay.io/team-a/*", "quay.io.evil.com/team-a/app", False),
    ("quay.io/team-a/*", "docker.io/team-a/app", False),
    ("quay.io/team-a/*", "team-a/app", False),
    ("quay.io/team-a/app/*", "quay.io/team-a/app", False),
    ("quay.io/team-a/app/*", "quay.io/team-a/app/x", True),
    # Docker Hub normalization, on both sides.
    ("team/app", "docker.io/team/app", True),
    ("team/app", "team/app", True),
    ("team/app", "index.docker.io/team/app", True),
    ("docker.io/team/app", "team/app", True),
    ("x", "x", True),
    ("x", "docker.io/library/x", True),
    ("x", "library/x", True),
    ("docker.io/library/x", "x", True),
    ("team-a/*", "team-a/app", True),
    ("team-a/*", "docker.io/team-a/app", True),
    ("team-a/*", "team-a-evil/app", False),
    ("team-a/*", "quay.io/team-a/app", False),
    ("team-a/*", "app", False),
    ("library/*", "nginx", True),
    ("library/*", "docker.io/library/nginx", True),
    ("library/*", "team/nginx", False),
    ("docker.io/*", "nginx", True),
    ("docker.io/*", "team/app/deep", True),
    ("docker.io/*", "quay.io/team/app", False),
    ("docker.io/*", "docker.io.evil.com/app", False),
    # Whole registries, ports included.
    ("registry.example.com/*", "registry.example.com/app", True),
    ("registry.example.com/*", "registry.example.com/a/b/c", True),
    ("registry.example.com/*", "registry.example.com.evil.org/app", False),
    ("registry.example.com/*", "registry.example.com:5000/app", False),
    ("registry.example.com/*", "evil.com/registry.example.com/app", False),
    ("localhost:5000/*", "localhost:5000/app", True),
    ("localhost:5000/*", "localhost:5000/team/app", True),
    ("localhost:5000/*", "localhost:50000/app", False),
    ("localhost:5000/*", "localhost/app", False),
    ("localhost:5000/*", "localhost:5001/app", False),
    # The registry host compares case-insensitively; the path does not.
    ("quay.io/team-a/*", "Quay.IO/team-a/app", True),
    ("Quay.IO/team-a/*", "quay.io/team-a/app", True),
    ("LOCALHOST:5000/*", "localhost:5000/app", True),
    ("quay.io/team-a/*", "quay.io/Team-A/app", False),  # not a repository name at all
    # Names that are not repository names: no pattern matches them.
    ("docker.io/*", "nginx:1.25", False),
    ("quay.io/team-a/*", "quay.io/team-a/app:1", False),
    ("quay.io/team-a/*", f"quay.io/team-a/app@sha256:{'a' * 64}", False),
    ("docker.io/*", "not a name", False),
    ("docker.io/*", "", False),
    ("docker.io/*", "UPPER", False),
]


@pytest.mark.parametrize(("pattern", "name", "allowed"), TABLE)
def test_pattern_against_name(pattern: str, name: str, allowed: bool) -> None:
    assert parse_scope([pattern]).allows(name) is allowed


def test_docker_io_without_a_namespace_is_the_library() -> None:
    # The row above relies on it: distribution reads docker.io/x as library/x.
    assert parse_scope(["x"]).allows("docker.io/x")


def test_any_pattern_of_several_allows() -> None:
    scope = parse_scope(["quay.io/team-a/*", "registry.example.com/tools/ci"])
    assert scope.allows("quay.io/team-a/app")
    assert scope.allows("registry.example.com/tools/ci")
    assert not scope.allows("registry.example.com/tools/other")


def test_an_empty_scope_allows_nothing() -> None:
    scope = parse_scope([])
    assert scope == Scope(())
    for name in ("nginx", "quay.io/team-a/app", "anything"):
        assert not scope.allows(name)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("*", "would allow every repository"),
        ("/*", "names no registry or repository"),
        ("quay.io/*/app", "'*' may only end a pattern"),
        ("quay.io/team-*", "'*' may only end a pattern"),
        ("quay.io/team-a/**", "'*' may only end a pattern"),
        ("*/app", "'*' may only end a pattern"),
        ("MyOrg/*", "not a valid lower-case repository name"),
        ("quay.io/Team-A/*", "not a valid lower-case repository name"),
        ("myorg/App", "not a valid lower-case repository name"),
        ("quay.io/team-a/app:1", "not a valid lower-case repository name"),
        (f"quay.io/team-a/app@sha256:{'a' * 64}", "not a valid lower-case repository name"),
        ("quay.io/team-a:1/*", "not a valid lower-case repository name"),
        ("quay.io//*", "not a valid lower-case repository name"),
        ("quay.io/team-a/", "not a valid lower-case repository name"),
        ("team a/*", "not a valid lower-case repository name"),
        ("localhost:5000", "whole registry is written 'localhost:5000/*'"),
        ("quay.io", "whole registry is written 'quay.io/*'"),
        ("", "a pattern is empty"),
        (5, "a pattern must be a string"),
        (None, "a pattern must be a string"),
    ],
)
def test_invalid_patterns_are_refused(pattern: object, problem: str) -> None:
    with pytest.raises(PatternError) as caught:
        parse_pattern(pattern)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("pattern", "stem", "below"),
    [
        ("team/app", "docker.io/team/app", False),
        ("x", "docker.io/library/x", False),
        ("team-a/*", "docker.io/team-a", True),
        ("docker.io/*", "docker.io", True),
        ("index.docker.io/*", "docker.io", True),
        ("localhost:5000/*", "localhost:5000", True),
        ("Quay.IO/team-a/*", "quay.io/team-a", True),
    ],
)
def test_patterns_are_normalized_like_image_names(pattern: str, stem: str, below: bool) -> None:
    parsed = parse_pattern(pattern)
    assert (parsed.stem, parsed.below, parsed.text) == (stem, below, pattern)


# -- in the tokens file ----------------------------------------------------------------


def test_scopes_parse_from_the_tokens_file() -> None:
    text = tokens_yaml(
        entry("team-a-ci", "secret-a", scopes=["quay.io/team-a/*"]),
        entry("frozen", "secret-f", scopes=[]),
        entry("admin", "secret-x"),
    )
    a, frozen, admin = parse_tokens(text.encode(), "tokens.yaml")
    assert a.scope is not None and a.scope.describe() == ["quay.io/team-a/*"]
    assert frozen.scope == Scope(())
    assert admin.scope is None  # no key: every repository, as before scopes


@pytest.mark.parametrize(
    ("scopes", "problem"),
    [
        (["quay.io/team-a/*", "MyOrg/*"], "pattern 2: 'MyOrg/*' is not a valid lower-case"),
        (["*"], "pattern 1: '*' would allow every repository"),
        ("quay.io/team-a/*", "'scopes': must be a list of repository patterns"),
        (None, "'scopes': must be a list of repository patterns"),
        ([["nested"]], "pattern 1: a pattern must be a string"),
    ],
)
def test_a_bad_scope_names_its_entry(scopes: object, problem: str) -> None:
    text = tokens_yaml(entry("fine", "secret-1"), entry("team-b-ci", "secret-2", scopes=scopes))
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(text.encode(), "/etc/imagelist/tokens.yaml")
    message = str(caught.value)
    assert message.startswith("tokens file /etc/imagelist/tokens.yaml: entry 2 ('team-b-ci'): ")
    assert problem in message
    assert "secret" not in message


# -- the README says the same -------------------------------------------------------------

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SECTION = README.split("### Scoped tokens", 1)[1].split("\n### ", 1)[0]


def readme_table() -> list[tuple[str, list[str], list[str]]]:
    rows = []
    for line in SECTION.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        pattern, may, may_not = (re.findall(r"`([^`]+)`", c) for c in cells)
        rows.append((pattern[0], may, may_not))
    return rows


def test_the_readme_pattern_table_is_what_the_code_does() -> None:
    rows = readme_table()
    assert len(rows) >= 6
    for pattern, may, may_not in rows:
        scope = parse_scope([pattern])
        assert [n for n in may if not scope.allows(n)] == [], pattern
        assert [n for n in may_not if scope.allows(n)] == [], pattern


def test_the_readme_show_tokens_example_is_the_real_output() -> None:
    example = re.search(r"```yaml\n(.*?)```", SECTION, re.S)
    command = r"```console\n\$ imagelist --show-tokens --tokens-file (\S+)\n(.*?)```"
    shown = re.search(command, SECTION, re.S)
    assert example is not None and shown is not None
    path, expected = shown.group(1), shown.group(2)
    entries = parse_tokens(example.group(1).encode(), path)
    assert "\n".join(describe_tokens(entries)) == "\n".join(expected.splitlines()[1:])
    first = expected.splitlines()[0]
    assert first.startswith(f"tokens file {path}: {len(entries)} token(s)")
