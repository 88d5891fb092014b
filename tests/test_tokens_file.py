"""The tokens file model: validation messages and token checks (table-driven)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tokenfiles import entry, sha256_hex, tokens_yaml

from config.metrics import Metrics
from config.tokens import TokenFileError, TokenRegistry, parse_tokens, token_digest

SECRET = "LF8zuwb2dJMjZLphiSUQHTeA"
SOURCE = "/etc/imagelist/tokens.yaml"


def test_the_documented_example_parses() -> None:
    text = f"""
tokens:
  - name: ci-pipeline          # who; appears in logs, never the secret
    token: '{SECRET}'
    is_disabled: false
  - name: old-job
    token: 'retired-token'
    is_disabled: true
  - name: deployer
    token_sha256: {sha256_hex("deploy-secret")}
"""
    entries = parse_tokens(text.encode(), SOURCE)
    assert [(e.name, e.disabled) for e in entries] == [
        ("ci-pipeline", False),
        ("old-job", True),
        ("deployer", False),
    ]


def test_the_readme_example_parses_and_its_hash_is_right() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Authentication", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    entries = parse_tokens(example.group(1).encode(), "README.md")
    assert [e.name for e in entries] == ["ci-pipeline", "deployer", "old-job"]
    assert entries[1].digest == token_digest(b"deploy-secret")
    assert entries[2].disabled


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tokens: [name: a", "not valid YAML"),
        ("", "empty; expected a mapping with a 'tokens' list"),
        ("- a\n- b\n", "expected a mapping with a 'tokens' list at the top"),
        ("users: []\n", "missing key 'tokens'"),
        ("tokens: []\nextra: 1\n", "unknown top-level key(s) extra"),
        ("tokens: {name: a}\n", "'tokens' must be a list"),
        ("tokens: [just-a-string]\n", "entry 1: expected a mapping"),
        ("tokens: [{token: abc}]\n", "entry 1: missing key 'name'"),
        ("tokens: [{name: '', token: abc}]\n", "entry 1: 'name' must be a non-empty string"),
        # The audit trail's actor for writes without a token.
        ("tokens: [{name: anonymous, token: abc}]\n", "entry 1: the name 'anonymous' is reserved"),
        # The audit trail's actor: it reaches PostgreSQL (which refuses a NUL
        # in any string) and the events' actor filter (at most 255).
        *[
            (f'tokens: [{{name: "{name}", token: abc}}]\n', "entry 1: 'name' must be at most 255")
            for name in ("ci\\0x", "ci\\tx", "ci\\x1bx", "ci\\ud800x", "n" * 256)
        ],
        ("tokens: [{name: a}]\n", "entry 1 ('a'): needs exactly one of 'token' or 'token_sha256'"),
        (
            f"tokens: [{{name: a, token: x, token_sha256: {sha256_hex('x')}}}]\n",
            "needs exactly one of 'token' or 'token_sha256'",
        ),
        ("tokens: [{name: a, token: ''}]\n", "entry 1 ('a'): 'token' is empty"),
        ("tokens: [{name: a, token: 12345}]\n", "'token' must be a string; quote it"),
        ("tokens: [{name: a, token: 'has space'}]\n", "'token' contains whitespace"),
        ("tokens: [{name: a, token_sha256: abc}]\n", "'token_sha256' must be 64 hex digits"),
        ("tokens: [{name: a, token: x, is_disabled: 'no'}]\n", "'is_disabled' must be true or"),
        ("tokens: [{name: a, token: x, is_disable: true}]\n", "unknown key(s) is_disable"),
        (
            "tokens: [{name: a, token: x}, {name: b, token: y}, {name: a, token: z}]\n",
            "entry 3: duplicate name 'a' (also entry 1)",
        ),
        (
            "tokens: [{name: a, token: same}, {name: b, token: same}]\n",
            "entry 2 ('b'): same token as 'a'",
        ),
        (
            tokens_yaml(entry("a", "same"), entry("b", token_sha256=sha256_hex("same"))),
            "entry 2 ('b'): same token as 'a'",
        ),
    ],
)
def test_invalid_files_are_refused_with_a_message(text: str, problem: str) -> None:
    with pytest.raises(TokenFileError) as info:
        parse_tokens(text.encode(), SOURCE)
    message = str(info.value)
    assert message.startswith(f"tokens file {SOURCE}: ")
    assert problem in message


@pytest.mark.parametrize(
    "text",
    [
        f"tokens:\n  - name: a\n    token: '{SECRET}\n",  # unclosed quote on the secret's line
        f"tokens:\n  - name: a\n    token: {SECRET}: x\n",
        f"tokens:\n  - name: a\n    token: [{SECRET}\n",
        f"tokens: [{{name: a, token: {SECRET}}}, {{name: b, token: {SECRET}}}]\n",
        f"tokens: [{{name: a, token: '{SECRET} x'}}]\n",
    ],
)
def test_error_messages_never_quote_the_file(text: str) -> None:
    # PyYAML's own messages print the offending line, which may hold a token.
    with pytest.raises(TokenFileError) as info:
        parse_tokens(text.encode(), SOURCE)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


def test_yaml_errors_give_the_position() -> None:
    with pytest.raises(TokenFileError, match=r"quoted scalar \(line 3, column \d+\)"):
        parse_tokens(f"tokens:\n  - name: a\n    token: '{SECRET}\n".encode(), SOURCE)


def test_an_empty_list_is_valid_and_admits_nobody(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens: []\n")
    registry = TokenRegistry(str(path), Metrics())
    registry.load()
    assert registry.entries == ()
    assert not registry.check(b"anything").ok


@pytest.mark.parametrize(
    ("presented", "ok", "name", "reason"),
    [
        (SECRET, True, "ci", "ok"),
        ("hashed-secret", True, "hashed", "ok"),
        ("retired", False, "old", "disabled"),
        ("nope", False, None, "unknown"),
        (SECRET[:-1], False, None, "unknown"),
        (SECRET + "x", False, None, "unknown"),
        (SECRET.lower(), False, None, "unknown"),
        # The digest of a token is not the token.
        (sha256_hex("hashed-secret"), False, None, "unknown"),
    ],
)
def test_check(tmp_path: Path, presented: str, ok: bool, name: str | None, reason: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        tokens_yaml(
            entry("ci", SECRET),
            entry("hashed", token_sha256=sha256_hex("hashed-secret")),
            entry("old", "retired", is_disabled=True),
        )
    )
    registry = TokenRegistry(str(path), Metrics())
    registry.load()
    verdict = registry.check(presented.encode())
    assert (verdict.ok, verdict.name, verdict.reason) == (ok, name, reason)


def test_load_refuses_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(TokenFileError, match=f"tokens file {path}: No such file"):
        TokenRegistry(str(path), Metrics()).load()
