"""A steady report's texts (jobs.services.live.progress_fields) come from formatters cheaper
than Django's filters; a person must see exactly what the templates show."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.contrib.humanize.templatetags.humanize import intcomma
from django.template.defaultfilters import filesizeformat
from django.utils import timezone, translation

from jobs.models import Job
from jobs.services import live
from jobs.templatetags.jobs_tags import phase_label, progress_percent, rate, seconds_human


def _values() -> list[int]:
    rng = random.Random(13)
    edges = [0, 1, 2, 999, 1000, 1023, 1024, 1025, 1535, 1536, 1048575, 1048576]
    edges += [(1 << k) + d for k in (10, 20, 30, 40, 50, 59) for d in (-52, -1, 0, 1, 51)]
    spread = [rng.randrange(0, 1 << rng.randrange(1, 62)) for _ in range(500)]
    return edges + [-v for v in edges] + spread


@pytest.mark.parametrize("language", ["en-us", "de", "hi"])
def test_sizes_and_counts_read_as_djangos_filters_do(language):
    with translation.override(language):
        active = translation.get_language()
        style = live._number_style(active)
        for value in _values():
            assert live._size(value, style, active) == filesizeformat(value), value
            assert live._count(value, style) == intcomma(value), value
        for odd in (None, "", "12", 1.5e9, (1 << 62) + 5):
            assert live._size(odd, style, active) == filesizeformat(odd), odd


def test_a_reports_fields_read_as_the_page_shows_them():
    rng = random.Random(6)
    for n in range(100):
        total = rng.choice([None, 0, rng.randrange(1, 1 << 45)])
        progress = {
            "phase": rng.choice(["scanning", "backing_up", "finalizing", None, "odd_one"]),
            "files_done": rng.randrange(0, 10**7),
            "files_total": rng.choice([None, rng.randrange(0, 10**7)]),
            "bytes_done": rng.randrange(0, 1 << 44),
            "bytes_total": total,
            "rate_bps": rng.choice([None, 0, rng.randrange(1, 1 << 32)]),
            "eta_s": rng.choice([None, rng.randrange(0, 10**6)]),
            "current": rng.choice([None, f"/data/file-{n}"]),
        }
        job = Job(
            status=Job.Status.RUNNING,
            operation=Job.Operation.BACKUP,
            started_at=timezone.now() - timedelta(seconds=rng.randrange(0, 10**5)),
            progress=progress,
            bytes_transferred=rng.randrange(0, 1 << 40),
        )
        pct = progress_percent(progress)
        files = intcomma(progress["files_done"])
        if progress["files_total"] is not None:
            files += f" of {intcomma(progress['files_total'])}"
        data = filesizeformat(progress["bytes_done"])
        if total is not None:
            data += f" of {filesizeformat(total)}"
        assert live.progress_fields(job) == {
            "phase": phase_label(progress["phase"]),
            "percent": f"{pct}%" if pct is not None else "",
            "width": pct,
            "files": files,
            "bytes": data,
            "rate": rate(progress["rate_bps"]),
            "eta": seconds_human(progress["eta_s"]),
            "current": progress["current"] or "—",
            "duration": seconds_human(job.duration),
            "transferred": filesizeformat(job.bytes_transferred),
        }


@pytest.mark.parametrize(
    "value, shown",
    [
        (None, "—"),
        (0, "0 s"),
        (timedelta(milliseconds=400), "under 1 s"),
        (0.999, "under 1 s"),
        (1.5, "1 s"),
        (42, "42 s"),
        (125, "2 min 5 s"),
        (3725, "1 h 2 min"),
        (timedelta(days=3, hours=4), "3 d 4 h"),
    ],
)
def test_a_duration_under_a_second_is_not_shown_as_none_at_all(value, shown):
    """A backup of a few files takes a fraction of a second: its job said "Duration 0 s"."""
    assert seconds_human(value) == shown
