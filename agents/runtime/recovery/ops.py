"""Recovery operations over an opened repository, as JSON-able answers.

Both doors use these: the CLI prints them (``--json`` prints them as they are), the agent
tasks send them to the portal. The engine does the reading and the safety checks; what is
added here is the shape of the answers, name search for people, and the download archive.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from agents.runtime import engine
from agents.runtime.engine.errors import UnsafePath
from agents.runtime.engine.format import DIR, FILE, HARDLINK, HOLE_ID, SYMLINK, Entry
from agents.runtime.engine.paths import is_reserved, is_selected, stored_path, stored_paths
from agents.runtime.engine.progress import display_path
from agents.runtime.engine.repository import ChunkReader
from agents.runtime.engine.target import safe_components
from agents.runtime.protocol import (
    CONFLICT_CHOICES,
    CONFLICT_COPY,
    DOWNLOAD_MAX_BYTES,
    DOWNLOAD_MAX_FILES,
)
from agents.runtime.recovery.human import size

DEFAULT_FIND_LIMIT = 500
_GLOB = set("*?[")


class DownloadTooLarge(engine.EngineError):
    """The selection is larger than a download may be: restore it instead."""


def _iso(ns_or_dt) -> str | None:
    if ns_or_dt is None:
        return None
    if isinstance(ns_or_dt, datetime):
        return ns_or_dt.astimezone(UTC).isoformat()
    return datetime.fromtimestamp(ns_or_dt / 1e9, UTC).isoformat()


def point_dict(rp) -> dict:
    stats = rp.stats or {}
    return {
        "id": rp.id,
        "short_id": rp.id[:8],
        "time": _iso(rp.time),
        "hostname": rp.hostname,
        "sources": list(rp.sources),
        "status": rp.status,
        "files": stats.get("files"),
        "bytes": stats.get("logical_bytes"),
    }


def entry_dict(e: Entry) -> dict:
    kind = "file" if e.kind == HARDLINK else e.kind_name
    return {
        "name": display_path(e.name),
        "path": display_path(e.path),
        "kind": kind,
        "size": e.size if e.kind in (FILE, HARDLINK) else None,
        "mtime": _iso(e.mtime_ns),
        "mode": stat.filemode(e.mode) if e.mode else None,
        "user": display_path(e.user) if e.user else str(e.uid),
        "group": display_path(e.group) if e.group else str(e.gid),
        "target": display_path(e.target) if e.kind == SYMLINK else None,
    }


def recovery_points(repo) -> list[dict]:
    """Newest first (the order people look for them in)."""
    return [point_dict(rp) for rp in reversed(engine.list_recovery_points(repo))]


def ls(repo, *, recovery_point: str, path: str = "/") -> dict:
    """The children of ``path``: folders first, then by name. ``path`` ``/`` in a recovery
    point lists its top folders; a path that is not there is an empty folder (engine's
    rule). ``path`` comes back normalised, as the engine read it."""
    rp = repo.recovery_point(recovery_point)
    entries = engine.list_dir(repo, recovery_point=rp, path=path)
    entries.sort(key=lambda e: (e.kind != DIR, e.name.lower()))
    return {
        "recovery_point": point_dict(rp),
        "path": os.fsdecode(stored_path(path)) if path else "/",
        "entries": [entry_dict(e) for e in entries],
    }


def name_pattern(text: str) -> str:
    """What people type -> an engine glob: plain words match anywhere in the name, letters
    in either case (``report`` -> ``*[rR][eE]…*``); a text with ``*?[`` is a glob as typed."""
    text = text.strip()
    if not text:
        raise engine.InvalidArgument("type part of a file name to search for")
    if _GLOB & set(text):
        return text
    out = []
    for ch in text:
        if ch.isalpha() and ch.lower() != ch.upper():
            out.append(f"[{ch.lower()}{ch.upper()}]")
        elif ch in "[]":
            out.append(f"[{ch}]")
        else:
            out.append(ch)
    return "*" + "".join(out) + "*"


def find(
    repo,
    *,
    pattern: str,
    recovery_points: list[str] | None = None,
    limit: int = DEFAULT_FIND_LIMIT,
) -> dict:
    """Items whose name matches, across recovery points; one row per path with the recovery
    points holding it (newest first) and its latest size and time."""
    glob = name_pattern(pattern)
    rows: dict[bytes, dict] = {}
    truncated = False
    for found in engine.find(repo, pattern=glob, recovery_points=recovery_points):
        e = found.entry
        row = rows.get(e.path)
        if row is None:
            if len(rows) >= limit:
                truncated = True
                continue
            row = rows[e.path] = {"entry": entry_dict(e), "recovery_points": []}
        row["recovery_points"].insert(0, {"id": found.recovery_point, "time": _iso(found.time)})
        row["entry"] = entry_dict(e)  # points come oldest first: keep the latest
    matches = sorted(rows.values(), key=lambda r: r["entry"]["path"])
    return {"pattern": pattern, "glob": glob, "matches": matches, "truncated": truncated}


def versions(repo, *, path: str) -> dict:
    """Every version of ``path`` across recovery points, newest first."""
    out = []
    for v in engine.file_versions(repo, path=path):
        out.append(
            {
                "recovery_point": v.recovery_point,
                "time": _iso(v.time),
                "changed": v.changed,
                "content_key": v.content_key,
                "entry": entry_dict(v.entry),
            }
        )
    out.reverse()
    return {"path": path, "versions": out}


def restore(
    repo,
    *,
    recovery_point: str,
    paths: list[str] | None,
    target: str | os.PathLike,
    on_conflict: str = CONFLICT_COPY,
    restore_permissions: bool = False,
    sink=None,
    cancel: threading.Event | None = None,
) -> engine.RestoreResult:
    """Restore ``paths`` (absolute, as backed up; None = everything) under ``target``.

    ``target`` ``/`` is the original location. ``restore_permissions`` restores owner and
    group too (mode bits and times are always restored); without it files belong to the
    user running the agent. ``result_dict`` makes the result JSON-able.
    """
    if on_conflict not in CONFLICT_CHOICES:
        raise engine.InvalidArgument(f"on_conflict must be one of {', '.join(CONFLICT_CHOICES)}")
    folder = os.path.normpath(os.path.abspath(target))
    if any(is_reserved(p) for p in stored_paths(paths or [])) and (
        folder == "/" or folder == "/etc" or folder.startswith("/etc/")
    ):
        # (the portal refuses it too): laid over a running system it would do harm
        raise engine.InvalidArgument(
            f"System State cannot be restored into {folder}: choose an empty folder outside / "
            "and /etc, and copy back from there what you need (its README.md says how)"
        )
    return engine.run_restore(
        repo,
        recovery_point=recovery_point,
        target=Path(os.path.abspath(target)),
        paths=paths or None,
        on_conflict=on_conflict,
        restore_owner=bool(restore_permissions),
        sink=sink,
        cancel=cancel,
    )


def result_dict(result: engine.RestoreResult, *, target: str | os.PathLike) -> dict:
    """A restore's result for people and ``--json`` (``target`` made absolute)."""
    return {
        "status": result.status,
        "target": os.path.abspath(target),
        "files": result.files,
        "dirs": result.dirs,
        "symlinks": result.symlinks,
        "bytes": result.bytes,
        "skipped": result.skipped,
        "failed": list(result.failed),
        "warnings": list(result.warnings),
        "duration_s": result.duration_s,
        "message": result.message,
    }


# -- download ---------------------------------------------------------------------------------
def _download_selection(paths: list[str]) -> list[bytes]:
    if not paths:
        raise engine.InvalidArgument("choose at least one file to download")
    return stored_paths(paths)


def download_archive(
    repo,
    *,
    recovery_point: str,
    paths: list[str],
    out,
    max_bytes: int = DOWNLOAD_MAX_BYTES,
    max_files: int = DOWNLOAD_MAX_FILES,
) -> dict:
    """Write a gzip'd tar of the selected items to the binary file ``out``.

    The selection is measured first and refused when larger than ``max_bytes`` or
    ``max_files`` (``DownloadTooLarge``: restore it instead). Names in the archive are
    relative (``home/a/x``) and checked like a restore's; a file whose data fails
    authentication is left out and named in ``failed`` (and in ``HAVEN-NOT-INCLUDED.txt``).
    """
    rp = repo.recovery_point(recovery_point)
    selections = _download_selection(paths)
    files = total = 0
    for e in repo.iter_entries(rp):
        if e.kind in (FILE, HARDLINK) and is_selected(e.path, selections):
            files += 1
            total += e.size
    if files > max_files or total > max_bytes:
        raise DownloadTooLarge(
            f"the selection holds {files} files ({size(total)}); a download may hold at most "
            f"{max_files} files and {size(max_bytes)}. Restore it to a folder instead."
        )
    reader = ChunkReader(repo)
    failed: list[dict] = []
    added = written = 0
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for e in repo.iter_entries(rp, reader):
            if not is_selected(e.path, selections):
                continue
            try:
                name = b"/".join(safe_components(e.path)).decode("utf-8", "surrogateescape")
            except UnsafePath as exc:
                failed.append({"path": display_path(e.path), "reason": str(exc)})
                continue
            if not name:
                continue
            info = tarfile.TarInfo(name)
            info.mtime = e.mtime_ns // 1_000_000_000
            info.mode = stat.S_IMODE(e.mode)
            if e.kind == DIR:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == SYMLINK:
                info.type = tarfile.SYMTYPE
                info.linkname = e.target.decode("utf-8", "surrogateescape")
                tar.addfile(info)
            elif e.kind in (FILE, HARDLINK):
                try:
                    data = _read_content(reader, e)
                except engine.IntegrityError as exc:
                    failed.append({"path": display_path(e.path), "reason": f"not included: {exc}"})
                    continue
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                added += 1
                written += len(data)
        if failed:
            note = "\n".join(f"{f['path']}: {f['reason']}" for f in failed).encode() + b"\n"
            info = tarfile.TarInfo("HAVEN-NOT-INCLUDED.txt")
            info.size = len(note)
            tar.addfile(info, io.BytesIO(note))
    return {
        "recovery_point": rp.id,
        "files": added,
        "bytes": written,
        "failed": failed,
        "status": "completed_with_warnings" if failed else "completed",
    }


def _read_content(reader, e: Entry) -> bytes:
    parts = []
    for cid, n in e.content:
        parts.append(bytes(n) if cid == HOLE_ID else reader.read(cid))
    return b"".join(parts)
