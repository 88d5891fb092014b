"""Watch the tokens file with watchdog and reload it on the Tornado IOLoop.

The observer watches the file's directory, not the file: editors and config
management replace the file by rename, and a Kubernetes ConfigMap/Secret
mount swaps a `..data` symlink, producing events only for `..`-prefixed
names. Directories are watched resolved (watchdog sees nothing through a
symlinked directory). When the path is a symlink to a file elsewhere, the
target's directory is watched too (edits there produce no event next to the
link); a directory that disappears is polled for until it is back.
Events arrive on watchdog's thread and are handed to the loop with
`IOLoop.add_callback` (its only thread-safe method); a burst of them is
coalesced into one reload (`call_later`), which compares a content hash.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import structlog
from tornado.ioloop import IOLoop
from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

log = structlog.get_logger("imagelist.tokens")

#: Seconds to wait after the first event of a burst before re-reading:
#: long enough for a rename or symlink swap to complete, well under 1 s.
DEBOUNCE = 0.1
#: Seconds between re-checks while a directory to watch does not exist.
RETRY = 1.0
#: Our own reads of the file cause these; reacting would loop forever.
_IGNORED = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})


class _Forward(FileSystemEventHandler):
    def __init__(self, relevant: Callable[[str], bool], notify: Callable[[], None]) -> None:
        self.relevant = relevant
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:  # watchdog's thread
        if event.event_type in _IGNORED:
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(p and self.relevant(os.fsdecode(p)) for p in paths):
            self.notify()


def _inode(directory: str) -> tuple[int, int] | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class FileWatcher:
    """Call `on_change` on the IOLoop, debounced, when `path` may have changed."""

    def __init__(self, path: str, on_change: Callable[[], object], io_loop: IOLoop) -> None:
        self.path = os.path.abspath(path)
        self.on_change = on_change
        self.io_loop = io_loop
        self._observer: BaseObserver | None = None
        #: directory -> (its watch, its inode when watched)
        self._watches: dict[str, tuple[ObservedWatch, tuple[int, int] | None]] = {}
        self._pending: object | None = None  # the call_later handle
        self._names: frozenset[str] = frozenset()

    # -- lifecycle (on the loop) ----------------------------------------------

    def start(self) -> None:
        self._observer = Observer()
        self._observer.start()
        self._update_watches()

    def stop(self) -> None:
        if self._pending is not None:
            self.io_loop.remove_timeout(self._pending)
            self._pending = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None
        self._watches.clear()

    def _directories(self) -> set[str]:
        # Resolved: watchdog sees nothing inside a directory watched through
        # a symlink (/etc/imagelist -> /srv/...).
        parent = os.path.realpath(os.path.dirname(self.path))
        wanted = {parent}
        target_dir = os.path.dirname(os.path.realpath(self.path))
        # A target inside the parent (a ConfigMap's `..<timestamp>` dir) is
        # replaced on every update and covered by the parent's watch; a
        # target elsewhere needs its own watch.
        if os.path.commonpath([target_dir, parent]) != parent:
            wanted.add(target_dir)
        return wanted

    def _update_watches(self) -> bool:
        """(Re)point the observer at the right directories: a symlink may now
        lead somewhere else. False when one of them cannot be watched yet."""
        if self._observer is None:
            return True
        self._names = frozenset(
            {os.path.basename(self.path), os.path.basename(os.path.realpath(self.path))}
        )
        wanted = {d: _inode(d) for d in self._directories()}
        for directory, (watch, inode) in list(self._watches.items()):
            # A directory deleted (and maybe re-created) loses its inotify
            # watch: schedule it afresh.
            if wanted.get(directory, False) != inode:
                del self._watches[directory]
                # KeyError: the emitter already went with the directory.
                with contextlib.suppress(KeyError):
                    self._observer.unschedule(watch)
        complete = True
        for directory, inode in wanted.items():
            if directory in self._watches:
                continue
            if inode is None:
                complete = False
                continue
            try:
                watch = self._observer.schedule(
                    _Forward(self._relevant, self._from_thread), directory, recursive=False
                )
            except OSError as exc:
                log.error("tokens_watch_failed", directory=directory, error=str(exc))
                complete = False
                continue
            self._watches[directory] = (watch, inode)
        return complete

    # -- events ----------------------------------------------------------------

    def _relevant(self, path: str) -> bool:
        name = os.path.basename(path)
        return name in self._names or name.startswith("..")

    def _from_thread(self) -> None:
        self.io_loop.add_callback(self._schedule)

    def _schedule(self) -> None:
        # The first event of a burst sets the timer; later ones ride along,
        # so a steady stream of events cannot postpone the reload forever.
        if self._pending is None and self._observer is not None:
            self._pending = self.io_loop.call_later(DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self._pending = None
        try:
            self.on_change()
        finally:
            # A directory that is gone sends no event when it comes back:
            # poll for it instead.
            if not self._update_watches() and self._observer is not None:
                self._pending = self.io_loop.call_later(RETRY, self._fire)
