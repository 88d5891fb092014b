"""Smaller hostile-input cases: Unicode line breaks in log lines, tokens
that could never authenticate, and auth before path decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
from k8s import admission_review, pod_spec
from tokenfiles import bearer, entry, tokens_yaml

from config.tokens import TokenFileError, parse_tokens

from daemon import Daemon


def test_unicode_line_breaks_never_split_a_log_line(tmp_path: Path) -> None:
    with Daemon("--database-url", f"sqlite:///{tmp_path}/db") as d:
        review = admission_review("Pod", pod_spec(["nginx:nope"]))
        review["request"]["namespace"] = "team\u2028a\x85b\u2029c"
        assert d.request("POST", "/admission/validate", review)[0] == 200
    denied = [e for e in d.logs() if e["event"] == "admission_denied"]
    assert denied[0]["namespace"] == "team\u2028a\x85b\u2029c"
    for line in d.output:
        assert len(line.splitlines()) == 1, line
        assert not {"\u2028", "\u2029", "\x85"} & set(line)


def test_an_unauthenticated_delete_is_401_whatever_its_path(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(tokens_yaml(entry("ci", "Ascii-T0ken")))
    with Daemon("--database-url", f"sqlite:///{tmp_path}/db", "--tokens-file", str(tokens)) as d:
        status, _, headers = d.request("DELETE", "/images/%ff")
        assert status == 401
        assert {k.lower(): v for k, v in headers.items()}["www-authenticate"].startswith("Bearer")
        status, body, _ = d.request("DELETE", "/images/%ff", headers=bearer("Ascii-T0ken"))
        assert status == 400 and body["error"]
        assert d.request("GET", "/images/%ff")[0] == 400


@pytest.mark.parametrize("token", ["t\u00f6ken-secret", "\u00e9" * 8, "tok\u2713"])
def test_a_token_with_non_ascii_characters_is_refused_at_load(token: str) -> None:
    data = tokens_yaml(entry("ci", token)).encode()
    with pytest.raises(TokenFileError, match="must be ASCII"):
        parse_tokens(data, "tokens.yaml")
