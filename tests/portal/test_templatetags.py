"""Template helpers of the shell (portal/templatetags/haven.py)."""

from __future__ import annotations

import uuid

from django.template import Context, Template
from django.urls import reverse, set_script_prefix


def test_id_url_gives_the_url_tag_s_url_for_each_id_and_script_prefix():
    template = Template("{% load haven %}{% id_url 'jobs:detail' pk %}")
    try:
        for prefix in ("/", "/haven/"):
            set_script_prefix(prefix)
            for pk in (uuid.uuid4(), uuid.uuid4()):
                expected = reverse("jobs:detail", args=[pk])
                assert template.render(Context({"pk": pk})) == expected
                assert expected.startswith(f"{prefix}jobs/{pk}")
    finally:
        set_script_prefix("/")


def test_row_time_gives_the_date_filter_s_text_in_the_current_time_zone():
    from datetime import UTC, datetime

    from django.utils import timezone

    template = Template(
        '{% load haven %}{{ t|row_time }}|{{ t|date:"d M Y H:i" }}|{{ n|row_time }}'
    )
    for zone in ("UTC", "Pacific/Auckland"):
        with timezone.override(zone):
            for t in (
                datetime(2026, 1, 5, 23, 7, tzinfo=UTC),
                datetime(2026, 12, 31, 11, 0, tzinfo=UTC),
            ):
                fast, django_s, none = template.render(Context({"t": t, "n": None})).split("|")
                assert fast == django_s and none == ""
