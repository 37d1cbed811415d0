"""The status page rendered from plain data, no server: escaping, states, actions, subjects."""

from __future__ import annotations

import re

from relay365.secret import Secret
from relay365.sessions import Minute, Summary
from relay365.throttle import Block
from relay365.web import security as sec
from relay365.web.chart import render_chart
from relay365.web.model import AccountRow, ListenerRow, Queue, QueueRow, Status, Viewer
from relay365.web.page import CSP, render_page

NOW = 1_800_000_000.0
EVIL = '<script>alert("x")</script>'


def status(**kw) -> Status:
    row = QueueRow("01800000000000000000-42", "scanner@x.test", "p@lan", (f"bob{EVIL}@x.test",),
                   NOW - 600, 1234, 3, NOW + 30, f"451 4.7.0 {EVIL}", subject=f"Scan {EVIL}")
    base = dict(
        now=NOW, phase="ready", version="0.1.0",
        accounts=(AccountRow("scanner@x.test", "refresh_token", "SMTP", "needs-auth",
                             code="AADSTS70008", action="re-authorise the mailbox",
                             fix="relay365 auth scanner@x.test -c /etc/relay365/config.yaml"),
                  AccountRow("ok@x.test", "refresh_token", "SMTP", "ok", expires_at=NOW + 3000)),
        queue=Queue(True, 1, 600.0, waiting=(row,)),
        sessions=(Summary(NOW - 5, "smtp", f"10.0.0.9{EVIL}", user=f"scanner{EVIL}",
                          outcome="queued", messages=1),),
        listeners=(ListenerRow("smtp", ("127.0.0.1:2525",), 2),),
        blocks=(Block("ip", f"10.1.1.1{EVIL}", 300.0),),
        minutes=tuple(Minute(NOW - 60 * i, relayed=i % 3) for i in range(60)))
    base.update(kw)
    return Status(**base)  # type: ignore[arg-type]


def test_everything_from_clients_envelopes_and_upstreams_is_escaped():
    html = render_page(status(show_subjects=True), Viewer(True, True, csrf="c" * 64))
    assert "<script>alert" not in html
    assert html.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") >= 6
    assert len(re.findall(r"<script>", html)) == 1  # only the page's own


def test_needs_auth_shows_its_code_colour_and_the_exact_fix_command():
    html = render_page(status(), Viewer())
    assert 'class="state bad">needs-auth</span> <span class="code">AADSTS70008' in html
    assert "relay365 auth scanner@x.test -c /etc/relay365/config.yaml" in html
    assert 'class="state ok">ok' in html


def test_read_only_offers_no_action_and_logged_out_offers_the_login():
    ro = render_page(status(), Viewer(admin_enabled=False))
    assert "read-only" in ro and "/action/" not in ro and 'name="token"' not in ro
    out = render_page(status(), Viewer(admin_enabled=True))
    assert 'name="token"' in out and "/action/" not in out


def test_admin_gets_retry_delete_unblock_forms_with_the_csrf_token():
    html = render_page(status(), Viewer(True, True, csrf="abc123"))
    for path in ("/action/retry", "/action/delete", "/action/unblock"):
        assert f'action="{path}"' in html
    assert html.count('name="csrf" value="abc123"') == 4  # retry, delete, unblock, logout


def test_subject_only_with_show_subjects():
    assert "Scan &lt;script" not in render_page(status(), Viewer())
    assert "Scan &lt;script" in render_page(status(show_subjects=True), Viewer())


def test_the_csp_allows_the_inline_css_and_js_by_hash_only():
    assert "'unsafe-inline'" not in CSP and CSP.count("sha256-") == 2


def test_chart_has_three_series_and_the_totals():
    svg = render_chart([Minute(NOW, 1, 2, 3), Minute(NOW + 60, 4, 0, 0)])
    assert svg.count("<polyline") == 3 and "relayed 5, spooled 2, failed 3" in svg


def test_sessions_csrf_and_cookies():
    key = sec.derive_key(Secret("admin-token-1"), b"salt")
    assert key is not None and sec.derive_key(None, b"salt") is None
    cookie = sec.issue_session(key, NOW)
    assert sec.session_valid(key, cookie, NOW + 10)
    assert not sec.session_valid(key, cookie, NOW + sec.SESSION_LIFETIME + 1)
    assert not sec.session_valid(sec.derive_key(Secret("other"), b"salt"), cookie, NOW)
    assert not sec.session_valid(key, cookie[:-1] + "0", NOW)
    assert sec.csrf_valid(key, cookie, sec.csrf_token(key, cookie))
    assert not sec.csrf_valid(key, cookie, "") and not sec.csrf_valid(key, cookie, "x" * 64)
    assert sec.token_matches(Secret("t"), "t") and not sec.token_matches(Secret("t"), "u")
    assert "SameSite=Strict" in sec.set_cookie(cookie, secure=False)
    assert sec.cross_site({"sec-fetch-site": "cross-site"}) and not sec.cross_site({})
