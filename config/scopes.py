"""Token scopes: the repositories a token may write, as patterns.

A pattern is written like an image name and normalized like one
(`team/app` is `docker.io/team/app`):

- `quay.io/team-a/app`: that repository only;
- `quay.io/team-a/*`: every repository below `quay.io/team-a/`, at any
  depth, and nothing else: neither `quay.io/team-a` itself nor
  `quay.io/team-a-evil/app`. Matching is by whole path segment, never by
  string prefix (a prefix match is the classic allowed-repos bypass);
- `registry.example.com/*`, `localhost:5000/*`: a whole registry.

The registry host compares case-insensitively (DNS names do); the path is
case-sensitive, and a pattern must be a valid lower-case repository name.
An entry name that is not a repository name (it carries a tag, or is not
an image name at all) matches no pattern: only an unscoped token writes it.

Pure functions of their arguments: the tokens file parses patterns, the
storage layer asks `Scope.allows` inside its write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.reference import normalize_name

# Appended to a wildcard pattern's stem so that normalization treats the stem
# as the leading part of a deeper name: `team-a/*` is `docker.io/team-a/*`,
# not `docker.io/library/team-a/*`, and `docker.io/*` is all of Docker Hub.
_PROBE = "/x/y"


class PatternError(ValueError):
    """A scope pattern that cannot be used; the message says why."""


def _looks_like_host(component: str) -> bool:
    # distribution's rule for the first component: a registry host has a
    # dot or a port, or is localhost.
    return "." in component or ":" in component or component.lower() == "localhost"


def _lower_host(name: str) -> str:
    """A normalized name with its registry host lower-cased; the first
    component of a normalized name is always the host."""
    host, _, path = name.partition("/")
    return f"{host.lower()}/{path}"


def repository_of(name: str) -> str | None:
    """The repository an entry's name stands for, as patterns are matched
    against it; None when the name is not a repository name."""
    normalized = normalize_name(name)
    return None if normalized is None else _lower_host(normalized)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One parsed pattern: an exact repository, or every repository below
    `stem` (`below` True)."""

    text: str  # as written in the tokens file
    stem: str  # normalized: `quay.io/team-a`, `localhost:5000`, `quay.io/team-a/app`
    below: bool

    def matches(self, repository: str) -> bool:
        """Whether a repository (as `repository_of` returns it) is in this pattern."""
        if self.below:
            # The `/` makes it a segment match: `quay.io/team-a-evil/x` does
            # not start with `quay.io/team-a/`, and neither does `quay.io/team-a`.
            return repository.startswith(self.stem + "/")
        return repository == self.stem


def parse_pattern(text: object) -> Pattern:
    """A pattern from the tokens file; PatternError says what is wrong."""
    if not isinstance(text, str):
        raise PatternError("a pattern must be a string")
    if not text:
        raise PatternError("a pattern is empty")
    below = text.endswith("/*")
    stem = text[:-2] if below else text
    if text == "*":
        raise PatternError(
            f"{text!r} would allow every repository; leave out 'scopes' for that, "
            "or name a registry such as 'registry.example.com/*'"
        )
    if not stem:
        raise PatternError(f"{text!r} names no registry or repository")
    if "*" in stem:
        raise PatternError(f"{text!r}: '*' may only end a pattern, as '/*'")
    first, sep, rest = stem.partition("/")
    if _looks_like_host(first):
        stem = first.lower() + sep + rest
        if not below and not sep:
            # `localhost:5000`, `quay.io` or `nginx:1`: a registry or a tagged
            # name, never one repository.
            raise PatternError(
                f"{text!r} is a registry or a tagged name, not a repository; a pattern "
                f"has no tag or digest, and a whole registry is written {first.lower() + '/*'!r}"
            )
    if stem != stem.lower():
        raise PatternError(f"{text!r} is not a valid lower-case repository name")
    normalized = normalize_name(stem + _PROBE if below else stem)
    if normalized is None:
        raise PatternError(
            f"{text!r} is not a valid lower-case repository name "
            "(no tag or digest; lower-case letters, digits, '.', '_', '-', '/')"
        )
    if below:
        if not normalized.endswith(_PROBE):  # cannot happen: normalization keeps the path
            raise PatternError(f"{text!r} is not a repository pattern")
        normalized = normalized[: -len(_PROBE)]
    # Lower-case throughout by now: the host was lowered, the path checked.
    return Pattern(text=text, stem=normalized, below=below)


@dataclass(frozen=True, slots=True)
class Scope:
    """The repositories one token may write: any of its patterns."""

    patterns: tuple[Pattern, ...]

    def allows(self, name: str) -> bool:
        repository = repository_of(name)
        if repository is None:
            return False
        return any(p.matches(repository) for p in self.patterns)

    def describe(self) -> list[str]:
        """The patterns as written, for humans (`--show-tokens`, logs)."""
        return [p.text for p in self.patterns]


def parse_scope(raw: object) -> Scope:
    """A token's `scopes` list; PatternError names the pattern by position."""
    if not isinstance(raw, list):
        raise PatternError(
            "must be a list of repository patterns ([] for none; "
            "leave the key out for every repository)"
        )
    patterns: list[Pattern] = []
    for number, text in enumerate(raw, start=1):
        try:
            patterns.append(parse_pattern(text))
        except PatternError as exc:
            raise PatternError(f"pattern {number}: {exc}") from None
    return Scope(tuple(patterns))
