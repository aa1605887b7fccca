"""Small helpers shared by the backends (argument checks, error reasons)."""

from __future__ import annotations

import errno
import socket

from agents.runtime.blobstore.base import InvalidBlobName


def check_name(name: str) -> str:
    """The checks every backend applies, so a name valid on one is valid on all."""
    if not isinstance(name, str) or not name:
        raise InvalidBlobName("a blob name must be a non-empty string")
    if "\x00" in name:
        raise InvalidBlobName(f"blob name {name!r} contains a NUL character")
    if name.startswith("/"):
        raise InvalidBlobName(
            f"blob name {name!r} is absolute; names are relative to the container"
        )
    if "\\" in name:
        raise InvalidBlobName(f"blob name {name!r} contains a backslash; use '/' to separate parts")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidBlobName(
            f"blob name {name!r} has an empty, '.' or '..' part; use plain names separated by '/'"
        )
    if len(name.encode("utf-8")) > 1024:
        raise InvalidBlobName(f"blob name {name[:40]!r}… is longer than 1024 bytes")
    return name


def check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"offset and length must not be negative (got {offset}, {length})")


def network_reason(exc: BaseException) -> str:
    """A short, person-readable reason for a network failure, found in the exception chain."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or (
            isinstance(current, OSError) and current.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return "the host name could not be resolved"
        if isinstance(current, TimeoutError | socket.timeout):
            return "timed out"
        if isinstance(current, ConnectionResetError):
            return "the connection was reset"
        for attr in ("inner_exception", "reason", "__cause__", "__context__"):
            nested = getattr(current, attr, None)
            if isinstance(nested, BaseException):
                todo.append(nested)
        todo.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    text = str(exc).strip().splitlines()
    lowered = " ".join(text).lower()
    if "connection refused" in lowered or "failed to establish a new connection" in lowered:
        return "connection refused"
    if "timed out" in lowered or "timeout" in lowered:
        return "timed out"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "the host name could not be resolved"
    return text[0][:200] if text else type(exc).__name__
