"""Messages relayed / spooled / failed per minute over the last hour, as inline SVG: pure.

One polyline per kind over a fixed 60-minute x axis; the y axis runs from 0 to the largest count
(at least 1), so an idle hour draws flat lines at the bottom rather than nothing. The SVG scales to
its container (viewBox, width 100%), so it reads on a phone too.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from ..sessions import KINDS, Minute

WIDTH, HEIGHT = 600, 160
LEFT, RIGHT, TOP, BOTTOM = 34, 8, 10, 22  # margins for the axis labels
COLOURS = {"relayed": "#2e7d32", "spooled": "#ef6c00", "failed": "#c62828"}


def _points(values: Sequence[int], top: int) -> str:
    n = max(len(values) - 1, 1)
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    return " ".join(f"{LEFT + i * w / n:.1f},{TOP + h - v * h / top:.1f}" for i, v in enumerate(values))


def render_chart(minutes: Sequence[Minute]) -> str:
    """The chart as an `<svg>` element (with a text alternative for screen readers and tests)."""
    series = {k: [getattr(m, k) for m in minutes] for k in KINDS}
    top = max([1, *(v for vs in series.values() for v in vs)])
    totals = ", ".join(f"{k} {sum(vs)}" for k, vs in series.items())
    base = HEIGHT - BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="messages per minute, last hour: {escape(totals)}">',
        f"<title>messages per minute, last hour: {escape(totals)}</title>",
        f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" class="axis"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" class="axis"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{top}</text>',
        f'<text x="{LEFT - 4}" y="{base}" text-anchor="end">0</text>',
        f'<text x="{LEFT}" y="{HEIGHT - 6}">-{len(minutes)}m</text>',
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">now</text>',
    ]
    for kind, values in series.items():
        parts.append(f'<polyline data-kind="{kind}" fill="none" stroke="{COLOURS[kind]}" '
                     f'stroke-width="2" points="{_points(values, top)}"/>')
    parts.append("</svg>")
    legend = " ".join(f'<span class="key k-{k}">&#9632; {k} {sum(vs)}</span>'
                      for k, vs in series.items())
    return "".join(parts) + f'<div class="legend">{legend}</div>'
