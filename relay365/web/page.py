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
    # Markup: CSS and JS are ours (above); the chart is the engine's own output, escaped already
    return TEMPLATES["page.html"].render(
        status=status, viewer=viewer, now=status.now, chart=render_chart(status.minutes),
        css=Markup(CSS), js=Markup(JS))
