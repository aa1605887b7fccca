"""Read-only views of recovery points for the restore UI and CLI: ls, find, versions."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import blake3

from agents.runtime.engine.format import FILE, HARDLINK, Entry
from agents.runtime.engine.paths import is_reserved, stored_path
from agents.runtime.engine.repository import RecoveryPoint, Repository


def list_recovery_points(repo: Repository) -> list[RecoveryPoint]:
    """Oldest first."""
    return repo.list_recovery_points()


def list_dir(
    repo: Repository, *, recovery_point: str | RecoveryPoint, path: str | bytes = "/"
) -> list[Entry]:
    """The direct children of ``path`` in a recovery point (empty if it has none). ``/``
    lists the top folders and a reserved part's root (``system-state``) beside them."""
    rp = repo.recovery_point(recovery_point)
    want = stored_path(path)
    key = want.split(b"/") if want != b"/" else [b""]
    out = []
    seen_subtree = False
    for e in repo.iter_entries(rp):
        if e.parent == want and e.path != want:
            out.append(e)
            seen_subtree = True
        elif seen_subtree and e.path.split(b"/")[: len(key)] != key:
            if want == b"/" and is_reserved(e.path):
                continue  # the reserved parts come last, after every disk path
            break  # tree order: the folder's subtree is contiguous and now behind us
    return out


@dataclass
class Found:
    recovery_point: str
    time: object
    entry: Entry


def find(
    repo: Repository,
    *,
    pattern: str,
    recovery_points: list[str | RecoveryPoint] | None = None,
) -> Iterator[Found]:
    """Entries whose name (pattern without ``/``) or absolute path (with ``/``) matches the
    glob, across recovery points (all by default, oldest first)."""
    rx = re.compile(os.fsencode(fnmatch.translate(pattern)))
    on_path = "/" in pattern
    rps = (
        [repo.recovery_point(r) for r in recovery_points]
        if recovery_points is not None
        else repo.list_recovery_points()
    )
    for rp in rps:
        for e in repo.iter_entries(rp):
            if rx.match(e.path if on_path else e.name):
                yield Found(rp.id, rp.time, e)


@dataclass
class FileVersion:
    recovery_point: str
    time: object
    entry: Entry
    content_key: str  # equal keys: same content
    changed: bool  # differs from the previous version listed


def file_versions(repo: Repository, *, path: str | bytes) -> list[FileVersion]:
    """The item at ``path`` in every recovery point that has it, oldest first."""
    want = stored_path(path)
    key = want.split(b"/")
    out: list[FileVersion] = []
    last = None
    for rp in repo.list_recovery_points():
        for e in repo.iter_entries(rp):
            k = e.path.split(b"/")
            if k == key:
                ck = blake3.blake3(
                    b"".join(cid + n.to_bytes(8, "little") for cid, n in e.content)
                    if e.kind in (FILE, HARDLINK)
                    else e.target
                ).hexdigest()[:32]
                out.append(FileVersion(rp.id, rp.time, e, ck, ck != last))
                last = ck
                break
            if k > key:
                break
    return out
