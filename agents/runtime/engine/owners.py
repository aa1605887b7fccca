"""Owners by name and number: uid/gid → name when backing up, name → uid/gid when restoring."""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd

from agents.runtime.engine.format import Entry


class OwnerNames:
    """User and group names of uids and gids, looked up once each (``b""``: no name)."""

    def __init__(self) -> None:
        self.users: dict[int, bytes] = {}
        self.groups: dict[int, bytes] = {}

    def user(self, uid: int) -> bytes:
        name = self.users.get(uid)
        if name is None:
            try:
                name = os.fsencode(pwd.getpwuid(uid).pw_name)
            except KeyError:
                name = b""
            self.users[uid] = name
        return name

    def group(self, gid: int) -> bytes:
        name = self.groups.get(gid)
        if name is None:
            try:
                name = os.fsencode(grp.getgrgid(gid).gr_name)
            except KeyError:
                name = b""
            self.groups[gid] = name
        return name


def owner_of(e: Entry) -> tuple[int, int]:
    """By name when this machine knows the name, else the stored number."""
    return _uid(e.user, e.uid), _gid(e.group, e.gid)


@functools.lru_cache(maxsize=4096)
def _uid(name: bytes, uid: int) -> int:
    if name:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(os.fsdecode(name)).pw_uid
    return uid


@functools.lru_cache(maxsize=4096)
def _gid(name: bytes, gid: int) -> int:
    if name:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(os.fsdecode(name)).gr_gid
    return gid
