"""Admission decisions: image references in, one decision per reference out.

Shared by every admission endpoint so they cannot disagree. The entries
come from the in-memory replica (storage/replica.py), which answers like
the database's one match query for all references, only without the round
trip, and keeps answering while the database is away.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from storage.model import Image
from storage.reference import ImageRef, InvalidReference, parse_reference


class Matcher(Protocol):
    """A Storage, or the Replica in front of it."""

    async def match(self, refs: Sequence[ImageRef]) -> list[Image | None]: ...


# Longest slice of an invalid reference quoted back in messages and logs.
_QUOTE_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Decision:
    reference: str  # as the caller wrote it
    image: ImageRef | None  # None: not a valid reference
    entry: Image | None  # the entry that allows it
    reason: str

    @property
    def allowed(self) -> bool:
        return self.entry is not None

    @property
    def resolved(self) -> str | None:
        """The reference as distribution's ParseDockerRef renders it."""
        return None if self.image is None else str(self.image)

    def describe(self) -> str:
        """`<reference> (<resolved>): <reason>`, for denial lists."""
        shown = quote(self.reference)
        if self.resolved is not None and self.resolved != self.reference:
            shown = f"{shown} ({self.resolved})"
        return f"{shown}: {self.reason}"


def quote(text: str) -> str:
    """A reference as safe to echo into a message, header or log line."""
    safe = "".join(c if c.isprintable() and not c.isspace() else "?" for c in text)
    if len(safe) > _QUOTE_LIMIT:
        safe = safe[:_QUOTE_LIMIT] + "..."
    return safe or '""'


def _reason(image: ImageRef, entry: Image | None) -> str:
    if image.digest is not None:
        if entry is None:
            return f"no entry for {image.name} has digest {image.digest}"
        return f"entry {entry.id} ({entry.name}) has digest {image.digest}"
    if entry is None:
        return f"no entry for {image.name} lists tag {image.tag}"
    return f"entry {entry.id} ({entry.name}) lists tag {image.tag}"


async def decide(storage: Matcher, references: Iterable[str]) -> dict[str, Decision]:
    """A decision for each distinct reference, from one match."""
    parsed: dict[str, ImageRef | InvalidReference] = {}
    for reference in references:
        if reference not in parsed:
            try:
                parsed[reference] = parse_reference(reference)
            except InvalidReference as exc:
                parsed[reference] = exc
    lookups = list({p for p in parsed.values() if isinstance(p, ImageRef)})
    entries = dict(zip(lookups, await storage.match(lookups), strict=True)) if lookups else {}
    decisions = {}
    for reference, image in parsed.items():
        if isinstance(image, InvalidReference):
            decisions[reference] = Decision(
                reference, None, None, f"invalid image reference: {image}"
            )
        else:
            entry = entries[image]
            decisions[reference] = Decision(reference, image, entry, _reason(image, entry))
    return decisions
