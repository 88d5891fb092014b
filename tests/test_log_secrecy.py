"""No log line, from any logger, holds a credential: bearer tokens, any
Authorization value, the database password, whatever a client sends."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from tokenfiles import entry, tokens_yaml

from config.redact import Redactor

from daemon import Daemon
from helpers import raw_exchange
from pgcluster import create_database

TOKEN = "Tok3n-Secret-" + uuid.uuid4().hex[:8]
DB_PASSWORD = "Db-Pa55word-" + uuid.uuid4().hex[:8]
# Every control character, and DEL: Tornado refuses a header value holding
# one with a bare 400 and logs the value (CR, NUL and VT were seen).
CONTROLS = [chr(c) for c in range(32) if chr(c) not in "\n"] + ["\x7f"]


def raw_request(port: int, header_value: bytes) -> bytes:
    return raw_exchange(
        port,
        b"DELETE /images/x HTTP/1.1\r\nHost: x\r\nAuthorization: " + header_value + b"\r\n\r\n",
    )


def test_credentials_with_control_characters_never_reach_a_log_line(
    tmp_path: Path, pg_server_url: str
) -> None:
    url = create_database(pg_server_url, f"imagelist_secrecy_{uuid.uuid4().hex[:8]}")
    # The throwaway cluster trusts local connections: any password works.
    with_password = url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    assert DB_PASSWORD in with_password
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(tokens_yaml(entry("ci", TOKEN)))
    with Daemon("--database-url", with_password, "--tokens-file", str(tokens)) as d:
        answers = set()
        for control in CONTROLS:
            for value in (
                f"Bearer {TOKEN}{control}",
                f"Bearer {control}{TOKEN}",
                f"{TOKEN}{control}",
                f"Bearer {DB_PASSWORD}{control}",
                f"{DB_PASSWORD}{control}",
            ):
                answer = raw_request(d.port, value.encode("latin-1"))
                answers.add(answer.split(b"\r\n", 1)[0])
        # A client may send the password anywhere, e.g. in a path that is logged.
        assert d.request("GET", "/images/" + DB_PASSWORD)[0] == 404
        # The daemon is up and the token works.
        assert (
            d.request("DELETE", "/images/x", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 204
        )
    assert b"HTTP/1.1 400 Bad Request" in answers  # Tornado refused some, and logged them
    output = "\n".join(d.output)
    assert "Invalid header value" in output
    assert TOKEN not in output
    assert DB_PASSWORD not in output


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Invalid header value 'Bearer abc\\r'", "Invalid header value [redacted]"),
        ("Authorization: Bearer abc", "Authorization: [redacted]"),
        ("{'Authorization': 'Basic dXNlcjpw'}", "{'Authorization': '[redacted]'}"),
        ("sent bearer\\x0babc", "sent bearer [redacted]"),
        ("host=a password='p w\\'x' dbname=d", "host=a password=[redacted] dbname=d"),
        ("host=a password=pw dbname=d", "host=a password=[redacted] dbname=d"),
        ("mysql://u:p@h/db", "mysql://u:[redacted]@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("the literal s3cret here", "the literal [redacted] here"),
    ],
)
def test_redactor_patterns(text: str, kept: str) -> None:
    assert Redactor(["s3cret"]).text(text) == kept
