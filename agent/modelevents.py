"""What the models watcher hears: watchdog events turned into small ops.

The observer thread only translates; the watcher's worker (modelwatch.py) does the rest.
Hidden names (our `.cfd` staging among them) and partial-download names are skipped by
the same rules as `cfd index scan`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from cfd.core.store.scan import is_candidate

if TYPE_CHECKING:
    from .modelwatch import ModelsWatcher

EVENT_TYPES = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]

Op = tuple[str, str, str]  # (kind, relative path, destination for moves)


def visible(relative_path: str) -> bool:
    return not any(part.startswith(".") for part in relative_path.split("/"))


def wanted(relative_path: str | None) -> bool:
    if not relative_path:
        return False
    return visible(relative_path) and is_candidate(relative_path.rsplit("/", 1)[-1])


class ModelEventHandler(FileSystemEventHandler):
    """Runs in the observer thread: turns each event into an op on the watcher's inbox."""

    def __init__(self, watcher: ModelsWatcher) -> None:
        self.watcher = watcher
        self.root = os.fspath(watcher.models_dir)

    def rel(self, path: bytes | str) -> str | None:
        relative = os.path.relpath(os.fsdecode(path), self.root) if path else ".."
        if relative == "." or relative.startswith(".."):
            return None
        return relative.replace(os.sep, "/")

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirDeletedEvent) and os.fsdecode(event.src_path) == self.root:
            self.watcher.on_root_gone()  # deleted or unmounted: nothing left to watch
            return
        src = self.rel(event.src_path)
        post = self.watcher.post
        if isinstance(event, FileMovedEvent):
            dest = self.rel(event.dest_path)
            if wanted(src) and wanted(dest):
                post(("move", src, dest))  # type: ignore[arg-type]
            elif wanted(dest):
                post(("close", dest, ""))  # type: ignore[arg-type]  # e.g. x.part -> x: complete
            elif wanted(src):
                post(("delete", src, ""))  # type: ignore[arg-type]
        elif isinstance(event, (DirCreatedEvent, DirDeletedEvent)):
            if src and visible(src):
                post(("dir_new" if isinstance(event, DirCreatedEvent) else "dir_delete", src, ""))
        elif isinstance(event, DirMovedEvent):
            pass  # watchdog follows it with one FileMovedEvent per file inside
        elif wanted(src):
            kind = {
                FileModifiedEvent: "write",
                FileClosedEvent: "close",
                FileDeletedEvent: "delete",
            }.get(type(event), "touch")
            post((kind, src, ""))  # type: ignore[arg-type]
