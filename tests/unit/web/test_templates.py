"""The engine, not the code, escapes: every section, with quotes; a name no one passed is an error."""

from __future__ import annotations

import gc
import re
import tomllib
from pathlib import Path

import pytest
from jinja2 import UndefinedError

from relay365.sessions import Summary
from relay365.throttle import Block
from relay365.web import markup
from relay365.web.model import AccountRow, Queue, QueueRow, Status, Viewer
from relay365.web.page import render_page

NOW = 1_800_000_000.0
EVIL = "<script>alert(1)</script>\"'&"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;&amp;"  # markupsafe's spelling of EVIL
WEB = Path(markup.__file__).parent


def evil_status() -> Status:
    def row(failed: bool) -> QueueRow:
        return QueueRow(f"id-{failed}", f"box{EVIL}", "p@lan", (f"rcpt{EVIL}",), NOW - 60, 10, 1, NOW + 60,
                        last_error=f"451 {EVIL}", failed_at=NOW - 5 if failed else None,
                        subject=f"Subject {EVIL}")
    return Status(
        now=NOW, phase=f"ready{EVIL}", version=f"0.1{EVIL}",
        accounts=(AccountRow(f"mailbox{EVIL}", "refresh_token", "SMTP", "needs-auth", code=f"AADSTS{EVIL}",
                             error=f"error {EVIL}", action=f"do {EVIL}", fix=f"fix {EVIL}"),),
        queue=Queue(True, 1, 60.0, waiting=(row(False),), failed=(row(True),)),
        sessions=(Summary(NOW - 5, "smtp", f"peer{EVIL}", user=f"user{EVIL}", mailbox=f"mb{EVIL}",
                          outcome=f"queued{EVIL}", upstream_reply=f"250 {EVIL}"),),
        peer_filter=f"pf{EVIL}", user_filter=f"uf{EVIL}",
        blocks=(Block("ip", f"10.0.0.1{EVIL}", 30.0),), show_subjects=True)


def section(html: str, name: str) -> str:
    found = re.search(rf'<section id="{name}">(.*?)</section>', html, re.S)
    assert found, name
    return found.group(1)


@pytest.mark.parametrize("viewer", [Viewer(), Viewer(True), Viewer(True, True, csrf=f"c{EVIL}",
                                                                    notice=f"n{EVIL}", error=f"e{EVIL}")])
def test_a_hostile_value_is_escaped_in_every_section_quotes_included(viewer):
    html = render_page(evil_status(), viewer)
    assert EVIL not in html and "<script>alert" not in html
    assert len(re.findall("<script>", html)) == 1  # only the page's own
    # (section, how many values there carry EVIL): mailbox, code, error, action, fix; per queue row
    # mailbox, rcpt, last error, subject (+ ids in action forms, which are plain); per session peer,
    # user, mailbox, outcome, reply, and the two filter fields; per block the value
    for name, at_least in (("accounts", 5), ("queue", 8), ("sessions", 7), ("listeners", 1)):
        assert section(html, name).count(ESCAPED) >= at_least, name
    assert f'<span class="phase">ready{ESCAPED}</span>' in html
    assert f'name="user" value="uf{ESCAPED}"' in html  # in an attribute too
    assert f"<td>Subject {ESCAPED}</td>" in section(html, "queue")
    if viewer.logged_in:
        assert html.count(f'name="csrf" value="c{ESCAPED}"') == 6  # logout, 2x retry/delete, unblock
        assert f'value="10.0.0.1{ESCAPED}"' in section(html, "listeners")
        assert f'role="alert">e{ESCAPED}</p>' in html


def test_no_module_escapes_by_hand():
    """The engine escapes; html.escape, an `esc` helper or a `|safe` would be a second way."""
    sources = [p.read_text() for p in sorted(WEB.glob("*.py"))]
    assert not any(re.search(r"\bhtml\.escape|from html import|\bdef esc\(", s) for s in sources)
    assert not any("|safe" in p.read_text() for p in sorted((WEB / "templates").glob("*.html")))


def test_the_environment_autoescapes_html_and_strings():
    assert markup.ENV.from_string("{{ v }}").render(v=EVIL) == ESCAPED
    assert markup.ENV.select_template(["page.html"]).environment.autoescape("page.html") is True


def test_a_name_the_code_never_passed_is_an_error_not_an_empty_cell():
    with pytest.raises(UndefinedError):
        markup.ENV.from_string("<td>{{ nobody_passed_this }}</td>").render()
    with pytest.raises(UndefinedError):
        markup.ENV.from_string("<td>{{ row.no_such_field }}</td>").render(row=Block("ip", "x", 1.0))
    with pytest.raises(UndefinedError):  # the real page without `now`
        markup.TEMPLATES["page.html"].render(status=evil_status(), viewer=Viewer(), chart="", css="", js="")


def test_none_reads_as_a_dash():
    assert markup.ENV.from_string("<td>{{ v }}</td>").render(v=None) == "<td>-</td>"


def test_a_render_reads_no_file(monkeypatch):
    """Every template is loaded at import; rendering never goes back to the loader."""
    def no_io(*_a: object) -> None:
        raise AssertionError("a render read a template file")

    assert markup.ENV.loader is not None
    monkeypatch.setattr(markup.ENV.loader, "get_source", no_io)
    assert 'id="listeners"' in render_page(evil_status(), Viewer(True, True, csrf="x"))


def test_a_thousand_rows_render_without_setting_off_the_garbage_collector():
    """Each escaped value is a Markup, which the collector tracks; held all at once (Template.render
    joins a list of them, a macro holds its output) they set off full collections of the relay's
    heap, 100 ms stalls on a busy relay. render_page lets each go as soon as it is written."""
    rows = tuple(QueueRow(f"id-{i}", "box@x", "p@lan", ("r@x",), NOW - 60, 10, 1, NOW + 60, "451 busy",
                          subject="scan") for i in range(1000))
    big = Status(now=NOW, phase="ready", version="0",
                 queue=Queue(True, 1000, 60.0, waiting=rows, failed=rows),
                 sessions=tuple(Summary(NOW - 5, "smtp", "10.0.0.9", user="u") for _ in range(200)),
                 show_subjects=True)
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    render_page(big, Viewer(True, True, csrf="c" * 64))  # warm: imports, template modules
    gc.collect()
    gc.callbacks.append(count)
    try:
        html = render_page(big, Viewer(True, True, csrf="c" * 64))
    finally:
        gc.callbacks.remove(count)
    assert html.count("<tr>") == 2000 + 200 + 3  # (thead rows: waiting, failed, sessions)
    assert collections == []


def test_every_template_is_package_data_so_the_wheel_ships_it():
    """PackageLoader reads them from the installed package: a file the globs miss is a page that
    works from the source tree and breaks in the container."""
    pyproject = tomllib.loads((WEB.parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["relay365.web"]
    shipped = {p.name for g in globs for p in WEB.glob(g)}
    assert shipped == {p.name for p in (WEB / "templates").iterdir() if p.is_file()}
    assert set(markup.TEMPLATES) == shipped
