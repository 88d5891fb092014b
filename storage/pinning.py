"""Which digest pins a reference allowed by tag: one pure function.

A tag is a moving pointer; an entry's id can name the exact content CI
recorded. Only a repo digest (`registry/repo@sha256:<hex>`, what
`docker inspect`'s RepoDigests, `crane digest --full-ref` and registries
print) names the pushed manifest unambiguously: a bare 64-hex id or a
`sha256:<hex>` id may be an image (config) id, and pulling by it fails. So
only repo-digest ids pin, and only one of the same repository (a digest from
another repository names content that repository may not have).

Every decision path (a database query, an in-memory replica) hands this
function the entries that allow a reference and gets the same answer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Protocol

from storage.reference import InvalidReference, Reference, parse_reference


class PinCandidate(Protocol):
    """What pinning reads of an entry (storage.model.Entry has it)."""

    @property
    def id(self) -> str: ...

    @property
    def updated_at(self) -> dt.datetime: ...


def repo_digest(entry_id: str) -> Reference | None:
    """The (normalized repository, digest) an id names when it is a repo
    digest, else None (bare hex, `sha256:<hex>`, short ids, junk)."""
    if "@" not in entry_id:
        return None
    try:
        ref = parse_reference(entry_id)
    except InvalidReference:
        return None
    return ref if ref.digest is not None else None


def pin_digest(ref: Reference, allowing: Iterable[PinCandidate]) -> str | None:
    """The digest that `ref` should be pinned to, or None.

    `allowing` are the entries that allow `ref` (any order; more entries of
    the same name do no harm). A reference that already carries a digest is
    never pinned: the digest decides it. Of the entries whose id is a repo
    digest of `ref`'s repository, the most recently updated one (then the
    greatest id, as in every other ranking of entries) pins.
    """
    if ref.digest is not None:
        return None
    best: tuple[dt.datetime, str] | None = None
    digest = None
    for entry in allowing:
        named = repo_digest(entry.id)
        if named is None or named.name != ref.name:
            continue
        key = (entry.updated_at, entry.id)
        if best is None or key > best:
            best, digest = key, named.digest
    return digest


def pinned(written: str, digest: str) -> str:
    """The reference as the caller wrote it, with the digest appended: the
    tag stays for people to read; the runtime pulls by digest."""
    return f"{written}@{digest}"
