"""Assertions about the activity log (vaults.models.ActivityEntry)."""

from __future__ import annotations

from vaults.models import ActivityEntry


def one_entry(*, operation: str, **expected) -> ActivityEntry:
    """The only entry of ``operation``, checked field by field against ``expected``."""
    entries = list(ActivityEntry.objects.filter(operation=operation))
    assert len(entries) == 1, [str(e) for e in ActivityEntry.objects.all()]
    (entry,) = entries
    got = {name: getattr(entry, name) for name in expected}
    assert got == expected
    return entry
