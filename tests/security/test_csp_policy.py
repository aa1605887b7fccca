"""Attack: script injected into a page (a name, a file name an agent reports) runs in an
Owner's browser. Escaping is the first wall; the Content-Security-Policy is the second,
and it holds only if the templates themselves need nothing inline."""

from __future__ import annotations

import re
from pathlib import Path

from django.urls import reverse

from tests.portal.conftest import client_for

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"<style\b", re.I), "a <style> block"),
    (re.compile(r"\sstyle=", re.I), "a style attribute"),
    (re.compile(r"\son[a-z]+=", re.I), "an inline event handler"),
    (re.compile(r"\bhx-on[:-]", re.I), "an hx-on handler (needs eval)"),
    (re.compile(r"hx-(?:trigger|vals|vars)=\"[^\"]*(?:\[|js:)", re.I), "htmx code (needs eval)"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
]


def test_every_kind_of_response_forbids_inline_script_and_framing(alice, subscription):
    client = client_for(alice)
    responses = [
        client.get(reverse("portal:home")),
        client.get(reverse("portal:search"), {"q": "Con"}, HTTP_HX_REQUEST="true"),
        client.get("/no-such-page/"),
        client.get(reverse("portal:login")),
    ]
    for response in responses:
        policy = response["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'", policy
        assert directives["style-src"] == "'self'", policy
        assert directives["frame-ancestors"] == "'none'", policy
        assert directives["object-src"] == "'none'", policy
        assert "unsafe" not in policy


def test_no_template_needs_inline_script_style_or_eval():
    found = []
    for path in sorted(TEMPLATES.rglob("*.html")):
        text = path.read_text()
        for pattern, what in INLINE:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(TEMPLATES)}:{line}: {what}")
    assert found == []
