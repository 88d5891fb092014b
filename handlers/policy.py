"""Admission decisions: image references in, one decision per reference out.

Shared by every admission endpoint so they cannot disagree. Nothing is
cached: each call asks the database once (one query for all references), so
a write through any instance is seen by every instance's next decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.base import Storage
from storage.model import Image
from storage.pinning import pin_digest, pinned
from storage.reference import ImageRef, InvalidReference, parse_reference

# Longest slice of an invalid reference quoted back in messages and logs.
_QUOTE_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Decision:
    reference: str  # as the caller wrote it
    image: ImageRef | None  # None: not a valid reference
    entry: Image | None  # the entry that allows it
    reason: str
    pin: str | None = None  # the digest to pin a tag reference to (storage.pinning)

    @property
    def allowed(self) -> bool:
        return self.entry is not None

    @property
    def resolved(self) -> str | None:
        """The reference as distribution's ParseDockerRef renders it."""
        return None if self.image is None else str(self.image)

    @property
    def pinned(self) -> str | None:
        """The reference as written with the pinning digest, or None."""
        return None if self.pin is None else pinned(self.reference, self.pin)

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


async def decide(storage: Storage, references: Iterable[str]) -> dict[str, Decision]:
    """A decision for each distinct reference, from one storage query."""
    parsed: dict[str, ImageRef | InvalidReference] = {}
    for reference in references:
        if reference not in parsed:
            try:
                parsed[reference] = parse_reference(reference)
            except InvalidReference as exc:
                parsed[reference] = exc
    lookups = list({p for p in parsed.values() if isinstance(p, ImageRef)})
    found = dict(zip(lookups, await storage.match(lookups), strict=True)) if lookups else {}
    decisions = {}
    for reference, image in parsed.items():
        if isinstance(image, InvalidReference):
            decisions[reference] = Decision(
                reference, None, None, f"invalid image reference: {image}"
            )
        else:
            decisions[reference] = decision(reference, image, found[image])
    return decisions


def decision(reference: str, image: ImageRef, allowing: Sequence[Image]) -> Decision:
    """The decision on a valid reference from the entries that allow it,
    newest first (Storage.match's answer)."""
    entry = allowing[0] if allowing else None
    return Decision(reference, image, entry, _reason(image, entry), pin_digest(image, allowing))
