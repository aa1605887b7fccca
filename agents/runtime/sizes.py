"""Byte counts for people, as the portal writes them beside the agent's messages and on
the job pages: Django's ``filesizeformat`` (powers of 1024, ``1 byte``, ``38 bytes``,
``2.9 MB``), so one size reads the same in the terminal, in a failed job's reason and on
the page. The agent does not import Django: ``tests/runtime/test_sizes.py`` holds the two
to each other."""

from __future__ import annotations

_UNITS = ("KB", "MB", "GB", "TB", "PB")


def size_text(n: float) -> str:
    """``n`` bytes in words: whole bytes below 1 KB, else one decimal of the largest unit
    (up to PB) that keeps the figure under 1024."""
    if n < 0:
        return "-" + size_text(-n)
    if n < 1024:
        count = int(n)
        return f"{count} byte" if count == 1 else f"{count} bytes"
    value = n / 1024
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
