"""The whole status page as one HTML string: pure (model in, markup out), no external resource.

CSS and the few lines of JavaScript (auto-refresh, a confirm before delete) are inline, so the page
works on an air-gapped LAN; the Content-Security-Policy allows exactly these two by their hashes
and nothing else (no other script, no other origin, no framing). Tables scroll sideways on a phone.
"""

from __future__ import annotations

import base64
import hashlib

from . import sections
from .chart import render_chart
from .markup import esc, stamp
from .model import Status, Viewer

REFRESH_SECONDS = 15

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 .6em;color:#222}
header{display:flex;flex-wrap:wrap;gap:.5em 1.5em;align-items:baseline;border-bottom:1px solid #ccc}
h1{font-size:1.3em;margin:.4em 0}h2{font-size:1.1em;margin:1.2em 0 .3em}h3{font-size:1em;margin:.6em 0 .2em}
nav a{margin-right:.8em}.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .5em;
border-bottom:1px solid #eee;vertical-align:top}th{background:#f4f4f4;white-space:nowrap}
.state{padding:.05em .45em;border-radius:.3em;color:#fff;background:#777;white-space:nowrap}
.state.ok{background:#2e7d32}.state.busy{background:#1565c0}.state.bad{background:#c62828}
.state.warn{background:#ef6c00}.code{font-family:monospace}
.note{font-size:.9em;color:#555}.fix{background:#fff3cd;padding:.1em .3em;user-select:all}
.empty{color:#777}.inline{display:inline;margin-right:.3em}.flash{padding:.4em;background:#e8f5e9}
.flash.err{background:#ffebee}.chart{width:100%;max-height:200px}.chart text{font-size:10px;fill:#555}
.axis{stroke:#999}.legend .key{margin-right:1em}.k-relayed{color:#2e7d32}.k-spooled{color:#ef6c00}
.k-failed{color:#c62828}code.id{font-size:.85em}
@media (max-width:600px){body{font-size:13px}th,td{padding:.2em .3em}}
"""

JS = """
(function(){var box=document.getElementById('auto');
setInterval(function(){var a=document.activeElement;
if(box&&box.checked&&!(a&&(a.tagName==='INPUT'||a.tagName==='BUTTON')))location.reload();},REFRESH_MS);
document.querySelectorAll('form[data-confirm]').forEach(function(f){f.addEventListener('submit',
function(e){if(!confirm(f.dataset.confirm))e.preventDefault();});});})();
""".replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (f"default-src 'none'; style-src {_sha256(CSS)}; script-src {_sha256(JS)}; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _admin_bar(viewer: Viewer) -> str:
    if not viewer.admin_enabled:
        return '<span class="mode">read-only (set http.admin_token to allow actions)</span>'
    if viewer.logged_in and viewer.csrf:
        return ('<form method="post" action="/logout" class="inline"><input type="hidden" '
                f'name="csrf" value="{esc(viewer.csrf)}"><span class="mode">admin</span> '
                '<button type="submit">log out</button></form>')
    return ('<form method="post" action="/login" class="inline login"><label>admin token '
            '<input type="password" name="token" autocomplete="current-password" size="16">'
            '</label> <button type="submit">log in</button></form>')


def _flash(viewer: Viewer) -> str:
    if viewer.error:
        return f'<p class="flash err" role="alert">{esc(viewer.error)}</p>'
    if viewer.notice:
        return f'<p class="flash" role="status">{esc(viewer.notice)}</p>'
    return ""


def render_page(status: Status, viewer: Viewer) -> str:
    head = ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>relay365 status</title><style>{CSS}</style></head><body>')
    header = (f'<header><h1>relay365</h1><span class="phase">{esc(status.phase)}</span>'
              f'<span>v{esc(status.version)}</span><span>{esc(stamp(status.now))}</span>'
              '<label><input type="checkbox" id="auto" checked> auto-refresh</label>'
              f"{_admin_bar(viewer)}</header>"
              '<nav><a href="#accounts">accounts</a><a href="#queue">queue</a>'
              '<a href="#sessions">sessions</a><a href="#listeners">listeners</a></nav>')
    chart = ('<section id="chart"><h2>Messages per minute, last hour</h2>'
             + render_chart(status.minutes) + "</section>")
    body = (sections.accounts(status) + sections.queue(status, viewer) + chart
            + sections.sessions(status) + sections.listeners(status, viewer))
    return f"{head}{header}{_flash(viewer)}<main>{body}</main><script>{JS}</script></body></html>"
