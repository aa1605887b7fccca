"""Assertions about the activity log (vaults.models.ActivityEntry)."""

from __future__ import annotations

import time

from vaults import activity
from vaults.models import ActivityEntry


def one_entry(*, operation: str, **expected) -> ActivityEntry:
    """The only entry of ``operation``, checked field by field against ``expected``."""
    entries = list(ActivityEntry.objects.filter(operation=operation))
    assert len(entries) == 1, [str(e) for e in ActivityEntry.objects.all()]
    (entry,) = entries
    got = {name: getattr(entry, name) for name in expected}
    assert got == expected
    return entry


def clear_of_a_window_edge(seconds: float = 15) -> None:
    """Refusals that straddle two windows of the clock are rightly two entries: a test that
    counts a loop's tries as one entry first waits until its window has ``seconds`` left."""
    window = activity.COALESCE_WINDOW.total_seconds()
    left = window - time.time() % window
    if left < seconds:
        time.sleep(left + 0.1)
