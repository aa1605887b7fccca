"""Template helpers of the shell: ``{% load haven %}`` then ``{% icon "vault" %}``."""

from django import template
from django.templatetags.static import static
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
