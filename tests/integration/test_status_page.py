"""The status page in a real browser (Debian's chromium via selenium) against relay365 as a
subprocess, with a real message spooled while the upstream (real Postfix) is shut off by a `Gate`.

What the operator does on the page is done by clicking: log in, retry (the message then arrives in
the real Dovecot mailbox), unblock; forged and read-only requests are sent with urllib.
"""

from __future__ import annotations

import json
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.integration.conftest import CLIENT_SECRET, MAILBOX, PASSWORD, USER
from tests.integration.test_spool_relay import BOB, message, spool_config
from tests.support.forwarder import Gate

pytestmark = pytest.mark.integration
ADMIN_TOKEN = "status-admin-token-9f3e1c"
BROKEN = "broken@example.test"


@pytest.fixture
def gate(upstream):
    g = Gate(upstream.smtp_port)
    yield g
    g.shut()


@pytest.fixture
def browser(tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs chromium and chromium-driver (scripts/install-test-deps.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600",
                f"--user-data-dir={tmp_path / 'chromium'}", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or ""))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def post(url: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, urllib.parse.urlencode(fields).encode(), headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):  # the 303 itself is the answer we look at
        return None


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_for(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def fresh(browser, by: str, selector: str, act=lambda el: el.text):
    """`act` on the element, again if the page's auto-refresh replaced it in between or is still
    loading the next copy (the page reloads every few seconds unless an input has the focus)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    deadline = time.monotonic() + 10
    while True:
        try:
            return act(browser.find_element(by, selector))
        except (StaleElementReferenceException, NoSuchElementException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def click_until(browser, button: str, text: str, timeout: float = 30) -> None:
    """Click `button` until the page says `text`. A click that lands while the auto-refresh is
    replacing the page goes with the old page (CI saw it once on a loaded machine): click again
    after a few seconds without the answer. Retry and unblock are idempotent."""
    from selenium.webdriver.common.by import By
    deadline, clicked = time.monotonic() + timeout, 0.0
    while text not in browser.page_source:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} after clicking {button} for {timeout} s")
        if time.monotonic() - clicked > 4 and browser.find_elements(By.CSS_SELECTOR, button):
            fresh(browser, By.CSS_SELECTOR, button, lambda el: el.click())
            clicked = time.monotonic()
        time.sleep(0.2)


def start(make_relay, tmp_path, pki, idp, upstream, gate, http: dict):
    config = spool_config(tmp_path, pki, idp, upstream, gate)
    config["accounts"].append({"mailbox": BROKEN, "refresh_token": "0.Arevoked-" + "x" * 40})
    config["http"] = {"listen": "127.0.0.1:0", **http}
    config["limits"].update({"auth_block_after": 2, "auth_failure_delay": 0.01, "auth_max_delay": 0.01})
    relay = make_relay(config)
    return relay, f"http://127.0.0.1:{relay.ports['http'][0]}"


def send(relay, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10) as s:
        s.login(USER, PASSWORD)
        s.sendmail("scanner@printers.lan", [BOB], message(subject))


def test_operator_sees_the_stuck_message_and_retries_it_by_clicking(
        make_relay, tmp_path, pki, idp, upstream, gate, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    relay, base = start(make_relay, tmp_path, pki, idp, upstream, gate,
                        {"admin_token": ADMIN_TOKEN, "show_subjects": True})
    upstream.clear()
    send(relay, "Scan <script>alert(1)</script> 0042")
    entry = wait_for(lambda: get_json(f"{base}/api/queue")["waiting"])[0]
    for _ in range(2):  # a wrong password twice blocks the printer's IP
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10) as s, \
                pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(USER, "wrong")
    wait_for(lambda: any(a["state"] == "needs-auth"
                         for a in get_json(f"{base}/api/accounts")["accounts"]))

    browser.get(base + "/")
    html = browser.page_source
    accounts = fresh(browser, By.CSS_SELECTOR, "table.accounts")
    assert BROKEN in accounts and "needs-auth" in accounts and "AADSTS" in accounts
    assert f"relay365 auth {BROKEN} -c {relay.config_path}" in accounts
    waiting = fresh(browser, By.CSS_SELECTOR, "table.waiting")
    assert entry["id"] in waiting and BOB in waiting and "<script>alert(1)</script>" in waiting
    assert not browser.find_elements(By.CSS_SELECTOR, "form[action='/action/retry']")
    blocks = fresh(browser, By.CSS_SELECTOR, "table.blocks")
    assert "127.0.0.1" in blocks
    for secret in (ADMIN_TOKEN, CLIENT_SECRET, PASSWORD, relay.config["accounts"][0]["refresh_token"],
                   relay.config["accounts"][1]["refresh_token"]):
        assert secret not in html

    # sessions: the printer's, and a filter that matches nothing
    sessions = fresh(browser, By.CSS_SELECTOR, "table.sessions")
    assert USER in sessions and "queued" in sessions
    fresh(browser, By.CSS_SELECTOR, "form.filter input[name=user]", lambda el: el.send_keys("nobody"))
    fresh(browser, By.CSS_SELECTOR, "form.filter button", lambda el: el.click())
    assert "no session matches" in fresh(browser, By.ID, "sessions")
    browser.get(base + f"/?user={USER}")
    assert USER in fresh(browser, By.CSS_SELECTOR, "table.sessions")
    browser.save_screenshot(str(tmp_path / "status-page.png"))

    # forged: no cookie, or a cookie without the CSRF token
    assert post(f"{base}/action/retry", {"id": entry["id"]})[0] == 403
    fresh(browser, By.CSS_SELECTOR, "form.login input[name=token]", lambda el: el.send_keys(ADMIN_TOKEN))
    fresh(browser, By.CSS_SELECTOR, "form.login button", lambda el: el.click())
    WebDriverWait(browser, 10).until(lambda b: "Logged in" in b.page_source)
    cookie = browser.get_cookie("relay365_admin")
    assert cookie is not None and cookie["sameSite"] == "Strict" and cookie["httpOnly"]
    jar = {"Cookie": f"relay365_admin={cookie['value']}"}
    assert post(f"{base}/action/retry", {"id": entry["id"]}, jar)[0] == 403
    assert post(f"{base}/action/retry", {"id": entry["id"], "csrf": "0" * 64}, jar)[0] == 403

    # the upstream is back: retry delivers the message into the real mailbox
    gate.open()
    click_until(browser, "form[action='/action/retry'] button", "due now")  # the 303 and the reload
    got = upstream.wait_for_messages(BOB, 1, timeout=20)
    assert b"0042" in got[0]
    # the IP's block and the user's, one click each (again if a click went with a reload)
    click_until(browser, "form[action='/action/unblock'] button", "no IP or user is blocked")
    assert "block was lifted" in browser.page_source
    browser.save_screenshot(str(tmp_path / "status-page-after.png"))


def test_api_delete_needs_the_bearer_token_and_read_only_refuses_everything(
        make_relay, tmp_path, pki, idp, upstream, gate):
    relay, base = start(make_relay, tmp_path, pki, idp, upstream, gate, {"admin_token": ADMIN_TOKEN})
    send(relay, "to delete")
    entry = wait_for(lambda: get_json(f"{base}/api/queue")["waiting"])[0]
    assert "subject" in entry and entry["subject"] is None  # show_subjects is off
    assert post(f"{base}/api/delete", {"id": entry["id"]})[0] == 401
    assert post(f"{base}/api/delete", {"id": entry["id"]},
                {"Authorization": "Bearer wrong"})[0] == 401
    code, body = post(f"{base}/api/delete", {"id": entry["id"]},
                      {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert code == 200 and json.loads(body)["done"] == "deleted"
    assert get_json(f"{base}/api/queue")["waiting"] == []
    assert post(f"{base}/api/delete", {"id": "../../etc"},
                {"Authorization": f"Bearer {ADMIN_TOKEN}"})[0] == 400
    sessions = get_json(f"{base}/api/sessions?user={USER}")["sessions"]
    assert sessions and sessions[0]["user"] == USER and sessions[0]["mailbox"] == MAILBOX
    relay.stop()

    _, ro_base = start(make_relay, tmp_path / "ro", pki, idp, upstream, gate, {})
    with urllib.request.urlopen(ro_base + "/", timeout=10) as r:
        page = r.read().decode()
        assert "read-only" in page and "/action/" not in page
        assert "sha256-" in r.headers["Content-Security-Policy"]
    assert post(f"{ro_base}/login", {"token": ""})[0] == 303
    assert post(f"{ro_base}/action/retry", {"id": entry["id"]})[0] == 403
    assert post(f"{ro_base}/api/retry", {"id": entry["id"]},
                {"Authorization": f"Bearer {ADMIN_TOKEN}"})[0] == 403


BREAK_TEMPLATES = """\
# the test's broken install: page.html no longer compiles
import jinja2
jinja2.PackageLoader = lambda *args, **kwargs: jinja2.DictLoader({"page.html": "{% if %}"})
"""


def test_a_broken_template_still_stops_start_up_check_and_reload(make_relay, tmp_path):
    """The status page is loaded only for an http: listener (relay365.features, to keep a relay at
    rest small), but a broken template is still found where an operator expects it: `relay365
    check` fails, `serve` with http: does not start, and a reload that adds http: is rejected while
    the relay goes on serving. A relay without http: never needs the templates."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BREAK_TEMPLATES)
    env = {"PYTHONPATH": str(site)}
    relay = make_relay(smtp={}, env=env)  # no http: starts, the templates never load
    with_http = {**relay.config, "http": {"listen": "127.0.0.1:0"}}
    relay.write_config(with_http)
    relay.proc.send_signal(signal.SIGHUP)
    rejected = relay.wait_log("reload_rejected")
    assert any("status page does not load" in p and "TemplateSyntaxError" in p
               for p in rejected["problems"]), rejected
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10) as s:  # the old config serves
        assert s.login(USER, PASSWORD)[0] == 235

    check = subprocess.run([sys.executable, "-m", "relay365", "check", "-c", str(relay.config_path)],
                           capture_output=True, text=True, timeout=60, env={**relay.env, **env})
    assert check.returncode == 1, check.stdout + check.stderr
    assert "status page does not load" in check.stderr and "TemplateSyntaxError" in check.stderr

    relay.stop()
    with pytest.raises(AssertionError, match="relay exited with 1"):
        relay.start()
    assert "relay365: status page does not load" in relay.log_path.read_text()
    assert not relay.find("relay_started")
