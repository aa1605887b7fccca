"""Paths as the engine stores them (absolute, normalised bytes) and tests against selections.

Every door that takes a path from a person (backup sources, restore and download selections,
browse and versions) normalises it here, so ``/srv//data/`` and ``/srv/data`` are one path
everywhere.

A recovery point stores files at their absolute disk paths, and a *mapped* part — a folder
staged on the machine, such as the System State collection — under a reserved **relative**
prefix (``system-state/...``; ``RESERVED_ROOTS``). No disk path is relative, so the two can
never meet; in tree order (``path.split(b"/")``) the relative part sorts after every absolute
path. ``PathMap`` says which disk folder a stored prefix is read from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from agents.runtime.engine.errors import InvalidArgument
from agents.runtime.protocol import SYSTEM_STATE_PATH

# Stored prefixes of mapped parts: relative, so never a disk path.
RESERVED_ROOTS = frozenset({os.fsencode(SYSTEM_STATE_PATH)})


def absolute_path(path: str | bytes | os.PathLike, *, what: str = "") -> bytes:
    """``path`` normalised (no ``.``, ``..``, doubled or trailing ``/``) as bytes;
    ``InvalidArgument`` when it is not absolute (``what``: "restore path", "source" …)."""
    raw = os.fsencode(path)
    if not raw.startswith(b"/"):
        named = f"{what} {os.fsdecode(raw)!r}" if what else repr(os.fsdecode(raw))
        raise InvalidArgument(f"{named} must be an absolute path")
    # POSIX keeps a leading "//" as it is; the engine has one root
    return os.path.normpath(raw).replace(b"//", b"/")


def absolute_paths(paths: Iterable[str | bytes | os.PathLike], *, what: str = "") -> list[bytes]:
    return [absolute_path(p, what=what) for p in paths]


def is_reserved(path: bytes) -> bool:
    """``path`` is in a mapped part of a recovery point (``system-state/...``)."""
    return not path.startswith(b"/") and path.split(b"/", 1)[0] in RESERVED_ROOTS


def stored_path(path: str | bytes | os.PathLike, *, what: str = "") -> bytes:
    """A path as a recovery point may hold it: an absolute one (``absolute_path``), or one
    under a reserved root (``system-state``, ``system-state/etc/hosts``), normalised."""
    raw = os.fsencode(path)
    if raw.startswith(b"/") or raw.split(b"/", 1)[0] not in RESERVED_ROOTS:
        return absolute_path(raw, what=what)
    norm = os.path.normpath(raw)
    if not is_reserved(norm):  # "system-state/../x" leaves the reserved part
        raise InvalidArgument(f"{what or 'path'} {os.fsdecode(raw)!r} leaves its reserved folder")
    return norm


def stored_paths(paths: Iterable[str | bytes | os.PathLike], *, what: str = "") -> list[bytes]:
    return [stored_path(p, what=what) for p in paths]


class PathMap:
    """Where a mapped part of a recovery point is read from: stored prefix -> disk folder
    (``{"system-state": "/var/cache/haven/system-state"}``). Stored paths outside every
    prefix are disk paths as they are."""

    def __init__(self, mapped: dict | None = None):
        self.folders: dict[bytes, bytes] = {}
        for prefix, folder in (mapped or {}).items():
            stored = os.fsencode(prefix)
            if stored not in RESERVED_ROOTS:
                raise InvalidArgument(f"{os.fsdecode(stored)!r} is not a reserved stored path")
            self.folders[stored] = absolute_path(folder, what="mapped folder")

    def __bool__(self) -> bool:
        return bool(self.folders)

    def items(self) -> list[tuple[bytes, bytes]]:
        """(stored prefix, disk folder) in tree order of the prefixes."""
        return sorted(self.folders.items())

    def disk(self, stored: bytes) -> bytes:
        """The disk path a stored path is read from."""
        if stored.startswith(b"/"):
            return stored
        head, sep, rest = stored.partition(b"/")
        folder = self.folders[head]
        return folder + b"/" + rest if sep else folder

    def stored(self, prefix: bytes, disk: bytes) -> bytes:
        """The stored path of ``disk``, a path inside the folder mapped to ``prefix``."""
        return prefix + disk[len(self.folders[prefix]) :]


def is_under(path: bytes, selection: bytes) -> bool:
    """``path`` is ``selection`` or inside it (``/srv/a`` is under ``/srv``, ``/srvx`` is not).
    ``/`` holds everything but the reserved (mapped) part: that is chosen by name."""
    if selection == b"/":
        return not is_reserved(path)
    return path == selection or path.startswith(selection.rstrip(b"/") + b"/")


def is_selected(path: bytes, selections: Iterable[bytes]) -> bool:
    """``path`` is under one of ``selections`` (normalised by ``absolute_path``)."""
    return any(is_under(path, s) for s in selections)


def is_inside(path: bytes, folder: bytes) -> bool:
    """``path`` is under ``folder`` and is not ``folder`` itself."""
    return path != folder and is_under(path, folder)


def past_all_selections(path: bytes, selections: Iterable[bytes]) -> bool:
    """In tree order, has ``path`` gone beyond everything under every selection? (Entries
    under a selection come together, right after it, so the rest need not be read.)"""
    key = path.split(b"/")
    for s in selections:
        if s == b"/":
            if not is_reserved(path):
                return False
            continue  # the reserved part comes after every disk path
        skey = s.rstrip(b"/").split(b"/")
        if key <= skey or key[: len(skey)] == skey:
            return False
    return True
