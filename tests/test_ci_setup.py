""".ci/setup on a machine where it cannot install: it says exactly what
to run as root, the whole command, not just its first step."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the script as another user (needs root)")
def test_without_root_or_sudo_the_whole_install_command_is_printed() -> None:
    # Not pytest's tmp_path: its parents are private to root.
    with tempfile.TemporaryDirectory() as tmp:
        run_as_nobody(Path(tmp))


def run_as_nobody(tmp_path: Path) -> None:
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "setup", tmp_path / ".ci" / "setup")
    # A PATH with a shell and nothing else: no sudo, no python3, no tools.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "id", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (bindir / tool).symlink_to(found)
    os.chmod(tmp_path, 0o755)  # noqa: S103 - the unprivileged user must enter it
    done = subprocess.run(
        [
            "runuser",
            "-u",
            "nobody",
            "--",
            "/usr/bin/env",
            "-i",
            f"PATH={bindir}",
            str(bindir / "bash"),
            str(tmp_path / ".ci" / "setup"),
            "test",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    command = next(line.strip() for line in done.stderr.splitlines() if "apt-get install" in line)
    assert command.startswith("apt-get update && apt-get install -y --no-install-recommends ")
    packages = set(command.split("--no-install-recommends ")[1].split())
    assert {"python3-venv", "openssl", "prometheus", "systemd", "procps", "wrk"} <= packages
    assert "not root and no sudo" in done.stderr
    assert not (tmp_path / ".venv").exists()
