"""The whole status page as one HTML string: pure (model in, markup out), no external resource.

templates/page.html and the section templates it includes write the markup; the engine escapes
every value (markup.py). CSS and the few lines of JavaScript (auto-refresh, a confirm before
delete) are inline, so the page works on an air-gapped LAN; the Content-Security-Policy allows
exactly these two by their hashes and nothing else (no other script, no other origin, no framing).
Tables scroll sideways on a phone.
"""

from __future__ import annotations

import base64
import hashlib

from markupsafe import Markup

from .chart import render_chart
from .markup import TEMPLATES
from .model import Status, Viewer

REFRESH_SECONDS = 15

# Our own static style and script, rendered once without escaping (they are not .html): escaping
# would change the very bytes the CSP hashes below allow.
CSS = TEMPLATES["page.css"].render()
JS = TEMPLATES["page.js"].render(refresh_ms=REFRESH_SECONDS * 1000)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (f"default-src 'none'; style-src {_sha256(CSS)}; script-src {_sha256(JS)}; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def render_page(status: Status, viewer: Viewer) -> str:
    """The page, joined from the pieces the template yields, each made a plain str first.

    Not `Template.render`: it joins a list of every piece, and each escaped value is a Markup, a
    str subclass the garbage collector tracks. With a thousand queue rows that is tens of
    thousands of tracked objects alive at once, which set off full collections of the relay's
    heap - 100 ms stalls in the event loop every few page loads. `str()` copies a piece into an
    untracked str and the Markup is freed at once. (For the same reason the row loops sit at the
    top level of their templates, not in a macro, which would hold its whole output until it
    returns.)"""
    # Markup: CSS and JS are ours (above); the chart is the engine's own output, escaped already
    pieces = TEMPLATES["page.html"].generate(
        status=status, viewer=viewer, now=status.now, chart=render_chart(status.minutes),
        css=Markup(CSS), js=Markup(JS))
    return "".join(map(str, pieces))
