"""Chaos, short enough for CI: the world breaks under a running relay, and it keeps its promises.

Each case runs the real relay process against real Dovecot/Postfix (a private pair for this
module, since the cases stop and start them) and the fake identity platform with its faults:

- Dovecot restarted under 50 spliced IMAP sessions: each client hears `* BYE` or a clean close,
  and all log in again through the same relay process.
- Postfix stopped in the middle of DATA: `direct` -> a 4xx and nothing delivered; `fallback:
  spool` -> 250 from the spool and the message delivered exactly once when Postfix is back.
- Postfix gone while the *spool worker* is mid-DATA: a forwarder (tests/support/forwarder.py)
  between the worker and the real Postfix lets 512 KiB of a 2 MB message through, then stops
  Postfix (holding the rest back until it is gone) or cuts the link; the message stays queued,
  is retried and lands in the mailbox exactly once.
- The identity platform answering after 20 s, or with 500s: a 4xx within the configured token
  timeout (a 1 s `apps.*.timeout` here), and recovery without a restart.
- state_dir read-only while running (a read-only bind mount in the relay's own mount namespace:
  the tests run as root, where chmod stops nothing): a clear `token_store_failed`, clients still
  served, and the rotated refresh token written once the directory is writable again.
- The spool read-only while the worker runs (the same kind of mount, of state_dir/spool): a new
  message hears 452, never 250; a waiting message is delivered once, although its entry cannot
  be removed; writable again, the removal goes through and new messages are taken.
- kill -9 during a token rotation: `test_kill_9_during_a_token_rotation`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import email
import imaplib
import shutil
import smtplib
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from relay365.standins.jsonhttps import Route
from relay365.tokens.store import TokenStore
from tests.integration.conftest import DOMAIN, MAILBOX, PASSWORD, PASSWORD_HASH, USER, relay_config
from tests.integration.test_smtp_relay import delivered, message, send
from tests.support.forwarder import Gate
from tests.support.upstream import MailUpstream, missing_binaries

pytestmark = pytest.mark.integration
BOB = f"bob@{DOMAIN}"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, pki, idp):
    """Our own Dovecot + Postfix: these tests stop and start them."""
    if missing := missing_binaries():
        pytest.skip(f"needs {', '.join(missing)}")
    # 50 sessions of one mailbox from one address: Dovecot's default cap is 10 (Exchange's is 20)
    with MailUpstream(tmp_path_factory.mktemp("chaos-upstream"), pki, f"{idp.url}/introspect",
                      grant_url=f"{idp.url}/grant", domain=DOMAIN,
                      dovecot_extra="protocol imap {\n  mail_max_userip_connections = 100\n}\n"
                      ) as server:
        yield server


@pytest.fixture
def restore(upstream):
    """Whatever a test stopped is running again afterwards."""
    yield
    for name in ("postfix", "dovecot"):
        if name not in upstream._running:
            upstream.start_daemon(name)


def count(upstream, subject: str) -> int:
    return sum(email.message_from_bytes(m)["Subject"] == subject for m in upstream.messages(BOB))


def no_errors(relay, allowed: tuple[str, ...] = ()) -> None:
    bad = [e for e in relay.events() if e.get("level") in ("error", "critical")
           and e.get("event") not in allowed]
    assert not bad, bad
    assert not [e for e in relay.events() if e.get("event") == "_raw"
                and "Traceback" in e.get("text", "")]


# -- Dovecot restarted under 50 IMAP sessions -------------------------------------------------

def _imap_session(port: int) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    imap.login(USER, PASSWORD)
    imap.select("INBOX")
    return imap


def _what_it_hears(imap: imaplib.IMAP4) -> bytes:
    """Read until the server closes: `* BYE ...` lines, or nothing (a clean close)."""
    heard = b""
    imap.sock.settimeout(20)
    while chunk := imap.sock.recv(4096):
        heard += chunk
    imap.file.close()
    imap.sock.close()
    return heard


def test_dovecot_restarted_under_50_imap_sessions(make_relay, upstream, restore):
    relay = make_relay(imap={})
    with concurrent.futures.ThreadPoolExecutor(25) as pool:
        sessions = list(pool.map(lambda _: _imap_session(relay.imap_port), range(50)))
        upstream.stop_daemon("dovecot")
        heard = list(pool.map(_what_it_hears, sessions))
    assert all(h == b"" or h.startswith(b"* BYE") for h in heard), set(heard)
    upstream.start_daemon("dovecot")
    with concurrent.futures.ThreadPoolExecutor(25) as pool:
        again = list(pool.map(lambda _: _imap_session(relay.imap_port), range(50)))
    for imap in again:
        assert imap.noop()[0] == "OK"
        imap.logout()
    assert relay.proc.poll() is None
    no_errors(relay)


# -- Postfix stopped in the middle of DATA ----------------------------------------------------

def _stop_postfix_mid_data(port: int, upstream, subject: str) -> int:
    """One transaction; Postfix is stopped after half the message went out. The DATA reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.login(USER, PASSWORD)
        s.mail("printer3@lan.local")
        s.rcpt(BOB)
        assert s.docmd("DATA")[0] == 354
        raw = message(subject, size=2_000_000)
        s.send(raw[:1_000_000])
        time.sleep(0.5)  # the relay streams it upstream as it comes
        upstream.stop_daemon("postfix")
        s.send(raw[1_000_000:] + b"\r\n.\r\n")
        return s.getreply()[0]


def test_postfix_stopped_mid_data_direct_is_a_4xx_and_nothing_delivered(make_relay, upstream,
                                                                        restore):
    relay = make_relay(smtp={})
    subject = f"mid-data direct {uuid.uuid4()}"
    started = time.monotonic()
    assert 400 <= _stop_postfix_mid_data(relay.smtp_port, upstream, subject) < 500
    assert time.monotonic() - started < 20
    upstream.start_daemon("postfix")
    after = f"after the restart {uuid.uuid4()}"
    send(relay.smtp_port, after)  # a pooled session to the old Postfix is not reused
    delivered(upstream, BOB, after)
    assert count(upstream, subject) == 0
    no_errors(relay)


def test_postfix_stopped_mid_data_with_fallback_spool_delivers_once(make_relay, upstream,
                                                                     restore):
    users = [{"username": USER, "password_hash": PASSWORD_HASH, "mailbox": MAILBOX,
              "fallback": "spool"}]
    relay = make_relay(smtp={}, users=users, spool={"retry_base": 0.5, "retry_cap": 1,
                                                    "rescan_interval": 0.2, "min_free_space": 0})
    subject = f"mid-data fallback {uuid.uuid4()}"
    assert _stop_postfix_mid_data(relay.smtp_port, upstream, subject) == 250  # queued
    time.sleep(1)  # the worker tries (and fails) meanwhile: retry_base 0.5 s
    assert count(upstream, subject) == 0
    upstream.start_daemon("postfix")
    delivered(upstream, BOB, subject)
    time.sleep(1.5)  # long enough for a second copy, if the spool were to send one
    assert count(upstream, subject) == 1
    no_errors(relay)


# -- the identity platform slow, or failing ---------------------------------------------------

TOKEN_TIMEOUT = 1.0


def slow_identity_platform(idp, monkeypatch, seconds: float) -> None:
    """Entra ID's endpoints answer after `seconds`; Exchange's own token check (Dovecot's
    /introspect and /grant) stays quick, so what is measured is the relay's side."""
    def slow(handler):
        def handler_after_a_while(req):
            time.sleep(seconds)
            return handler(req)
        return handler_after_a_while

    monkeypatch.setattr(idp, "routes", [
        r if r.pattern.pattern in ("/introspect", "/grant") else Route(r.method, r.pattern,
                                                                        slow(r.handler))
        for r in idp.routes])


def _mail_reply(port: int) -> tuple[int, float]:
    """MAIL FROM (which needs a token upstream): its code and how long it took."""
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        s.login(USER, PASSWORD)
        started = time.monotonic()
        code = s.mail("printer3@lan.local")[0]
        return code, time.monotonic() - started


def _recovers(port: int, within: float) -> float:
    started = time.monotonic()
    while (code := _mail_reply(port)[0]) != 250:
        assert 400 <= code < 500 and time.monotonic() - started < within, code
        time.sleep(0.5)
    return time.monotonic() - started


@pytest.mark.parametrize("fault", ["slow_20s", "http_500"])
def test_identity_platform_slow_or_failing_is_a_4xx_in_time_then_recovers(
        make_relay, tmp_path, pki, idp, upstream, monkeypatch, fault):
    config = relay_config(tmp_path, pki, idp, upstream, smtp={},
                          upstream_extra={"smtp_pool_idle": 0})
    config["apps"]["default"]["timeout"] = TOKEN_TIMEOUT
    relay = make_relay(config)
    relay.wait_log("token_refreshed")  # the keeper's first token: cached, so revoke it
    idp.revoke_access_tokens()
    if fault == "slow_20s":
        slow_identity_platform(idp, monkeypatch, 20.0)
    else:
        idp.fail_next(100, "server_error", [50000], status=500, retry_after=0)
    code, took = _mail_reply(relay.smtp_port)
    print(f"{fault}: MAIL FROM answered {code} after {took:.1f} s")
    assert 400 <= code < 500
    # a flight: three tries (RETRY_DELAYS 0.5 s, 2 s), each at most a discovery and a token
    # request of TOKEN_TIMEOUT; then the client hears its 4xx - no hang
    assert took < 3 * 2 * TOKEN_TIMEOUT + 2.5 + 2, took
    monkeypatch.undo()
    idp._faults.clear()
    print(f"{fault}: recovered after {_recovers(relay.smtp_port, within=40):.1f} s")
    assert relay.proc.poll() is None
    no_errors(relay)


# -- state_dir read-only while running --------------------------------------------------------

def _remount(relay, where: Path, mode: str, busy_for: float = 5.0) -> None:
    """Remount the relay's private bind mount of `where` (inside its mount namespace only).

    The kernel refuses to make a mount read-only while a file on it is open for writing
    ("busy"); a write in flight (the token status saved right after `token_refreshed`) holds it
    for milliseconds, so try again for `busy_for` seconds - a file held open for good does not
    pass."""
    deadline = time.monotonic() + busy_for
    while True:
        done = subprocess.run(["nsenter", "-t", str(relay.proc.pid), "-m", "mount", "-o",
                               f"remount,bind,{mode}", str(where)], timeout=10,
                              capture_output=True, text=True)
        if done.returncode == 0 or "busy" not in done.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert done.returncode == 0, done.stderr


def _live(idp, state: Path) -> bool:
    stored = TokenStore(state).get(MAILBOX)
    return stored is not None and stored.refresh_token.reveal() in idp._refresh


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None,
                    reason="needs util-linux unshare and nsenter")
def test_state_dir_read_only_while_running(make_relay, tmp_path, pki, idp, upstream):
    config = relay_config(tmp_path, pki, idp, upstream, smtp={},
                          upstream_extra={"smtp_pool_idle": 0})
    config["users"].append({**config["users"][0], "username": "spooler", "delivery": "spool"})
    config["spool"] = {"min_free_space": 0}
    state = Path(config["state_dir"])
    (state / "spool").mkdir(parents=True)
    relay = make_relay(config, start=False)
    # Root ignores file modes: a read-only bind mount in the relay's own mount namespace is
    # honest (EROFS for root too) and touches nothing outside it. The spool below stays a
    # writable mount of its own, so the held token is shown sending a spooled message; a
    # read-only spool is test_spool_read_only_while_the_worker_runs.
    relay.prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" "$0" && mount --bind "$0/spool" "$0/spool" && exec "$@"',
                    str(state)]
    relay.start()
    relay.wait_log("token_refreshed")
    _remount(relay, state, "ro")
    try:
        idp.revoke_access_tokens()  # the next login needs a new token: the refresh token rotates
        subject = f"read-only state {uuid.uuid4()}"
        send(relay.smtp_port, subject)  # still relayed: the new access token is good
        delivered(upstream, BOB, subject)
        failed = relay.wait_log("token_store_failed")
        assert "Read-only file system" in failed["error"] and "held in memory" in failed["action"]
        assert not _live(idp, state)  # on disk: the token the platform retired
        spooled = f"spooled meanwhile {uuid.uuid4()}"
        send(relay.smtp_port, spooled, login=("spooler", PASSWORD))  # the held token sends it
        delivered(upstream, BOB, spooled)
    finally:
        _remount(relay, state, "rw")
    relay.wait_log("token_store_recovered", timeout=15)
    assert _live(idp, state)
    relay.kill()  # and the rotation survives a kill -9 now
    relay.prefix = []
    relay.start()
    again = f"after read-only {uuid.uuid4()}"
    idp.revoke_access_tokens()
    send(relay.smtp_port, again)
    delivered(upstream, BOB, again)
    no_errors(relay)


# -- kill -9 during a token rotation -----------------------------------------------------------

def _entra_keeps_used_refresh_tokens(idp, monkeypatch) -> None:
    """Entra ID: a redeemed refresh token is not revoked (the new one is to be used, the old one
    still works until it expires); the fake retires it by default (single use)."""
    grant = idp._refresh_grant

    def keep_the_old_one(req):
        old = req.form.get("refresh_token", "")
        rt = idp._refresh.get(old)
        body = grant(req)
        if rt is not None:
            idp._refresh[old] = rt
        return body

    monkeypatch.setattr(idp, "_refresh_grant", keep_the_old_one)


@pytest.mark.parametrize(("point", "platform", "survives"), [
    ("after_idp_answer", "entra", True),
    ("store_before_rename", "entra", True),
    ("store_after_rename", "single_use", True),
    ("store_before_rename", "single_use", False),  # the one window: rotated, not yet renamed
])
def test_kill_9_during_a_token_rotation(make_relay, tmp_path, pki, idp, upstream, monkeypatch,
                                       point, platform, survives):
    if platform == "entra":
        _entra_keeps_used_refresh_tokens(idp, monkeypatch)
    config = relay_config(tmp_path, pki, idp, upstream, smtp={})
    relay = make_relay(config, start=False, env={"RELAY365_TOKEN_CRASH_AT": point})
    with contextlib.suppress(AssertionError):  # it may die before or after relay_started
        relay.start()
    assert relay.proc.wait(15) == -9  # killed at the point, by the keeper's first refresh
    relay.proc = None
    state = Path(config["state_dir"])
    stored = TokenStore(state).get(MAILBOX)  # the store is whole either way
    assert (stored is not None) == (point == "store_after_rename")
    relay.env.pop("RELAY365_TOKEN_CRASH_AT")
    relay.start()
    subject = f"after kill -9 at {point} {uuid.uuid4()}"
    if survives:
        send(relay.smtp_port, subject)
        delivered(upstream, BOB, subject)
        assert _live(idp, state)
    else:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            send(relay.smtp_port, subject)
        assert 400 <= refused.value.smtp_code < 500
        assert relay.wait_log("token_failed")["code"] == "AADSTS70000"  # needs relay365 auth


# -- Postfix stopped while the spool worker is mid-DATA ---------------------------------------

SPOOL_FAST = {"retry_base": "0.5s", "retry_cap": "1s", "rescan_interval": "0.2s",
              "min_free_space": 0}
BIG = 2_000_000  # the message; the worker's DATA to Postfix is cut after CUT bytes of it
CUT = 512 * 1024  # bytes from the relay: the dialogue before DATA (TLS, EHLO, AUTH with its
# token, MAIL, RCPT) is a few KB, so this is inside the body, and 1.4 MB before its end


@pytest.fixture
def gate(upstream):
    g = Gate(upstream.smtp_port)
    g.open()
    yield g
    g.shut()


def spool_relay(make_relay, tmp_path, pki, idp, upstream, gate, start: bool = True):
    """`delivery: spool` through `gate`: every message is the spool worker's to deliver."""
    config = relay_config(tmp_path, pki, idp, upstream, smtp={})
    config["upstream"]["smtp"]["port"] = gate.port
    config["users"][0]["delivery"] = "spool"
    config["spool"] = dict(SPOOL_FAST)
    return make_relay(config, start=start)


def data_reply(port: int, subject: str, size: int = 0) -> tuple[int, bytes]:
    """One message through the relay's SMTP: the reply to its DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.login(USER, PASSWORD)
        s.mail("printer3@lan.local")
        assert s.rcpt(BOB)[0] == 250
        return s.data(message(subject, size=size))


def queued(port: int, subject: str, size: int = 0) -> str:
    """250 from the spool; the id of the queue entry."""
    code, text = data_reply(port, subject, size)
    assert code == 250 and text.startswith(b"2.0.0 OK queued as "), (code, text)
    return text.decode().rsplit(" ", 1)[1]


@pytest.mark.parametrize("how", ["postfix_stopped", "link_cut"])
def test_postfix_gone_while_the_spool_worker_is_mid_data_delivers_once(
        make_relay, tmp_path, pki, idp, upstream, gate, restore, how):
    """The worker's DATA to the real Postfix breaks after CUT bytes: Postfix is stopped there
    (the forwarder holds the rest back until it is gone), or the link is cut under both."""
    relay = spool_relay(make_relay, tmp_path, pki, idp, upstream, gate)
    stop = (lambda: upstream.stop_daemon("postfix")) if how == "postfix_stopped" else None
    gate.cut_after(CUT, then=stop)
    postfix_log = upstream.logdir / "postfix.log"
    seen = postfix_log.stat().st_size
    subject = f"worker mid-data {how} {uuid.uuid4()}"
    entry_id = queued(relay.smtp_port, subject, size=BIG)
    assert gate.cut.wait(15), relay.log_text()
    deferred = relay.wait_log("spool_deferred", id=entry_id, timeout=15)
    assert deferred["verdict"] == "defer_mailbox", deferred  # the session broke, not the message
    print(f"{how}: deferred with {deferred['error']!r}")
    if how == "postfix_stopped":
        relay.wait_log("spool_deferred", id=entry_id, attempts=2, timeout=15)  # Postfix is away
        assert count(upstream, subject) == 0
        upstream.start_daemon("postfix")
    else:
        with open(postfix_log, "rb") as f:  # Postfix saw the body start, and never its end
            f.seek(seen)
            assert b"lost connection after DATA" in f.read(), upstream.log_tail()
    delivered(upstream, BOB, subject)
    assert relay.wait_log("spool_delivered", id=entry_id)["attempts"] >= 2
    time.sleep(1.5)  # retries come every 0.5-1 s: a second copy would be here by now
    assert count(upstream, subject) == 1
    assert not list((Path(relay.config["state_dir"]) / "spool" / "queue").iterdir())
    no_errors(relay)


# -- the spool read-only while the worker runs ------------------------------------------------

def relay_on_its_own_spool_mount(make_relay, tmp_path, pki, idp, upstream, gate, *,
                                 read_only: bool):
    """A spool relay, with a `direct` user beside, started in a mount namespace of its own where
    its spool is bind-mounted onto itself (read-only from the start when `read_only`), so that
    `_remount` can turn it read-only or back without touching any mount outside."""
    relay = spool_relay(make_relay, tmp_path, pki, idp, upstream, gate, start=False)
    relay.config["users"].append({**relay.config["users"][0], "username": "direct",
                                  "delivery": "direct"})
    spool = Path(relay.config["state_dir"]) / "spool"
    spool.mkdir(parents=True)
    mount = 'mount --bind "$0" "$0" && ' + ('mount -o remount,bind,ro "$0" && ' if read_only else "")
    relay.prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    mount + 'exec "$@"', str(spool)]
    relay.start()
    return relay, spool


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None,
                    reason="needs util-linux unshare and nsenter")
def test_spool_read_only_while_the_worker_runs(make_relay, tmp_path, pki, idp, upstream, gate):
    """A message waits in the queue (Office 365 away), then the spool turns read-only: a new
    message hears a 4xx, never 250; the waiting one is delivered once Office 365 is back, and its
    entry, which cannot be removed, is not sent again; writable again, the removal goes through
    and new messages are taken - no restart."""
    gate.shut()
    relay, spool = relay_on_its_own_spool_mount(make_relay, tmp_path, pki, idp, upstream, gate,
                                                read_only=False)
    waiting = f"waiting in a read-only spool {uuid.uuid4()}"
    waiting_id = queued(relay.smtp_port, waiting)
    relay.wait_log("spool_deferred", id=waiting_id, timeout=15)
    _remount(relay, spool, "ro")
    try:
        refused = f"refused by a read-only spool {uuid.uuid4()}"
        code, text = data_reply(relay.smtp_port, refused)
        assert (code, text[:5]) == (452, b"4.3.1"), (code, text)  # nobody holds it: retry
        error = relay.wait_log("spool_refused")["error"]
        assert error == f"cannot queue the message in {spool}: EROFS (Read-only file system)"
        gate.open()  # Office 365 is back
        # a message that needs no spool goes through: 1 MB, more than a DATA held in memory
        direct = f"direct past a read-only spool {uuid.uuid4()}"
        send(relay.smtp_port, direct, login=("direct", PASSWORD), size=1_000_000)
        delivered(upstream, BOB, direct)
        unwritten = relay.wait_log("spool_write_failed", id=waiting_id, step="remove", timeout=15)
        assert unwritten["path"] == str(spool / "queue" / waiting_id), unwritten
        assert "will not send it again" in unwritten["action"], unwritten
        delivered(upstream, BOB, waiting)
        time.sleep(2)  # ten rescans (0.2 s) and retries (0.5-1 s): a second copy would be here
        assert count(upstream, waiting) == 1
        assert (spool / "queue" / waiting_id).is_dir()  # delivered, and still on disk
    finally:
        _remount(relay, spool, "rw")
    relay.wait_log("spool_write_recovered", id=waiting_id, timeout=10)  # WRITE_RETRY: 2 s
    assert not list((spool / "queue").iterdir())
    after = f"after the read-only spool {uuid.uuid4()}"
    queued(relay.smtp_port, after)
    delivered(upstream, BOB, after)
    assert (count(upstream, waiting), count(upstream, refused), count(upstream, after)) == (1, 0, 1)
    assert relay.proc.poll() is None
    no_errors(relay, allowed=("spool_refused", "spool_write_failed"))


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None,
                    reason="needs util-linux unshare and nsenter")
def test_relay_starts_on_a_read_only_spool_and_takes_it_up_when_writable(
        make_relay, tmp_path, pki, idp, upstream, gate):
    """The spool is read-only before the relay starts (a disk remounted read-only after an error,
    a wrong volume mount): the relay still starts and serves what needs no spool, a spool message
    hears 452 naming the directory, never 250; once the spool is writable, the worker takes it up
    and spooled mail flows - no restart."""
    relay, spool = relay_on_its_own_spool_mount(make_relay, tmp_path, pki, idp, upstream, gate,
                                                read_only=True)
    unwritable = relay.wait_log("spool_unwritable")
    assert unwritable["error"] == f"cannot queue the message in {spool}: EROFS (Read-only file system)"
    assert unwritable["action"].startswith(f"make {spool} writable"), unwritable
    try:
        refused = f"refused by a spool read-only from the start {uuid.uuid4()}"
        code, text = data_reply(relay.smtp_port, refused)
        assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
        assert relay.wait_log("spool_refused")["error"] == (
            f"cannot queue the message in {spool}: EROFS (Read-only file system)")
        direct = f"direct past a spool read-only from the start {uuid.uuid4()}"
        send(relay.smtp_port, direct, login=("direct", PASSWORD))
        delivered(upstream, BOB, direct)
    finally:
        _remount(relay, spool, "rw")
    after = f"spooled once the spool is writable {uuid.uuid4()}"
    deadline = time.monotonic() + 15
    while (reply := data_reply(relay.smtp_port, after))[0] != 250:  # no restart in between
        assert reply[0] == 452 and time.monotonic() < deadline, reply
        time.sleep(0.5)
    delivered(upstream, BOB, after)
    assert (count(upstream, refused), count(upstream, after)) == (0, 1)
    relay.wait_log("spool_writable", spool=str(spool))
    assert len(relay.find("spool_unwritable")) == 1  # said once, not every 2 s
    assert relay.proc.poll() is None
    no_errors(relay, allowed=("spool_refused", "spool_unwritable"))
