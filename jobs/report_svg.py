"""The Reports page's charts as inline SVG drawn on the server: no JS library, nothing to
load, readable without scripts. Like the vault overview's storage chart (``vaults.chart``),
colours come from CSS classes (static/css/reports.css) so the charts follow the portal's
style; each mark carries a ``<title>`` with its exact figure for hover and screen readers.

``stacked`` draws a bar per day with one segment per series; ``lines`` draws a line per
series, dashed for a projection.
"""

from __future__ import annotations

from datetime import date

from django.template.defaultfilters import filesizeformat
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from jobs.reports import Chart

WIDTH, HEIGHT = 760, 250
LEFT, RIGHT, TOP, BOTTOM = 78, 16, 12, 46
TICKS = 4
AXIS_LABEL = {"count": "Jobs", "bytes": "Bytes", "seconds": "Duration"}


def format_value(value: int | None, unit: str) -> str:
    """A figure as the table view and the marks' titles show it."""
    if value is None:
        return "—"
    if unit == "bytes":
        return filesizeformat(value)
    if unit == "seconds":
        return format_duration(value)
    return str(value)


def format_duration(seconds: int) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s" if s else f"{minutes} min"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min" if m else f"{hours} h"


def _step(value: int, unit: str) -> int:
    """A round tick step so that ``TICKS`` steps cover ``value``: 1, 2, 2.5 or 5 times a
    power of ten (of a binary unit for bytes, of minutes or hours for durations)."""
    if value <= 0:
        return {"bytes": 256, "seconds": 60}.get(unit, 1)
    base = 1
    if unit == "bytes":
        while base * 1024 <= value:
            base *= 1024
    elif unit == "seconds":
        base = 3600 if value >= 4 * 3600 else 60 if value >= 240 else 1
    raw = value / TICKS / base
    magnitude = 1.0
    while magnitude * 10 <= raw:
        magnitude *= 10
    while magnitude > raw:
        magnitude /= 10
    factors = (1, 2, 5, 10) if unit == "count" else (1, 2, 2.5, 5, 10)
    for factor in factors:
        if factor * magnitude >= raw:
            return max(1, round(factor * magnitude * base))
    return round(10 * magnitude * base)


def _day_label(day: date) -> str:
    return f"{day:%b} {day.day}"


def chart_svg(chart: Chart, *, zone_name: str) -> SafeString:
    days, n = chart.days, len(chart.days)
    if chart.kind == "stacked":
        top_value = max((sum(s.values[i] for s in chart.series) for i in range(n)), default=0)
    else:
        top_value = max((v for s in chart.series for v in s.values if v is not None), default=0)
    step = _step(top_value, chart.unit)
    if chart.unit == "count" and step * TICKS < top_value:
        step += 1
    top_value = step * TICKS
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / n

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top_value)

    title_id = f"chart-{chart.slug}-title"
    parts = [
        f'<svg class="report-chart {escape(chart.kind)} chart-{escape(chart.slug)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{title_id}">',
        f'<title id="{title_id}">{escape(chart.title)}, {_day_label(days[0])} to '
        f"{_day_label(days[-1])}</title>",
    ]
    for i in range(TICKS + 1):
        value = step * i
        yy = y(value)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
            f'<text class="axis" x="{LEFT - 8}" y="{yy + 4:.1f}" text-anchor="end">'
            f"{escape(format_value(value, chart.unit))}</text>"
        )
    every = max(1, round(n / 6))
    for i in range(0, n, every):
        xx = LEFT + slot * (i + 0.5)
        parts.append(
            f'<text class="axis" x="{xx:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">'
            f"{_day_label(days[i])}</text>"
        )
    parts.append(
        f'<text class="axis-label" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" '
        f'text-anchor="middle">Day ({escape(zone_name)})</text>'
        f'<text class="axis-label" transform="rotate(-90)" x="{-(TOP + plot_h / 2):.1f}" '
        f'y="14" text-anchor="middle">{AXIS_LABEL[chart.unit]}</text>'
    )
    if chart.kind == "stacked":
        width = max(1.0, slot * 0.7)
        for i, day in enumerate(days):
            base = 0
            for s in chart.series:
                value = s.values[i]
                if not value:
                    continue
                x0 = LEFT + slot * i + (slot - width) / 2
                y0, y1 = y(base + value), y(base)
                parts.append(
                    f'<rect class="s{s.color}" x="{x0:.1f}" y="{y0:.1f}" width="{width:.1f}" '
                    f'height="{max(0.5, y1 - y0):.1f}"><title>{_day_label(day)}: '
                    f"{escape(s.name)} {escape(format_value(value, chart.unit))}</title></rect>"
                )
                base += value
    else:
        for s in chart.series:
            # A line starts at the series' first known value (a vault before its first
            # measurement has none: drawn as nothing, not as zero).
            points = [
                (LEFT + slot * (i + 0.5), y(value))
                for i, value in enumerate(s.values)
                if value is not None
            ]
            if not points:
                continue
            line = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            dashed = " projected" if s.projected else ""
            parts.append(
                f'<polyline class="line s{s.color}{dashed}" points="{line}">'
                f"<title>{escape(s.name)}: {escape(format_value(s.values[-1], chart.unit))} "
                f"on {_day_label(days[-1])}</title></polyline>"
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))
