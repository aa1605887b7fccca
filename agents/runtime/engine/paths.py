"""Paths as the engine stores them (absolute, normalised bytes) and tests against selections.

Every door that takes a path from a person (backup sources, restore and download selections,
browse and versions) normalises it here, so ``/srv//data/`` and ``/srv/data`` are one path
everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from agents.runtime.engine.errors import InvalidArgument


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


def is_under(path: bytes, selection: bytes) -> bool:
    """``path`` is ``selection`` or inside it (``/srv/a`` is under ``/srv``, ``/srvx`` is not)."""
    return selection == b"/" or path == selection or path.startswith(selection.rstrip(b"/") + b"/")


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
        skey = s.rstrip(b"/").split(b"/") if s != b"/" else [b""]
        if s == b"/" or key <= skey or key[: len(skey)] == skey:
            return False
    return True
