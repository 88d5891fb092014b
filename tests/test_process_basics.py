"""Process-level checks of the daemon on the embedded default store."""

from __future__ import annotations

from pathlib import Path

from daemon import Daemon


def test_zero_flags_starts_on_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    with Daemon(env={"XDG_DATA_HOME": str(tmp_path), "STATE_DIRECTORY": ""}) as d:
        status, body, _ = d.request("GET", "/health/ping")
        assert status == 200
        assert body["storage"] == "sqlite"
    assert (tmp_path / "imagelist" / "imagelist.db").exists()


def test_every_log_line_is_json(tmp_path: Path) -> None:
    with Daemon("--database-url", f"sqlite:///{tmp_path}/db") as d:
        d.request("PUT", "/images", {"id": "a", "name": "n"}, headers={"X-Request-ID": "req-123"})
        d.request("GET", "/nope")
    entries = d.logs()  # raises on any non-JSON line
    requests = [e for e in entries if e.get("event") == "request"]
    put = next(e for e in requests if e["method"] == "PUT")
    assert put["request_id"] == "req-123"
    assert put["route"] == "/images" and put["status"] == 200
    assert {"timestamp", "level", "duration_ms", "remote"} <= put.keys()
