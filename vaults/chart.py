"""The overview's "Backup storage" chart: an inline SVG drawn on the server, no JS library.

The line is a step line (usage holds its value until the next sample) from the first
sample in the window to now, over a y axis with round byte ticks.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.template.defaultfilters import filesizeformat
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 70, 24, 12, 28
TICKS = 4


def _nice_step(value: int) -> int:
    """A round tick step so that ``TICKS`` steps cover ``value``: 1, 2, 2.5 or 5 times a
    power of ten of a binary unit (B, KB, MB, …), so the labels read "2.5 MB", not "2.4 MB"."""
    if value <= 0:
        return 256
    unit = 1
    while unit * 1024 <= value:
        unit *= 1024
    raw = value / TICKS / unit
    magnitude = 1.0
    while magnitude * 10 <= raw:
        magnitude *= 10
    while magnitude > raw:
        magnitude /= 10
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= raw:
            return max(1, round(factor * magnitude * unit))
    return round(10 * magnitude * unit)


def usage_chart_svg(samples, *, now: datetime, days: int = 30) -> SafeString:
    """``samples``: objects with ``taken_at`` and ``bytes_used``, oldest first."""
    start = now - timedelta(days=days)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = _nice_step(max((s.bytes_used for s in samples), default=0))
    top_value = step * TICKS

    def x(moment: datetime) -> float:
        moment = max(moment, start)
        return LEFT + plot_w * (moment - start).total_seconds() / (now - start).total_seconds()

    def y(value: int) -> float:
        return TOP + plot_h * (1 - value / top_value)

    parts = [
        f'<svg class="usage-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="usage-chart-title">',
        f'<title id="usage-chart-title">Backup storage used over the last {days} days</title>',
    ]
    for i in range(TICKS + 1):
        value = step * i
        yy = y(value)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
            f'<text class="axis" x="{LEFT - 8}" y="{yy + 4:.1f}" text-anchor="end">'
            f"{escape(filesizeformat(value))}</text>"
        )
    for i in range(0, days + 1, max(1, days // 5)):
        moment = start + timedelta(days=i)
        anchor = "end" if i == days else "start" if i == 0 else "middle"
        parts.append(
            f'<text class="axis" x="{x(moment):.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
            f"{moment:%b %-d}</text>"
        )
    if samples:
        points: list[tuple[float, float]] = []
        for sample in samples:
            px, py = x(sample.taken_at), y(sample.bytes_used)
            if points:
                points.append((px, points[-1][1]))
            points.append((px, py))
        points.append((x(now), points[-1][1]))
        line = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        base = TOP + plot_h
        area = f"{points[0][0]:.1f},{base} {line} {points[-1][0]:.1f},{base}"
        parts.append(f'<polygon class="area" points="{area}"/>')
        parts.append(f'<polyline class="line" points="{line}"/>')
        last = samples[-1]
        parts.append(
            f'<circle class="dot" cx="{points[-1][0]:.1f}" cy="{points[-1][1]:.1f}" r="3">'
            f"<title>{escape(filesizeformat(last.bytes_used))} on "
            f"{last.taken_at:%Y-%m-%d %H:%M}</title></circle>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))
