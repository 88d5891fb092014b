"""Write tokens files the ways real tools do: in place, by rename, as a ConfigMap."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import yaml


def entry(name: str, token: str | None = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name}
    if token is not None:
        item["token"] = token
    item.update(extra)
    return item


def tokens_yaml(*entries: dict[str, Any]) -> str:
    return yaml.safe_dump({"tokens": list(entries)}, sort_keys=False)


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_in_place(path: Path, text: str) -> None:
    """Truncate and rewrite the same inode, as `>` in a shell or a simple editor."""
    before = path.stat().st_ino
    with open(path, "w") as f:
        f.write(text)
    assert path.stat().st_ino == before


def replace_by_rename(path: Path, text: str) -> None:
    """Write a temporary file and rename it over the old one (vim, Ansible, ...)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    before = path.stat().st_ino if path.exists() else None
    os.replace(tmp, path)
    assert path.stat().st_ino != before


class ConfigMapMount:
    """A directory laid out like a Kubernetes ConfigMap/Secret volume.

    `name -> ..data/name`, `..data -> ..<timestamp>`; an update writes a new
    timestamped directory, points `..data_tmp` at it, renames `..data_tmp`
    over `..data` and removes the old directory (kubelet's AtomicWriter).
    """

    _serial = itertools.count()

    def __init__(self, directory: Path, name: str, text: str) -> None:
        self.directory = directory
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self.current = self._payload(text)
        os.symlink(self.current, directory / "..data")
        os.symlink(f"..data/{name}", directory / name)

    @property
    def path(self) -> Path:
        return self.directory / self.name

    def _payload(self, text: str) -> str:
        stamp = f"..2024_01_01_00_00_{next(self._serial):02d}.{os.getpid()}"
        (self.directory / stamp).mkdir()
        (self.directory / stamp / self.name).write_text(text)
        return stamp

    def update(self, text: str) -> None:
        old, self.current = self.current, self._payload(text)
        os.symlink(self.current, self.directory / "..data_tmp")
        os.replace(self.directory / "..data_tmp", self.directory / "..data")
        (self.directory / old / self.name).unlink()
        (self.directory / old).rmdir()
