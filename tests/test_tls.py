"""TLS with --certfile/--keyfile."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path

import pytest

from daemon import Daemon
from helpers import make_cert


def test_tls_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    with Daemon(
        "--database-url", f"sqlite:///{tmp_path}/db", "--certfile", str(cert), "--keyfile", str(key)
    ) as d:
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", d.port, context=context, timeout=10)
        conn.request("GET", "/health/ping")
        resp = conn.getresponse()
        assert resp.status == 200 and b'"ok"' in resp.read()
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        conn.close()
        # Plain HTTP on the TLS port gets nowhere.
        with pytest.raises((http.client.HTTPException, OSError)):
            d.request("GET", "/health/ping", timeout=5)


def test_tls_context_requires_tls12_or_newer(tmp_path: Path) -> None:
    from config.tls import ReloadableTls

    cert, key = make_cert(tmp_path)
    tls = ReloadableTls(str(cert), str(key))
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    tls.reload()
    assert tls._current.minimum_version == ssl.TLSVersion.TLSv1_2


def test_unreadable_key_refuses_to_start(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path)
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    d = Daemon(
        "--database-url",
        f"sqlite:///{tmp_path}/db",
        "--certfile",
        str(cert),
        "--keyfile",
        str(bad_key),
    )
    d.start(wait=False)
    assert d.wait() == 1
    assert any(e["event"] == "tls_setup_failed" for e in d.logs())
