"""Auth in the real daemon process: start-up refusals, live reloads, SIGHUP, log secrecy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tokenfiles import (
    ConfigMapMount,
    bearer,
    entry,
    replace_by_rename,
    sha256_hex,
    tokens_yaml,
    write_in_place,
)

from daemon import ROOT, Daemon
from helpers import wait_for

ALICE, BOB, CAROL = "alice-Pr0cess-Secret", "bob-Pr0cess-Secret", "carol-Pr0cess-Secret"
UNKNOWN = "never-Configured-Secret"
FIRST = tokens_yaml(entry("alice", ALICE), entry("bob", BOB, is_disabled=True))


def daemon(tmp_path: Path, tokens: Path | None) -> Daemon:
    args = ["--database-url", f"sqlite:///{tmp_path}/imagelist.db"]
    if tokens is not None:
        args += ["--tokens-file", str(tokens)]
    return Daemon(*args)


def write_status(d: Daemon, token: str | None) -> int:
    headers = bearer(token) if token is not None else {}
    return d.request("DELETE", "/images/probe", headers=headers)[0]


def events(d: Daemon, name: str) -> list[dict]:
    return [e for e in d.logs() if e.get("event") == name]


# -- start-up --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tokens:\n  - name: a\n    token: 'unclosed\n", "not valid YAML"),
        ("tokens:\n  - name: a\n", "entry 1 ('a'): needs exactly one of 'token' or 'token_sha256'"),
        ("users: []\n", "missing key 'tokens'"),
        ("tokens: [{token: abc}]\n", "entry 1: missing key 'name'"),
        (tokens_yaml(entry("a", "x"), entry("a", "y")), "duplicate name 'a'"),
        (tokens_yaml(entry("a", "x"), entry("b", "x")), "entry 2 ('b'): same token as 'a'"),
        (tokens_yaml(entry("a", "")), "entry 1 ('a'): 'token' is empty"),
    ],
)
def test_an_invalid_file_refuses_to_start(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    d = daemon(tmp_path, path).start(wait=False)
    assert d.wait() != 0
    (refusal,) = events(d, "tokens_file_invalid")
    assert refusal["level"] == "error"
    assert refusal["error"].startswith(f"tokens file {path}: ")
    assert problem in refusal["error"]
    assert not events(d, "listening")
    assert not (tmp_path / "imagelist.db").exists()  # refused before touching storage


def test_a_missing_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    d = daemon(tmp_path, path).start(wait=False)
    assert d.wait() != 0
    assert f"--tokens-file {path}: no such file" in "\n".join(d.output)


def test_without_a_tokens_file_a_warning_says_writes_are_open(tmp_path: Path) -> None:
    with daemon(tmp_path, None) as d:
        (warning,) = events(d, "auth_disabled")
        assert warning["level"] == "warning"
        assert "unauthenticated" in warning["reason"]
        assert write_status(d, None) == 204


# -- run time --------------------------------------------------------------------------


def test_reloads_in_the_running_daemon(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "tokens.yaml"
    path.parent.mkdir()
    path.write_text(FIRST)
    with daemon(tmp_path, path) as d:
        (loaded,) = events(d, "tokens_loaded")
        assert loaded["names"] == ["alice"] and loaded["tokens"] == 2
        assert write_status(d, ALICE) == 204
        assert write_status(d, BOB) == 401
        assert d.request("GET", "/images")[0] == 200

        replace_by_rename(path, tokens_yaml(entry("carol", token_sha256=sha256_hex(CAROL))))
        wait_for(lambda: write_status(d, CAROL), 204)
        assert write_status(d, ALICE) == 401

        write_in_place(path, FIRST)
        wait_for(lambda: write_status(d, ALICE), 204)
        assert write_status(d, CAROL) == 401

        write_in_place(path, "tokens: [{name: x}]\n")  # invalid: the last good set stays
        wait_for(lambda: len(events(d, "tokens_reload_failed")), 1)
        assert write_status(d, ALICE) == 204

        path.unlink()  # fail closed
        wait_for(lambda: write_status(d, ALICE), 401)
        assert events(d, "tokens_file_missing")
        path.write_text(tokens_yaml(entry("bob", BOB)))
        wait_for(lambda: write_status(d, BOB), 204)
        assert write_status(d, ALICE) == 401

        metrics = d.request("GET", "/metrics")[1].decode()
        assert "imagelist_token_reload_errors_total 2.0" in metrics  # invalid + missing
        assert "imagelist_token_reloads_total 4.0" in metrics  # start-up + 3 changes


def test_a_configmap_update_applies(tmp_path: Path) -> None:
    mount = ConfigMapMount(tmp_path / "tokens-secret", "tokens.yaml", FIRST)
    with daemon(tmp_path, mount.path) as d:
        assert write_status(d, ALICE) == 204
        mount.update(tokens_yaml(entry("carol", CAROL)))
        wait_for(lambda: write_status(d, CAROL), 204)
        assert write_status(d, ALICE) == 401
        mount.update(FIRST)
        wait_for(lambda: write_status(d, ALICE), 204)


def test_sighup_reloads(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(FIRST)
    with daemon(tmp_path, path) as d:
        d.send(signal.SIGHUP)
        triggers = lambda: [e["trigger"] for e in events(d, "tokens_loaded")]  # noqa: E731
        wait_for(triggers, ["startup", "sighup"])
        write_in_place(path, tokens_yaml(entry("carol", CAROL)))
        d.send(signal.SIGHUP)
        wait_for(lambda: write_status(d, CAROL), 204)
        assert write_status(d, ALICE) == 401
        assert events(d, "tokens_loaded")[-1]["names"] == ["carol"]
        assert d.proc is not None and d.proc.poll() is None  # SIGHUP does not stop it


def test_tokens_never_reach_the_logs(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(FIRST)
    with daemon(tmp_path, path) as d:
        for token in (ALICE, BOB, UNKNOWN):
            d.request("PUT", "/images", {"id": "a", "name": "n"}, headers=bearer(token))
            write_status(d, token)
        d.request("PUT", "/images", {"id": "a", "name": "n"}, headers={"Authorization": ALICE})
        # Invalid files whose offending line holds a token.
        write_in_place(path, f"tokens:\n  - name: carol\n    token: '{CAROL}\n")
        wait_for(lambda: len(events(d, "tokens_reload_failed")), 1)
        write_in_place(path, tokens_yaml(entry("a", CAROL), entry("b", CAROL)))
        wait_for(lambda: len(events(d, "tokens_reload_failed")), 2)
        d.send(signal.SIGHUP)
        wait_for(lambda: len(events(d, "tokens_reload_failed")), 3)
        metrics = d.request("GET", "/metrics")[1].decode()

    output = "\n".join(d.output)
    for secret in (ALICE, BOB, CAROL, UNKNOWN):
        assert secret not in output
        assert secret not in metrics

    # What the admin does see: who wrote, and why others were turned away.
    writes = [e for e in events(d, "request") if e["method"] in ("PUT", "DELETE")]
    assert [e["token"] for e in writes if e["status"] < 400] == ["alice", "alice"]
    assert all("token" not in e for e in writes if e["status"] == 401)
    rejected = events(d, "auth_rejected")
    assert {(e["reason"], e.get("token")) for e in rejected} == {
        ("disabled", "bob"),
        ("unknown", None),
        ("malformed", None),
    }
    failed = events(d, "tokens_reload_failed")
    assert "not valid YAML" in failed[0]["error"]
    assert "same token as 'a'" in failed[1]["error"]


# -- scoped tokens -----------------------------------------------------------------------

SCOPED = tokens_yaml(
    entry("alice", ALICE),
    entry("team-a-ci", CAROL, scopes=["quay.io/team-a/*", "localhost:5000/*"]),
    entry("frozen", UNKNOWN + "-frozen", scopes=[]),
    entry("bob", BOB, is_disabled=True, scopes=["team/app"]),
)


def show_tokens(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGELIST_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "imagelist.py"), "--show-tokens", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=str(ROOT),
    )


def test_show_tokens_lists_names_states_and_scopes_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(SCOPED)
    done = show_tokens("--tokens-file", str(path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"tokens file {path}: 4 token(s)")
    assert [line.split(None, 2) for line in lines[1:]] == [
        ["alice", "enabled", "all repositories"],
        ["team-a-ci", "enabled", "quay.io/team-a/*, localhost:5000/*"],
        ["frozen", "enabled", "no repository (scopes: [])"],
        ["bob", "disabled", "team/app"],
    ]
    for secret in (ALICE, BOB, CAROL, UNKNOWN, sha256_hex(ALICE)):
        assert secret not in done.stdout + done.stderr
    assert not (tmp_path / "imagelist.db").exists()  # no storage opened


def test_show_tokens_fails_clearly_on_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(tokens_yaml(entry("alice", ALICE), entry("ci", CAROL, scopes=["MyOrg/*"])))
    done = show_tokens("--tokens-file", str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"imagelist: tokens file {path}: entry 2 ('ci'): 'scopes': pattern 1: "
        "'MyOrg/*' is not a valid lower-case repository name"
    )
    for secret in (ALICE, CAROL):
        assert secret not in done.stderr

    missing = show_tokens()
    assert missing.returncode == 2
    assert "--show-tokens needs --tokens-file" in missing.stderr


@pytest.mark.parametrize(
    ("scopes", "problem"),
    [
        (["quay.io/team-a-*"], "pattern 1: 'quay.io/team-a-*': '*' may only end a pattern"),
        (["ok/app", "*"], "pattern 2: '*' would allow every repository"),
        (["quay.io/team-a/app:1"], "'quay.io/team-a/app:1' is not a valid lower-case"),
    ],
)
def test_a_bad_pattern_refuses_to_start(tmp_path: Path, scopes: list[str], problem: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(tokens_yaml(entry("alice", ALICE), entry("team-a-ci", CAROL, scopes=scopes)))
    d = daemon(tmp_path, path).start(wait=False)
    assert d.wait() != 0
    (refusal,) = events(d, "tokens_file_invalid")
    assert refusal["error"].startswith(f"tokens file {path}: entry 2 ('team-a-ci'): 'scopes': ")
    assert problem in refusal["error"]
    assert not events(d, "listening")
    assert CAROL not in "\n".join(d.output)


def test_a_forbidden_write_is_one_json_line_and_a_counter(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(SCOPED)
    with daemon(tmp_path, path) as d:
        theirs = {"id": "theirs", "name": "quay.io/team-b/app", "tags": ["v1"]}
        assert d.request("PUT", "/images", theirs, headers=bearer(ALICE))[0] == 200
        status, body = d.request(
            "DELETE", "/images/theirs", headers={**bearer(CAROL), "X-Request-ID": "req-9"}
        )[:2]
        assert status == 403
        assert body["details"] == {
            "token": "team-a-ci",
            "repository": "quay.io/team-b/app",
        }
        metrics = d.request("GET", "/metrics")[1].decode()
    assert 'imagelist_token_forbidden_writes_total{token="team-a-ci"} 1.0' in metrics
    (loaded,) = events(d, "tokens_loaded")
    assert loaded["unscoped"] == ["alice"]  # enabled and writing every repository
    (line,) = events(d, "auth_forbidden")
    assert (line["token"], line["repository"], line["request_id"]) == (
        "team-a-ci",
        "quay.io/team-b/app",
        "req-9",
    )
    assert line["level"] == "warning"
    (request,) = [e for e in events(d, "request") if e["method"] == "DELETE"]
    assert (request["status"], request["token"]) == (403, "team-a-ci")
    for secret in (ALICE, CAROL):
        assert secret not in "\n".join(d.output)
