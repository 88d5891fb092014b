"""The bearer-tokens file: parse and validate it, hold the current set, check tokens.

File format (the old service's, plus `token_sha256`)::

    tokens:
      - name: ci-pipeline
        token: 'LF8zuwb2dJMjZLphiSUQHTeA'     # or: token_sha256: <64 hex>
        is_disabled: false                   # optional, default false
        scopes: ['quay.io/team-a/*']         # optional: the repositories it may write

Only SHA-256 digests of the tokens are kept in memory, and no message, log
line or metric ever carries a token (or a line of the file, which may hold one).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import structlog
import yaml

from config.metrics import Metrics
from config.scopes import PatternError, Scope, parse_scope
from storage.model import ANONYMOUS, MAX_ACTOR_LEN

log = structlog.get_logger("imagelist.tokens")

#: A tokens file is a handful of lines; refuse to parse something huge.
MAX_FILE_SIZE = 1024 * 1024
# Seconds between re-reads after a read failed for an operating-system reason.
RETRY_MIN, RETRY_MAX = 0.1, 30.0
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_ENTRY_KEYS = frozenset({"name", "token", "token_sha256", "is_disabled", "scopes"})


class TokenFileError(ValueError):
    """The tokens file cannot be used; the message names the file and the problem
    (never a token)."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    digest: bytes = field(repr=False)  # SHA-256 of the token; kept out of reprs anyway
    disabled: bool = False
    #: The repositories it may write; None (no `scopes` key): every one.
    scope: Scope | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one presented token."""

    name: str | None  # the matching entry's name, also when it is disabled
    ok: bool
    reason: str  # "ok", "unknown", "disabled" or "no tokens file"
    #: The matching entry's scope, as of this check (a reload makes new verdicts).
    scope: Scope | None = None


def token_digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    YAML keeps the last of two equal keys without a word: a second `scopes`
    would widen a token, a second `is_disabled: false` re-enable it, a second
    `tokens` drop every entry above it. Merge keys (`<<: *base`) are not
    duplicates: an entry's own key overriding a shared default is their point.
    """


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> Any:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            continue  # the mapping constructor refuses it with its own message
        if key in seen:
            # Only the file's own keys are named: any other might be a token
            # pasted in the wrong place.
            named = f" {key!r}" if key in _ENTRY_KEYS or key == "tokens" else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key{named}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _load_yaml(data: bytes) -> Any:
    """`yaml.safe_load`, with duplicate keys refused (`_UniqueKeyLoader`)."""
    loader = _UniqueKeyLoader(data)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # str(exc) quotes the offending line of the file, which may be a token:
    # report the problem and its position only.
    if isinstance(exc, yaml.MarkedYAMLError):

        def at(text: str | None, mark: Any) -> str:
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            return f"{text}{where}" if text else ""

        parts = [at(exc.context, exc.context_mark), at(exc.problem, exc.problem_mark)]
        return "not valid YAML: " + (", ".join(p for p in parts if p) or "syntax error")
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not valid YAML: {exc.reason} at byte {exc.position}"
    return "not valid YAML"


def _file_digests(raw_entries: list[Any]) -> frozenset[bytes]:
    """The digests of every token the file names, valid or not: a string
    that hashes to one of them is a secret, wherever in the file it sits."""
    digests: set[bytes] = set()
    for raw in raw_entries:
        if not isinstance(raw, dict):
            continue
        token, hashed = raw.get("token"), raw.get("token_sha256")
        if isinstance(token, str):
            digests.add(token_digest(token.encode("utf-8", "surrogatepass")))
        if isinstance(hashed, str) and _HEX64.match(hashed):
            digests.add(bytes.fromhex(hashed))
    return frozenset(digests)


def _pasted_token(scopes: Any, secrets: frozenset[bytes]) -> int | None:
    """The position of a pattern that is one of the file's tokens (pasted a
    line off): its error must not quote it."""
    if not isinstance(scopes, list):
        return None
    for number, text in enumerate(scopes, start=1):
        if isinstance(text, str) and token_digest(text.encode("utf-8", "surrogatepass")) in secrets:
            return number
    return None


def _entry(raw: Any, number: int, fail: Any, secrets: frozenset[bytes]) -> TokenEntry:
    if not isinstance(raw, dict):
        fail(f"entry {number}: expected a mapping with name and token")
    name = raw.get("name")
    if "name" not in raw:
        fail(f"entry {number}: missing key 'name'")
    if not isinstance(name, str) or not name.strip():
        fail(f"entry {number}: 'name' must be a non-empty string")
    if len(name) > MAX_ACTOR_LEN or not name.isprintable():
        # The name is the audit trail's actor: PostgreSQL refuses a NUL (a
        # 500 on every write of the token), a control character or a lone
        # surrogate garbles it, and GET /events?actor= asks for at most
        # MAX_ACTOR_LEN characters. The name itself is not echoed.
        fail(
            f"entry {number}: 'name' must be at most {MAX_ACTOR_LEN} printable characters"
            " (no control characters)"
        )
    if name == ANONYMOUS.actor:
        # The audit trail could not tell this token's writes from those
        # made without authentication.
        fail(f"entry {number}: the name {name!r} is reserved for writes without a token")
    label = f"entry {number} ({name!r})"
    unknown = sorted(str(k) for k in raw if k not in _ENTRY_KEYS)
    if unknown:
        # A typo such as `is_disable: true` must not leave a token enabled.
        allowed = ", ".join(sorted(_ENTRY_KEYS))
        fail(f"{label}: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    if ("token" in raw) == ("token_sha256" in raw):
        fail(f"{label}: needs exactly one of 'token' or 'token_sha256'")
    if "token" in raw:
        token = raw["token"]
        if not isinstance(token, str):
            fail(f"{label}: 'token' must be a string; quote it in the YAML")
        if not token:
            fail(f"{label}: 'token' is empty")
        if any(c.isspace() or not c.isprintable() for c in token):
            fail(f"{label}: 'token' contains whitespace or control characters")
        if not token.isascii():
            # HTTP clients send header values as ASCII (or latin-1): it could never match.
            fail(f"{label}: 'token' must be ASCII; a non-ASCII token can never authenticate")
        digest = token_digest(token.encode("utf-8"))
    else:
        hashed = raw["token_sha256"]
        if not isinstance(hashed, str) or not _HEX64.match(hashed):
            fail(f"{label}: 'token_sha256' must be 64 hex digits (SHA-256 of the token)")
        digest = bytes.fromhex(hashed)
    disabled = raw.get("is_disabled", False)
    if not isinstance(disabled, bool):
        fail(f"{label}: 'is_disabled' must be true or false")
    scope: Scope | None = None
    if "scopes" in raw:
        # `scopes: []` writes nothing; only a token without the key writes
        # everything, as before scopes existed. An empty `scopes:` (null) is
        # refused by parse_scope: which of the two it meant is a guess.
        pasted = _pasted_token(raw["scopes"], secrets)
        if pasted is not None:
            fail(f"{label}: 'scopes': pattern {pasted} is a token of this file, not a pattern")
        try:
            scope = parse_scope(raw["scopes"])
        except PatternError as exc:
            fail(f"{label}: 'scopes': {exc}")
    return TokenEntry(name=name, digest=digest, disabled=disabled, scope=scope)


def parse_tokens(data: bytes, source: str) -> tuple[TokenEntry, ...]:
    """Validate a tokens file's contents; TokenFileError names `source` and the problem."""

    def fail(problem: str) -> Any:
        raise TokenFileError(f"tokens file {source}: {problem}")

    if len(data) > MAX_FILE_SIZE:
        fail(f"larger than {MAX_FILE_SIZE} bytes")
    try:
        doc = _load_yaml(data)
    except yaml.YAMLError as exc:
        fail(_yaml_problem(exc))
    if doc is None:
        fail("empty; expected a mapping with a 'tokens' list")
    if not isinstance(doc, dict):
        fail("expected a mapping with a 'tokens' list at the top")
    if "tokens" not in doc:
        fail("missing key 'tokens'")
    unknown = sorted(str(k) for k in doc if k != "tokens")
    if unknown:
        fail(f"unknown top-level key(s) {', '.join(unknown)}; only 'tokens' is allowed")
    raw_entries = doc["tokens"]
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        fail("'tokens' must be a list of entries")
    entries: list[TokenEntry] = []
    names: dict[str, int] = {}
    digests: dict[bytes, str] = {}
    secrets = _file_digests(raw_entries)
    for number, raw in enumerate(raw_entries, start=1):
        entry = _entry(raw, number, fail, secrets)
        if entry.name in names:
            fail(f"entry {number}: duplicate name {entry.name!r} (also entry {names[entry.name]})")
        if entry.digest in digests:
            fail(f"entry {number} ({entry.name!r}): same token as {digests[entry.digest]!r}")
        names[entry.name] = number
        digests[entry.digest] = entry.name
        entries.append(entry)
    return tuple(entries)


class TokenRegistry:
    """The current token set, reloaded from its file on the IOLoop.

    Not thread-safe on purpose: the watcher hands events to the loop, and
    reloads and checks both run there.
    """

    def __init__(self, path: str, metrics: Metrics) -> None:
        self.path = path
        self.metrics = metrics
        #: None: the file is gone and no token is valid (fail closed).
        self._entries: tuple[TokenEntry, ...] | None = None
        self._seen: bytes | None = None  # content hash of the last file read
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = 0.0

    @property
    def entries(self) -> tuple[TokenEntry, ...] | None:
        return self._entries

    def _read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read(MAX_FILE_SIZE + 1)

    def load(self) -> None:
        """The start-up load: TokenFileError when the file is missing or invalid."""
        try:
            data = self._read()
        except OSError as exc:
            raise TokenFileError(f"tokens file {self.path}: {exc.strerror or exc}") from None
        self._apply(parse_tokens(data, self.path), hashlib.sha256(data).digest(), "startup")

    def reload(self, trigger: str = "watch", force: bool = False) -> bool:
        """Re-read the file; True when a new set was applied.

        Unchanged contents (by hash) are skipped unless `force`d (SIGHUP).
        An invalid file keeps the last good set; a missing one empties it.
        """
        try:
            data = self._read()
        except FileNotFoundError:
            if self._entries is not None or self._seen is not None:
                self._entries = None
                self._seen = None
                self._count_error()
                log.error(
                    "tokens_file_missing",
                    path=self.path,
                    trigger=trigger,
                    effect="no token is valid until the file is back",
                )
            return False
        except OSError as exc:
            self._count_error()
            delay = self._retry_later(trigger, force)
            log.error(
                "tokens_reload_failed",
                path=self.path,
                trigger=trigger,
                error=f"tokens file {self.path}: {exc.strerror or exc}",
                effect="keeping the last good set",
                retry_in_s=delay,
            )
            return False
        self._retry_delay = 0.0
        digest = hashlib.sha256(data).digest()
        if digest == self._seen and not force:
            return False
        self._seen = digest
        try:
            entries = parse_tokens(data, self.path)
        except TokenFileError as exc:
            self._count_error()
            log.error(
                "tokens_reload_failed",
                path=self.path,
                trigger=trigger,
                error=str(exc),
                effect="keeping the last good set"
                if self._entries is not None
                else "no token is valid until the file is fixed",
            )
            return False
        self._apply(entries, digest, trigger)
        return True

    def _retry_later(self, trigger: str, force: bool) -> float | None:
        """Schedule another read: an operating-system failure (out of
        descriptors, an I/O error) may have eaten the one change event a
        revocation gets. Backs off from 0.1 s to 30 s; None: no loop runs."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._retry_delay = min(RETRY_MAX, max(RETRY_MIN, self._retry_delay * 2))
        if self._retry is not None:
            self._retry.cancel()
        again = trigger if trigger.startswith("retry:") else f"retry:{trigger}"
        self._retry = loop.call_later(self._retry_delay, self.reload, again, force)
        return self._retry_delay

    def _apply(self, entries: tuple[TokenEntry, ...], digest: bytes, trigger: str) -> None:
        self._entries = entries
        self._seen = digest
        self.metrics.token_reloads.inc()
        self.metrics.token_last_reload.set(time.time())
        enabled = [e.name for e in entries if not e.disabled]
        log.info(
            "tokens_loaded",
            path=self.path,
            trigger=trigger,
            tokens=len(entries),
            enabled=len(enabled),
            names=enabled,
            # Who may write every repository: the tokens whose leak matters most.
            unscoped=[e.name for e in entries if not e.disabled and e.scope is None],
        )
        if not enabled:
            log.warning("tokens_none_enabled", path=self.path, effect="every write gets 401")

    def _count_error(self) -> None:
        self.metrics.token_reload_errors.inc()

    def check(self, presented: bytes) -> Verdict:
        """Which entry `presented` is, compared in constant time.

        The presented token is hashed, and its digest compared against every
        entry with no early exit, so timing reveals neither the token nor
        which entry (if any) matched.
        """
        entries = self._entries
        if entries is None:
            return Verdict(None, False, "no tokens file")
        digest = token_digest(presented)
        match: TokenEntry | None = None
        for entry in entries:
            if hmac.compare_digest(digest, entry.digest):
                match = entry
        if match is None:
            return Verdict(None, False, "unknown")
        if match.disabled:
            return Verdict(match.name, False, "disabled")
        return Verdict(match.name, True, "ok", match.scope)


def describe_tokens(entries: tuple[TokenEntry, ...]) -> list[str]:
    """One line per token: name, enabled or disabled, and what it may write.
    For people (`imagelist --show-tokens`); it holds no secret, nor a digest."""
    rows = [
        (
            entry.name,
            "disabled" if entry.disabled else "enabled",
            "all repositories"
            if entry.scope is None
            else ", ".join(entry.scope.describe()) or "no repository (scopes: [])",
        )
        for entry in entries
    ]
    width = max((len(name) for name, _, _ in rows), default=0)
    return [f"{name:<{width}}  {state:<8}  {writes}" for name, state, writes in rows]


def show_tokens(path: str) -> tuple[int, list[str]]:
    """`--show-tokens`: the exit status and the lines to print (the file's
    problem on one line when it is invalid)."""
    try:
        with open(path, "rb") as f:
            entries = parse_tokens(f.read(MAX_FILE_SIZE + 1), path)
    except OSError as exc:
        return 1, [f"imagelist: tokens file {path}: {exc.strerror or exc}"]
    except TokenFileError as exc:
        return 1, [f"imagelist: {exc}"]
    header = f"tokens file {path}: {len(entries)} token(s); scoped tokens may write only the "
    header += "repositories listed, reads stay open to everyone"
    return 0, [header, *describe_tokens(entries)]
