"""The status page's template engine (Jinja2, autoescaping) and the filters its templates use.

Every value a template prints is escaped by the engine - quotes included, so attributes are safe
too; nothing from a client, an envelope or an upstream reply reaches the page unescaped. The
markup is in templates/; the one element Python writes (`ago`'s `<time>`) is put together from
parts escaped by the engine's own `escape`. `StrictUndefined`: a name a template uses but the
code never passed is an error, not an empty cell. `finalize` prints None as a dash, the page's
"nothing here".

Pure: the templates ship inside the package and are all loaded and compiled here, once, at import
(`auto_reload` off), so a render reads no file; time comes in as `now`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from jinja2 import Environment, PackageLoader, StrictUndefined, Template, select_autoescape
from markupsafe import Markup, escape

from .sections import recipients, state_class


def span(seconds: float) -> str:
    """A duration as two units at most: 45s, 5m 3s, 2h 5m, 3d 4h."""
    s = int(abs(seconds))
    for big, big_size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                             ("m", 60, "s", 1)):
        if s >= big_size:
            rest = (s % big_size) // small_size
            return f"{s // big_size}{big}" + (f" {rest}{small}" if rest else "")
    return f"{s}s"


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def relative(ts: float, now: float) -> str:
    """A moment as people say it: "5m ago", "in 3m"."""
    return f"in {span(ts - now)}" if ts > now else f"{span(now - ts)} ago"


def ago(ts: float | None, now: float) -> Markup | str:
    """`<time>` reading "5m ago" or "in 3m" with the UTC stamp as its title, or a dash.

    The one element Python writes, from parts escaped with the engine's own `escape`: a filter,
    not a template macro, because it runs for every queue row and a macro call (or Markup.format)
    costs several times the formatting."""
    if not ts:
        return "-"
    utc = escape(stamp(ts))
    return Markup(f'<time datetime="{utc}" title="{utc}">{escape(relative(ts, now))}</time>')


def size(n: int) -> str:
    for unit, step in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= step:
            return f"{n / step:.1f} {unit}"
    return f"{n} B"


def _dash(value: object) -> object:
    return "-" if value is None else value


ENV = Environment(
    loader=PackageLoader("relay365.web", "templates"),
    # .html escaped; page.js and page.css are our own, rendered once as plain text (page.py)
    autoescape=select_autoescape(["html"], default_for_string=True),
    undefined=StrictUndefined, finalize=_dash, auto_reload=False,
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
ENV.filters.update(span=span, stamp=stamp, ago=ago, size=size, recipients=recipients, state_class=state_class)
TEMPLATES: dict[str, Template] = {name: ENV.get_template(name) for name in ENV.list_templates()}
