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
