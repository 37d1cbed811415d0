"""Messages relayed / spooled / failed per minute over the last hour, as inline SVG: pure.

One polyline per kind over a fixed 60-minute x axis; the y axis runs from 0 to the largest count
(at least 1), so an idle hour draws flat lines at the bottom rather than nothing. The SVG scales to
its container (viewBox, width 100%), so it reads on a phone too. This module does the arithmetic;
templates/chart.html draws it.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup

from ..sessions import KINDS, Minute
from .markup import TEMPLATES

WIDTH, HEIGHT = 600, 160
LEFT, RIGHT, TOP, BOTTOM = 34, 8, 10, 22  # margins for the axis labels
COLOURS = {"relayed": "#2e7d32", "spooled": "#ef6c00", "failed": "#c62828"}


def _points(values: Sequence[int], top: int) -> str:
    n = max(len(values) - 1, 1)
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    return " ".join(f"{LEFT + i * w / n:.1f},{TOP + h - v * h / top:.1f}" for i, v in enumerate(values))


def render_chart(minutes: Sequence[Minute]) -> Markup:
    """The chart as an `<svg>` element (with a text alternative for screen readers and tests),
    rendered - and escaped - by the engine, so the page can take it as it is."""
    values = {k: [getattr(m, k) for m in minutes] for k in KINDS}
    peak = max([1, *(v for vs in values.values() for v in vs)])
    series = [{"kind": k, "colour": COLOURS[k], "points": _points(vs, peak), "total": sum(vs)}
              for k, vs in values.items()]
    # the engine's own output, already escaped: marked so the page does not escape it twice
    return Markup(TEMPLATES["chart.html"].render(
        width=WIDTH, height=HEIGHT, left=LEFT, right=RIGHT, top=TOP, base=HEIGHT - BOTTOM, peak=peak,
        minutes=len(minutes), series=series, totals=", ".join(f"{s['kind']} {s['total']}" for s in series)))
