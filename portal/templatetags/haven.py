"""Template helpers of the shell: ``{% load haven %}`` then ``{% icon "vault" %}``."""

from django import template
from django.templatetags.static import static
from django.utils.dates import MONTHS_3
from django.utils.html import format_html

register = template.Library()


@register.simple_tag
def icon(name: str, css_class: str = "") -> str:
    """An icon from static/img/icons.svg (16×16, takes the text colour)."""
    return format_html(
        '<svg class="icon{}" aria-hidden="true" focusable="false"><use href="{}#{}"></use></svg>',
        f" {css_class}" if css_class else "",
        static("img/icons.svg"),
        name,
    )


@register.filter
def role_label(role: str) -> str:
    from portal.models import Role

    try:
        return Role(role).label
    except ValueError:
        return role


@register.filter
def ago(value) -> str:
    """ "just now", "5 minutes ago", "2 days ago"."""
    from django.utils import timezone
    from django.utils.timesince import timesince

    if not value:
        return ""
    if (timezone.now() - value).total_seconds() < 60:
        return "just now"
    return f"{timesince(value).split(',')[0]} ago"


# A UUID no object has: reversed in its place once, then replaced by each row's id.
ID_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


@register.simple_tag
def id_url(name: str, pk) -> str:
    """``{% url name pk %}`` for a view that takes one id, for long lists: Django's reverse
    costs about as much as the rest of a row, so each (URL name, script prefix) is reversed
    once, with a placeholder, and the row's id put in its place. The same URL as the url
    tag (tests/portal/test_templatetags.py)."""
    return id_url_pattern(name).replace(ID_PLACEHOLDER, str(pk))


def id_url_pattern(name: str) -> str:
    """The URL of ``name`` with ``ID_PLACEHOLDER`` for its id: a list built in Python looks
    it up once per page (finding the script prefix and URLconf costs more than the rest)."""
    from django.urls import get_script_prefix, get_urlconf

    key = (name, get_script_prefix(), get_urlconf())
    pattern = _id_urls.get(key)
    if pattern is None:
        from django.urls import reverse

        pattern = _id_urls[key] = reverse(name, args=[ID_PLACEHOLDER])
    return pattern


_id_urls: dict[tuple, str] = {}


@register.filter(expects_localtime=True)
def row_time(value) -> str:
    """``{{ value|date:"d M Y H:i" }}`` for long lists (the same text, in the current time
    zone): Django's date filter parses its format and builds a formatter on every call,
    a tenth of a 200-row page."""
    if value in (None, ""):
        return ""
    return f"{value:%d} {MONTHS_3[value.month].title()} {value:%Y %H:%M}"
