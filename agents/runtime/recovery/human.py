"""Sizes and times for people (the CLI's tables)."""

from __future__ import annotations

from datetime import datetime

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def size(n: int | None) -> str:
    """``1536`` -> ``1.5 KB`` (powers of 1024, like the portal)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def when(moment: datetime | str | None) -> str:
    """A time in this machine's local zone: ``2025-03-01 14:05:09``."""
    if moment is None:
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[list[str]], header: list[str], *, right: tuple[int, ...] = ()) -> str:
    """A plain text table; columns in ``right`` are right-aligned."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])
