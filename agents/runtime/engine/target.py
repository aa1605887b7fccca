"""The restore target: safe manifest paths, and folders opened without following a symlink.

So nothing is ever written outside the target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from agents.runtime.engine.errors import UnsafePath
from agents.runtime.engine.paths import is_reserved
from agents.runtime.engine.progress import display_path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def safe_components(path: bytes) -> list[bytes]:
    """The components of manifest path ``path``, each safe to create under the target;
    ``UnsafePath`` for a relative path (but a reserved one, ``system-state/...``, which goes
    to ``<target>/system-state/...``) or an empty, ``.``, ``..`` or NUL-holding component."""
    if is_reserved(path):
        parts = path.split(b"/")
    elif not path.startswith(b"/"):
        raise UnsafePath(f"refusing {display_path(path)!r}: manifest paths must be absolute")
    elif path == b"/":
        return []
    else:
        parts = path[1:].split(b"/")
    for c in parts:
        if c in (b"", b".", b"..") or b"\0" in c:
            raise UnsafePath(f"refusing {display_path(path)!r}: unsafe path component {c!r}")
    return parts


class TargetTree:
    """Directory fds under the target, walked without following any symlink."""

    def __init__(self, target: Path):
        target.mkdir(parents=True, exist_ok=True)
        # The target itself may be a symlink (the caller chose it); nothing below it is followed.
        self.root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.stack: list[tuple[bytes, int]] = []
        self._last: tuple[list[bytes] | None, int] = (None, self.root)  # the last answer
        self._last_parent: bytes | None = None  # the manifest path of ``_last``'s folder

    def parent_fd(self, path: bytes) -> tuple[int, bytes]:
        """The open folder of manifest path ``path`` (made when missing, like ``dir_fd``) and
        the name to create in it, checked as ``safe_components`` checks every component.
        ``UnsafePath`` for the root itself (it has no folder: the target stands in for it).
        A folder's files come one after another: when the folder is the last one asked for,
        only the name is checked (its folder's path was checked when it was opened)."""
        parent, _, name = path.rpartition(b"/")
        if (
            parent == self._last_parent
            and (parent or path[:1] == b"/")  # ("x" is relative: refused below)
            and name not in (b"", b".", b"..")
            and b"\0" not in name
        ):
            return self._last[1], name
        comps = safe_components(path)
        if not comps:
            raise UnsafePath("the root has no folder in the target")
        fd = self.dir_fd(comps[:-1])
        self._last_parent = parent
        return fd, comps[-1]

    def dir_fd(self, comps: list[bytes]) -> int:
        """The open folder ``comps`` under the target, made when missing; the folders of the
        previous call stay open while they are a prefix of the path asked for."""
        if comps == self._last[0]:  # (a folder's files come one after another)
            return self._last[1]
        self._last_parent = None
        stack = self.stack
        i = 0
        while i < len(stack) and i < len(comps) and stack[i][0] == comps[i]:
            i += 1
        while len(stack) > i:
            os.close(stack.pop()[1])
        self._last = (None, self.root)
        for c in comps[i:]:
            parent = stack[-1][1] if stack else self.root
            stack.append((c, self._open_dir(parent, c, comps)))
        fd = stack[-1][1] if stack else self.root
        self._last = (list(comps), fd)
        return fd

    def _open_dir(self, parent: int, name: bytes, comps: list[bytes]) -> int:
        for _ in range(2):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(
                        f"refusing to restore under {display_path(b'/'.join(comps))!r}: "
                        f"{display_path(name)!r} in the target is a symbolic link or not a folder"
                    ) from None
                raise
        raise UnsafePath(f"cannot create folder {display_path(name)!r}")

    def fresh_dir_fd(self, comps: list[bytes]) -> int:
        """An fd for ``comps`` opened on its own (caller closes), no symlink followed."""
        fd = os.dup(self.root)
        for c in comps:
            try:
                nfd = os.open(c, _DIR_FLAGS, dir_fd=fd)
            finally:
                os.close(fd)
            fd = nfd
        return fd

    def close(self) -> None:
        self._last, self._last_parent = (None, -1), None
        while self.stack:
            os.close(self.stack.pop()[1])
        os.close(self.root)


def lstat_at(name: bytes, dfd: int) -> os.stat_result | None:
    """What is at ``name`` in folder ``dfd`` (a symlink itself, not followed), or None."""
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)
