"""Container image references, parsed and normalized as the runtime does.

The grammar is distribution's (github.com/distribution/reference), through
docker-image-py's port of it. This module wraps the port where it falls
short of the Go original and adds what it leaves out:

- Python's `$` also matches before a trailing newline, so the port accepts
  `nginx\\n`; Go does not. Anything outside printable, non-space ASCII is
  rejected here first (the grammar allows nothing else anyway).
- The port does not add the default `latest` tag, nor drop the tag of a
  `name:tag@digest` reference; `parse_reference` renders exactly what
  distribution's `ParseDockerRef` returns.
- Its digest errors are not `InvalidReference` subclasses; both become
  `InvalidReference` here.

Pure functions only: storage uses them at write time, handlers at decision
time, and the table tests call them directly.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from docker_image import digest as _digest
from docker_image import reference as _reference

DEFAULT_TAG = "latest"

# A 255-char path, a 128-char tag, a sha512 digest and a generous registry
# host fit easily; the bound only keeps absurd input away from the regexes.
MAX_REFERENCE_LENGTH = 1024

# Bare hex image ids: the hex length says which algorithm produced them.
_HEX_ALGORITHMS = {64: "sha256", 96: "sha384", 128: "sha512"}
_LOWER_HEX = re.compile(r"[0-9a-f]+")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")


class InvalidReference(ValueError):
    """Not an image reference the container runtime would accept."""


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalized reference: exactly one of `tag` and `digest` is set,
    as in the result of distribution's `ParseDockerRef`."""

    name: str  # e.g. docker.io/library/nginx
    tag: str | None = None
    digest: str | None = None  # <algorithm>:<hex>

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag}"


def _parse_named(text: str) -> _reference.Reference:
    if not isinstance(text, str):
        raise InvalidReference("an image reference must be a string")
    if not text:
        raise InvalidReference("empty image reference")
    if len(text) > MAX_REFERENCE_LENGTH:
        raise InvalidReference(f"image reference longer than {MAX_REFERENCE_LENGTH} characters")
    if not _PRINTABLE_ASCII.fullmatch(text):
        raise InvalidReference(
            "image reference contains whitespace, control or non-ASCII characters"
        )
    try:
        return _reference.Reference.parse_normalized_named(text)
    except (_reference.InvalidReference, _digest.InvalidDigest) as exc:
        raise InvalidReference(str(exc) or type(exc).__name__) from None


def parse_reference(text: str) -> Reference:
    """`nginx` -> docker.io/library/nginx:latest; `a:t@sha256:..` -> a@sha256:..

    Raises InvalidReference with distribution's own wording where it has one.
    """
    if not isinstance(text, str):  # unhashable values must not reach the cache
        raise InvalidReference("an image reference must be a string")
    return _parse_reference(text)


# A pure function of its argument, and ~20 us per call (the grammar's
# regexes): a cluster asks about the same few images again and again, so
# parses are memoized. Only parses are kept, never a decision, and only
# valid references (an exception is not cached); the size bounds memory.
@functools.lru_cache(maxsize=4096)
def _parse_reference(text: str) -> Reference:
    named = _parse_named(text)
    name, tag, digest = named["name"], named["tag"], named["digest"]
    if digest:
        return Reference(name=name, digest=digest)
    return Reference(name=name, tag=tag or DEFAULT_TAG)


# Memoized like the parses above: a table holds many ids per repository, so
# computing every entry's keys (a migration, the sweep) parses each name once.
@functools.lru_cache(maxsize=4096)
def normalize_name(name: str) -> str | None:
    """The normalized repository name an entry's `name` stands for, or None
    when it is not a repository name (has a tag or digest, bad syntax)."""
    try:
        named = _parse_named(name)
    except InvalidReference:
        return None
    if named["tag"] or named["digest"]:
        return None
    return str(named["name"])


def id_digest(entry_id: str) -> str | None:
    """The digest an entry id stands for: bare hex (its length names the
    algorithm), `<algorithm>:<hex>`, or a repo digest `name@<algorithm>:<hex>`
    (the name part must be a valid reference; it does not have to equal the
    entry's name, since the digest identifies the content). None otherwise."""
    if "@" in entry_id:
        try:
            return parse_reference(entry_id).digest
        except InvalidReference:
            return None
    algorithm = _HEX_ALGORITHMS.get(len(entry_id))
    if algorithm is not None and _LOWER_HEX.fullmatch(entry_id):
        return f"{algorithm}:{entry_id}"
    try:
        _digest.validate_digest(entry_id)
    except _digest.InvalidDigest:
        return None
    return entry_id


def reference_keys(name: str, entry_id: str) -> tuple[str | None, str | None]:
    """What storage indexes for an entry: (normalized name, digest)."""
    return normalize_name(name), id_digest(entry_id)
