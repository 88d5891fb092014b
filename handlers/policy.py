"""Admission decisions: image references in, one decision per reference out.

Shared by every admission endpoint so they cannot disagree. The entries
come from the in-memory replica (storage/replica.py), which answers like
the database's one match query for all references, only without the round
trip, and keeps answering while the database is away.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

from handlers.errors import ApiError
from storage.model import EntryView
from storage.pinning import pin_digest, pinned
from storage.reference import InvalidReference, Reference, parse_reference


class Matcher(Protocol):
    """A Storage (full entries), or the Replica in front of it (its compact
    entries, or the Storage's when it asked the database)."""

    def match(self, refs: Sequence[Reference]) -> Awaitable[Sequence[tuple[EntryView, ...]]]: ...


# Longest slice of an invalid reference quoted back in messages and logs.
_QUOTE_LIMIT = 100
# Image references one review may name, on every admission endpoint: keeps
# one review's CPU time, its answer and its log line bounded.
MAX_REFERENCES = 1000


class TooManyReferences(ApiError):
    """A review naming more than MAX_REFERENCES references. An endpoint
    answers it as a denial in its own protocol; unanswered, it is a 400."""

    def __init__(self, count: int) -> None:
        super().__init__(
            400,
            f"the review names {count} image references; at most {MAX_REFERENCES} are reviewed",
            {"references": count, "limit": MAX_REFERENCES},
        )


@dataclass(frozen=True, slots=True)
class Decision:
    written: str  # the reference as the caller wrote it
    reference: Reference | None  # parsed; None: not a valid reference
    entry: EntryView | None  # the entry that allows it; None: denied
    reason: str
    pin: str | None = None  # the digest to pin a tag reference to (storage.pinning)

    @property
    def allowed(self) -> bool:
        return self.entry is not None

    @property
    def resolved(self) -> str | None:
        """The reference as distribution's ParseDockerRef renders it."""
        return None if self.reference is None else str(self.reference)

    @property
    def pinned(self) -> str | None:
        """The reference as written with the pinning digest, or None."""
        return None if self.pin is None else pinned(self.written, self.pin)

    def describe(self) -> str:
        """`<reference> (<resolved>): <reason>`, for denial lists."""
        shown = quote(self.written)
        if self.resolved is not None and self.resolved != self.written:
            shown = f"{shown} ({self.resolved})"
        return f"{shown}: {self.reason}"


def quote(text: str) -> str:
    """A reference as safe to echo into a message, header or log line."""
    safe = "".join(c if c.isprintable() and not c.isspace() else "?" for c in text)
    if len(safe) > _QUOTE_LIMIT:
        safe = safe[:_QUOTE_LIMIT] + "..."
    return safe or '""'


def _reason(reference: Reference, entry: EntryView | None) -> str:
    if reference.digest is not None:
        if entry is None:
            return f"no entry for {reference.name} has digest {reference.digest}"
        return f"entry {entry.id} ({entry.name}) has digest {reference.digest}"
    if entry is None:
        return f"no entry for {reference.name} lists tag {reference.tag}"
    return f"entry {entry.id} ({entry.name}) lists tag {reference.tag}"


async def decide(storage: Matcher, written: Sequence[str]) -> dict[str, Decision]:
    """A decision for each distinct reference as written, from one lookup
    (the replica, or the store); TooManyReferences past MAX_REFERENCES,
    before any is parsed."""
    if len(written) > MAX_REFERENCES:
        raise TooManyReferences(len(written))
    parsed: dict[str, Reference | InvalidReference] = {}
    for text in written:
        if text not in parsed:
            try:
                parsed[text] = parse_reference(text)
            except InvalidReference as exc:
                parsed[text] = exc
    lookups = list({p for p in parsed.values() if isinstance(p, Reference)})
    found = dict(zip(lookups, await storage.match(lookups), strict=True)) if lookups else {}
    decisions = {}
    for text, reference in parsed.items():
        if isinstance(reference, InvalidReference):
            decisions[text] = Decision(text, None, None, f"invalid image reference: {reference}")
        else:
            decisions[text] = decision(text, reference, found[reference])
    return decisions


def decision(written: str, reference: Reference, allowing: Sequence[EntryView]) -> Decision:
    """The decision on a valid reference from the entries that allow it,
    newest first (Storage.match's answer)."""
    entry = allowing[0] if allowing else None
    return Decision(
        written, reference, entry, _reason(reference, entry), pin_digest(reference, allowing)
    )
