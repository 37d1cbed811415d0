"""A private Dovecot + Postfix pair that behaves like Office 365 towards relay365.

Theory of operation
-------------------
`MailUpstream` writes a complete, self-contained configuration into one instance directory and starts
`dovecot -c FILE` and `postfix -c DIR` from it. Nothing under /etc is read for settings (Postfix only
takes its file list from /etc/postfix/postfix-files to create the queue), nothing system-wide is
touched, and `stop()` signals only the two master PIDs this object started (from the PID files in its
own directory). Several instances can run one after another, or side by side, in one process.

                  relay365 (code under test)
                     |  IMAPS 993-style        |  SMTP submission, STARTTLS
                     v                          v
      Dovecot imap-login (imap_port)      Postfix smtpd (smtp_port)
      AUTH=XOAUTH2 only                   AUTH XOAUTH2 via Dovecot's auth socket
                     \\                        /        \\
                      Dovecot auth: passdb oauth2       LMTP -> Dovecot -> Maildir
                      -> RFC 7662 introspection (https, test CA)

Office 365 behaviour that tests can lean on:
- IMAP is implicit TLS only; only XOAUTH2 is offered (OAUTHBEARER on request); no PLAIN/LOGIN.
- SMTP needs STARTTLS before AUTH; only authenticated clients may send; a mailbox may only send as
  itself (Exchange's SendAs rule) - rejected after DATA by default, like Exchange (`sendas_check`).
- `reject-me@<domain>` is refused with 550 5.1.1, `tempfail@<domain>` with 451 4.3.0, at RCPT.
- The mailbox `smtp-off@<domain>` logs in, then gets Exchange's answer for a tenant or mailbox with
  SMTP AUTH disabled, `535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is
  disabled ...`, at MAIL FROM (Postfix's `check_sasl_access`; its AUTH reply code is fixed at 5.7.8).
- Message size limit 36700160 (Exchange's 35 MB); AUTH lines up to 32 KiB (real tokens are long).
- EHLO offers PIPELINING, as Exchange Online does; `pipelining=False` takes it out of EHLO.
  Postfix 3.7 still accepts a client that pipelines MAIL and RCPT regardless (seen here: with
  `smtpd_data_restrictions = reject_unauth_pipelining` its DATA got 354 all the same), so a test
  that must see one command at a time watches the wire (tests/support/recorder.py).
- Every `<anything>@<domain>` mailbox exists; mail is stored as Maildir with CRLF line ends, i.e. the
  stored bytes are exactly what IMAP FETCH serves.

What the identity provider must answer (Dovecot 2.3.19, checked):
- introspection_url gets `POST token=<token>` (form) with `X-Dovecot-Auth-Service: imap|smtp` and
  `-Local`/`-Remote` headers. Valid: 200 `{"active": true, "username": "<mailbox>"}` - the username
  must equal the SASL user (case-insensitively) or the login fails. Invalid: 200 `{"active": false}`.
  Either way a failure is permanent: IMAP `NO [AUTHENTICATIONFAILED]`, SMTP `535 5.7.8`. An
  unreachable endpoint gives IMAP `NO [UNAVAILABLE]` but still SMTP `535 5.7.8` (Postfix does not
  pass Dovecot's temporary flag through for XOAUTH2).
- With `grant_url`, every login (delegated or app-only) instead POSTs `grant_type=password&
  username=<mailbox>&password=<token>&client_id=relay365-test-upstream&client_secret=...` there: the
  only request that names the mailbox an app-only token is used for. Allow with 200
  `{"access_token": "...", "token_type": "Bearer", "username": "<mailbox>", "active": true}`, refuse
  with 400 `{"error": "invalid_grant"}` (permanent failure). Introspection is then skipped.
- Failed logins are answered after up to 0.5 s (Dovecot's failure flush timer), never later:
  `auth_failure_delay = 0` and the anvil auth penalty are off, so many failures in a row stay fast.

`deliver()`/`deliver_many()` write straight into the Maildir (exact bytes, milliseconds for hundreds of
messages or 25 MB); mail sent through Postfix arrives via LMTP with Return-Path, Delivered-To and
Received headers added, as Exchange adds its own.

Users and permissions: Postfix and Dovecot must run as root (master processes) and drop to
unprivileged users: Postfix's `postfix` user, Dovecot's `dovecot`/`dovenull`, and for mail access the
system `mail` user (uid 8), which owns every Maildir (`mail_uid`/`mail_gid`, with `first_valid_uid`
lowered to it; Dovecot refuses mail access as root outright). Those users need to traverse to the
sockets, CA file and Maildirs, so the instance directory must be world-searchable. pytest's tmp dirs
live under a 0700 `/tmp/pytest-of-<user>`: in that case the instance directory is a private
`/tmp/relay365-upstream-*` (mode 0755) linked from `workdir/<name>`, and `stop()` copies the logs
into `workdir/<name>-logs` before removing it. Keys are copied in with mode 0600 (read only by the
root-run Dovecot config process and Postfix smtpd before it drops privileges).

Instance directory: etc/ (dovecot.conf, oauth2.conf.ext, postfix/), tls/, run/ (Dovecot base_dir,
its LMTP socket), spool/ (Postfix queue; Dovecot's auth and LMTP sockets for Postfix in
spool/private/), data/, state/, mail/<domain>/<local>/Maildir, log/ (dovecot.log, postfix.log via
postlogd's maillog_file - no syslog needed - and both daemons' startup output).
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol

BINARIES = ("dovecot", "doveadm", "postfix", "postconf", "postsuper")
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

MAIL_USER = "mail"  # Debian's uid 8: exists everywhere, owns no login, fine to own test Maildirs
EXCHANGE_MESSAGE_SIZE_LIMIT = 36700160  # Exchange Online's default 35 MB send limit
AUTH_LINE_LIMIT = 32768  # Exchange tokens run 1.5-3 kB; Postfix defaults (2048/12288) reject them
START_TIMEOUT = 15.0
START_ATTEMPTS = 3
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 60

_instances = itertools.count(1)
_ports_handed_out: set[int] = set()
_last_stamp = 0  # microseconds, see _next_stamp()


class UpstreamError(RuntimeError):
    """The mail upstream could not be started or used; the message carries the log tail."""


class _HasCerts(Protocol):
    ca_file: Path
    cert_file: Path
    key_file: Path


def _instance_name() -> str:
    """Unique per process and start: names Postfix's syslog/multi-instance and Dovecot's instance."""
    return f"r365up-{os.getpid()}-{next(_instances)}"


def missing_binaries() -> list[str]:
    """Names of required Dovecot/Postfix programs not installed (empty when the harness can run)."""
    return [b for b in BINARIES if shutil.which(b, path=SBIN_PATH) is None]


def _below_ephemeral() -> range:
    """Ports under the kernel's ephemeral range: it never gives one of them to an outgoing
    connection, so no client - ours, or any other program's on this machine - can take a port
    between the moment it is chosen here and the moment a server binds it. (A port from
    `bind(0)` is an ephemeral one: with many connections open, one of them got it first.)"""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 16384), max(1025, low))


def free_port() -> int:
    """A currently free 127.0.0.1 TCP port, never the same one twice in this process."""
    ports = _below_ephemeral()
    while True:
        port = random.choice(ports)
        if port in _ports_handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # a server of some other program has it
                continue
        _ports_handed_out.add(port)
        return port


def xoauth2_string(user: str, token: str) -> str:
    """The SASL XOAUTH2 client response (before base64)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer_string(user: str, token: str) -> str:
    """The SASL OAUTHBEARER (RFC 7628) client response (before base64)."""
    return f"n,a={user},\x01auth=Bearer {token}\x01\x01"


class MailUpstream:
    """Private Dovecot (IMAPS, LMTP, SASL) + Postfix (submission) for one test session."""

    def __init__(
        self,
        workdir: Path | str,
        pki: _HasCerts,
        introspection_url: str,
        grant_url: str | None = None,
        domain: str = "example.test",
        *,
        mechanisms: Iterable[str] = ("xoauth2",),
        sendas_check: Literal["data", "mail"] = "data",
        debug: bool = False,
        dovecot_extra: str = "",
        send_as: dict[str, Iterable[str]] | None = None,
        pipelining: bool = True,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.pki = pki
        self.introspection_url = introspection_url
        self.grant_url = grant_url
        self.domain = domain.lower()
        self.mechanisms = tuple(m.lower() for m in mechanisms)
        self.sendas_check = sendas_check
        self.debug = debug
        self.dovecot_extra = dovecot_extra  # appended to dovecot.conf (the benchmark raises limits)
        # Exchange's SendAs (Add-RecipientPermission): address -> the other logins that may send as it
        self.send_as = {a.lower(): [x.lower() for x in logins] for a, logins in (send_as or {}).items()}
        self.pipelining = pipelining  # False: EHLO offers no PIPELINING
        self.name = _instance_name()
        self.host = "127.0.0.1"
        self.imap_port = 0
        self.smtp_port = 0
        self.pop3_port = 0
        self.root: Path | None = None  # instance directory (see module docstring)
        self.logdir: Path | None = None
        self._own_root = False
        self._running: list[str] = []
        self._mail = pwd.getpwnam(MAIL_USER)

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> MailUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._running:
            raise UpstreamError(f"{self.name} already started")
        if missing := missing_binaries():
            raise UpstreamError(f"not installed: {', '.join(missing)} (run scripts/install-test-deps.sh)")
        if os.geteuid() != 0:
            raise UpstreamError("Postfix and Dovecot need root to start their master processes")
        for attempt in range(START_ATTEMPTS):
            try:
                return self._start_once()
            except UpstreamError as exc:
                # a free port can be taken between probing and binding it: retry on fresh ports
                if "Address already in use" not in str(exc) or attempt == START_ATTEMPTS - 1:
                    raise
                self.name = _instance_name()

    def _start_once(self) -> None:
        self._make_root()
        self.imap_port, self.smtp_port, self.pop3_port = free_port(), free_port(), free_port()
        self._write_config()
        atexit.register(self.stop)
        try:
            # Postfix first: its queue directory holds the sockets Dovecot offers it (auth, LMTP)
            self._start_postfix()
            self._start_dovecot()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop what start() started (by PID file), then drop a private /tmp instance dir."""
        atexit.unregister(self.stop)
        # Signal both, then wait: Dovecot's master always sleeps 1 s for its log process on the
        # way out, so this keeps stop() at ~1 s.
        masters = {"postfix": ("spool/pid/master.pid", True), "dovecot": ("run/master.pid", False)}
        signalled = [(pid, group) for name, (pidfile, group) in masters.items()
                     if name in self._running and (pid := _signal_master(self._path(pidfile)))]
        deadline = time.monotonic() + STOP_TIMEOUT
        for pid, group in signalled:
            _await_exit(pid, deadline, group)
        self._running.clear()
        if self._own_root and self.root is not None:
            # keep the logs for post-mortems; the private /tmp directory goes
            kept = self.workdir / f"{self.name}-logs"
            shutil.copytree(self.root / "log", kept, dirs_exist_ok=True)
            self.logdir = kept
            (self.workdir / self.name).unlink(missing_ok=True)
            shutil.rmtree(self.root, ignore_errors=True)
            self.root, self._own_root = None, False

    def stop_daemon(self, name: Literal["postfix", "dovecot"]) -> None:
        """Stop one of the two (chaos tests: an upstream going away under the relay)."""
        pidfile, group = {"postfix": ("spool/pid/master.pid", True),
                          "dovecot": ("run/master.pid", False)}[name]
        pid = _signal_master(self._path(pidfile))
        if pid:
            _await_exit(pid, time.monotonic() + STOP_TIMEOUT, group)
        if name in self._running:
            self._running.remove(name)

    def start_daemon(self, name: Literal["postfix", "dovecot"]) -> None:
        """Start one stopped by stop_daemon() again, on the same ports, with the same mail."""
        (self._start_postfix if name == "postfix" else self._start_dovecot)()

    # ------------------------------------------------------------------- mailboxes

    def maildir(self, mailbox: str) -> Path:
        """The Maildir (INBOX) of `mailbox`; a bare local part means `@<domain>`."""
        local, _, domain = mailbox.lower().partition("@")
        return self._path("mail") / (domain or self.domain) / local / "Maildir"

    def messages(self, mailbox: str) -> list[bytes]:
        """Delivered messages of `mailbox` (new + cur), oldest delivery first."""
        box = self.maildir(mailbox)
        files = [p for sub in ("new", "cur") if (box / sub).is_dir() for p in (box / sub).iterdir()]
        return [p.read_bytes() for p in sorted(files, key=_delivery_order)]

    def wait_for_messages(self, mailbox: str, n: int, timeout: float = 20) -> list[bytes]:
        """Wait until `mailbox` holds at least `n` messages; UpstreamError (with logs) on timeout."""
        deadline = time.monotonic() + timeout
        while len(found := self.messages(mailbox)) < n:
            if time.monotonic() > deadline:
                raise UpstreamError(
                    f"{mailbox}: {len(found)} of {n} messages after {timeout}s\n{self.log_tail()}"
                )
            time.sleep(0.05)
        return found

    def deliver(self, mailbox: str, raw: bytes) -> None:
        """Put one message into `mailbox`'s INBOX exactly as given (line ends made CRLF)."""
        self.deliver_many(mailbox, [raw])

    def deliver_many(self, mailbox: str, raws: Iterable[bytes]) -> None:
        """Bulk delivery the way any Maildir MDA does it: write to tmp/, rename into new/.

        No headers are added (unlike LMTP, which prepends Return-Path/Delivered-To/Received), and
        hundreds of messages or a 25 MB one take milliseconds. Dovecot picks them up on its next
        mailbox sync and assigns UIDs in file-name (= delivery) order.
        """
        box = self.maildir(mailbox)
        self._ensure_maildir(box)
        uid, gid = self._mail.pw_uid, self._mail.pw_gid
        for raw in raws:
            data = _crlf(raw)
            sec, usec = _next_stamp()
            name = f"{sec}.M{usec}P{os.getpid()}.upstream,S={len(data)},W={len(data)}"
            tmp = box / "tmp" / name
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chown(tmp, uid, gid)
            os.rename(tmp, box / "new" / name)

    def lmtp_deliver(self, sender: str, rcpts: list[str], raw: bytes) -> None:
        """Hand a message to the real Dovecot over LMTP (Return-Path, Delivered-To, Received added),
        as Exchange stores what Graph accepted; raises if Dovecot refuses a recipient."""
        # one transaction per recipient: LMTP answers DATA once per recipient, and smtplib
        # reads only one of those answers
        with smtplib.LMTP(str(self._path("run/lmtp"))) as lmtp:
            for rcpt in rcpts:
                refused = lmtp.sendmail(sender, [rcpt], _crlf(raw))
                if refused:
                    raise UpstreamError(f"LMTP refused {refused}")

    def clear(self) -> None:
        """Delete every mailbox and every queued message. Call with no IMAP session open."""
        for domain_dir in self._path("mail").iterdir():
            shutil.rmtree(domain_dir)
        if "postfix" in self._running:
            postsuper = ["postsuper", "-c", str(self._path("etc/postfix")), "-d", "ALL"]
            self._launch(postsuper, "postfix-start.log")

    # -------------------------------------------------------------------- logging

    def logs(self) -> str:
        """Dovecot + Postfix logs (and their startup output), for failing-test diagnostics."""
        if self.logdir is None:
            return "(upstream never started)"
        parts = []
        for name in ("dovecot-start.log", "dovecot.log", "postfix-start.log", "postfix.log"):
            p = self.logdir / name
            if p.exists():
                parts.append(f"===== {name} =====\n{p.read_text(errors='replace')}")
        return "\n".join(parts)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        out = []
        for block in self.logs().split("===== ")[1:]:
            head, _, body = block.partition("\n")
            out.append("===== " + head + "\n" + "\n".join(body.splitlines()[-lines:]))
        return "\n".join(out)

    # ------------------------------------------------------------------ internals

    def _path(self, rel: str) -> Path:
        assert self.root is not None, "start() first"
        return self.root / rel

    def _make_root(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if _world_searchable(self.workdir):
            self.root = self.workdir / self.name
            self.root.mkdir()
        else:
            self.root = Path(tempfile.mkdtemp(prefix="relay365-upstream-"))
            self._own_root = True
            (self.workdir / self.name).symlink_to(self.root)
        self.root.chmod(0o755)
        self.logdir = self.root / "log"
        for sub in ("etc/postfix", "tls", "run", "state", "log", "mail", "spool", "data"):
            self._path(sub).mkdir(parents=True, exist_ok=True)
        os.chown(self._path("mail"), self._mail.pw_uid, self._mail.pw_gid)
        postfix = pwd.getpwnam("postfix")  # Postfix's own files; it creates the queue below spool/
        os.chown(self._path("data"), postfix.pw_uid, postfix.pw_gid)
        self._path("data").chmod(0o700)
        tls = self._path("tls")
        shutil.copyfile(self.pki.ca_file, tls / "ca.pem")
        shutil.copyfile(self.pki.cert_file, tls / "cert.pem")
        shutil.copyfile(self.pki.key_file, tls / "key.pem")
        (tls / "ca.pem").chmod(0o644)
        (tls / "cert.pem").chmod(0o644)
        (tls / "key.pem").chmod(0o600)

    def _ensure_maildir(self, box: Path) -> None:
        """domain/, user/, Maildir/ and its tmp/new/cur, owned by the mail user like Dovecot's own."""
        for d in (box.parent.parent, box.parent, box, box / "tmp", box / "new", box / "cur"):
            if not d.exists():
                d.mkdir(mode=0o700)
                os.chown(d, self._mail.pw_uid, self._mail.pw_gid)

    def _write_config(self) -> None:
        etc = self._path("etc")
        (etc / "dovecot.conf").write_text(_dovecot_conf(self))
        (etc / "oauth2.conf.ext").write_text(_oauth2_conf(self))
        (etc / "postfix/main.cf").write_text(_postfix_main_cf(self))
        (etc / "postfix/master.cf").write_text(_postfix_master_cf(self))
        (etc / "postfix/recipient_access").write_text(
            f"reject-me@{self.domain} 550 5.1.1 <reject-me@{self.domain}>: Recipient address rejected: "
            "User unknown (RESOLVER.ADR.RecipNotFound)\n"
            f"tempfail@{self.domain} 451 4.3.0 <tempfail@{self.domain}>: Temporary server error, "
            "please try again later\n"
        )
        (etc / "postfix/sasl_access").write_text(
            f"smtp-off@{self.domain} 535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication "
            "is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.\n")
        # every address is owned by the login of the same name (SendAs only for oneself), except
        # where send_as grants other logins too
        granted = "".join(f"/^{re.escape(a)}$/ {','.join([a, *logins])}\n"
                          for a, logins in self.send_as.items())
        (etc / "postfix/sender_login.regexp").write_text(granted + "/^(.+)$/ ${1}\n")
        # Postfix re-reads a config file whose mtime is "now" until it looks settled (0.3 s a time,
        # ~2 s per start): date them in the past.
        past = time.time() - 60
        for f in etc.rglob("*"):
            os.utime(f, (past, past))

    def _launch(self, argv: list[str], log: str) -> None:
        # A daemonizing master keeps the startup stdout/stderr open (Dovecot does): give it a file,
        # never a pipe, or whoever reads the pipe hangs.
        with open(self._path(f"log/{log}"), "ab") as out:
            proc = subprocess.run(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "PATH": f"{SBIN_PATH}:{os.environ.get('PATH', '')}"},
                                  timeout=60)
        if proc.returncode != 0:
            raise UpstreamError(f"{' '.join(argv)} exited {proc.returncode}\n{self.log_tail()}")

    def _start_postfix(self) -> None:
        self._launch(["postfix", "-c", str(self._path("etc/postfix")), "start"], "postfix-start.log")
        self._running.append("postfix")
        self._wait_ready("postfix", self.smtp_port, b"220 ", tls=False, sockets=())

    def _start_dovecot(self) -> None:
        self._launch(["dovecot", "-c", str(self._path("etc/dovecot.conf"))], "dovecot-start.log")
        self._running.append("dovecot")
        sockets = ("run/lmtp", "spool/private/auth", "spool/private/dovecot-lmtp")
        self._wait_ready("dovecot", self.imap_port, b"* OK", tls=True,
                         sockets=tuple(self._path(s) for s in sockets))

    def _wait_ready(
        self, what: str, port: int, greeting: bytes, tls: bool, sockets: tuple[Path, ...]
    ) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | str = "not tried"
        while time.monotonic() < deadline:
            try:
                missing = [str(s) for s in sockets if not s.exists()]
                if missing:
                    raise FileNotFoundError(", ".join(missing))
                with socket.create_connection((self.host, port), timeout=2) as raw:
                    if tls:
                        ctx = ssl.create_default_context(cafile=str(self._path("tls/ca.pem")))
                        with ctx.wrap_socket(raw, server_hostname=self.host) as s:
                            banner = s.recv(512)
                    else:
                        banner = raw.recv(512)
                if banner.startswith(greeting):
                    return
                last = f"unexpected greeting {banner!r}"
            except (OSError, ssl.SSLError) as exc:
                last = exc
            time.sleep(0.05)
        raise UpstreamError(f"{what} did not come up on {self.host}:{port}: {last}\n{self.log_tail()}")


# ---------------------------------------------------------------------- helpers


def _next_stamp() -> tuple[int, int]:
    """(seconds, microseconds) of now, strictly increasing: Maildir names sort in delivery order."""
    global _last_stamp
    _last_stamp = max(time.time_ns() // 1000, _last_stamp + 1)
    return divmod(_last_stamp, 1_000_000)


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _delivery_order(p: Path) -> tuple[int, int, str]:
    """Maildir names start `<sec>.M<usec>P...`; fall back to mtime for foreign names."""
    head = p.name.split(".", 2)
    try:
        return int(head[0]), int(head[1][1:].split("P", 1)[0]), p.name
    except (IndexError, ValueError):
        st = p.stat()
        return int(st.st_mtime), int(st.st_mtime_ns // 1000 % 1_000_000), p.name


def _world_searchable(path: Path) -> bool:
    """True if an unprivileged user can traverse every directory down to `path`."""
    return all(d.stat().st_mode & stat.S_IXOTH for d in [path, *path.parents])


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # an unreaped zombie counts as gone: our PID 1 may not reap reparented daemons
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _signal_master(pidfile: Path) -> int | None:
    """SIGTERM the master named in `pidfile`; its PID, or None if it is not running."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    if not _pid_alive(pid):
        return None
    os.kill(pid, signal.SIGTERM)
    return pid


def _await_exit(pid: int, deadline: float, group: bool) -> None:
    """Wait for a signalled master; SIGKILL it (its process group for Postfix) at the deadline."""
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------- configuration


def _dovecot_conf(up: MailUpstream) -> str:
    r, mail = up.root, up._mail
    spool = r / "spool/private"
    mechs = " ".join(up.mechanisms)
    return f"""\
# Generated by tests/support/upstream.py for instance {up.name}; complete, reads nothing from /etc.
instance_name = {up.name}
base_dir = {r}/run
state_dir = {r}/state
protocols = imap pop3 lmtp
listen = {up.host}
log_path = {r}/log/dovecot.log
auth_verbose = yes
auth_debug = {_yn(up.debug)}
mail_debug = {_yn(up.debug)}
ssl = required
ssl_cert = <{r}/tls/cert.pem
ssl_key = <{r}/tls/key.pem
disable_plaintext_auth = yes
auth_mechanisms = {mechs}
# Tests make many failing logins from 127.0.0.1: no delay, no anvil penalty, no cached verdicts.
auth_failure_delay = 0
auth_cache_size = 0
# mail is owned by the system "mail" user; Dovecot never allows mail access as root
mail_uid = {mail.pw_uid}
mail_gid = {mail.pw_gid}
first_valid_uid = {mail.pw_uid}
first_valid_gid = {mail.pw_gid}
mail_location = maildir:~/Maildir
mail_save_crlf = yes
mail_fsync = never
lmtp_add_received_header = yes
passdb {{
  driver = oauth2
  mechanisms = {mechs}
  args = {r}/etc/oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid={mail.pw_uid} gid={mail.pw_gid} home={r}/mail/%Ld/%Ln allow_all_users=yes
}}
protocol lmtp {{
  postmaster_address = postmaster@{up.domain}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = {up.host}
    port = {up.imap_port}
    ssl = yes
  }}
}}
# POP3S like Office 365's 995; stable lower-case hex UIDLs across sessions
pop3_uidl_format = %08Xu%08Xv
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    address = {up.host}
    port = {up.pop3_port}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
  }}
  unix_listener {spool}/dovecot-lmtp {{
    mode = 0600
    user = postfix
    group = postfix
  }}
}}
service auth {{
  unix_listener {spool}/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{up.dovecot_extra}
"""


def _oauth2_conf(up: MailUpstream) -> str:
    lines = [
        f"introspection_url = {up.introspection_url}",
        "introspection_mode = post",
        "force_introspection = yes",
        "username_attribute = username",
        "active_attribute = active",
        "active_value = true",
        "send_auth_headers = yes",
        f"tls_ca_cert_file = {up.root}/tls/ca.pem",
        "timeout_msecs = 10000",
    ]
    if up.grant_url:
        # Dovecot 2.3 then POSTs grant_type=password&username=<mailbox>&password=<token> to grant_url
        # for every login: the only request that tells the endpoint which mailbox an app-only token
        # is being used for. The answer must carry `username` and `active` (else the returned
        # access_token is introspected).
        lines = [ln for ln in lines if not ln.startswith("force_introspection")]
        lines += [
            f"grant_url = {up.grant_url}",
            "use_grant_password = yes",
            "client_id = relay365-test-upstream",
            "client_secret = not-a-secret",
        ]
    if up.debug:
        lines.append("debug = yes")
    return "\n".join(lines) + "\n"


def _postfix_main_cf(up: MailUpstream) -> str:
    r, etc = up.root, up.root / "etc/postfix"
    sendas = "smtpd_end_of_data_restrictions" if up.sendas_check == "data" else "smtpd_sender_restrictions"
    # 535 5.7.139 for smtp-off@ (SMTP AUTH disabled for that mailbox), as Exchange answers
    sasl = f"check_sasl_access texthash:{etc}/sasl_access"
    sender_line = "" if up.sendas_check == "mail" else f"smtpd_sender_restrictions = {sasl}"
    sasl_first = f"{sasl}, " if sendas.endswith("sender_restrictions") else ""
    return f"""\
# Generated by tests/support/upstream.py for instance {up.name}
compatibility_level = 3.7
multi_instance_name = {up.name}
syslog_name = {up.name}
queue_directory = {r}/spool
data_directory = {r}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {r}/log/postfix.log
maillog_file_prefixes = {r}/log
inet_interfaces = {up.host}
inet_protocols = ipv4
myhostname = mx.{up.domain}
mydomain = {up.domain}
myorigin = $mydomain
mydestination =
mynetworks = {up.host}/32
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled
alias_maps =
alias_database =
relay_domains =
relayhost =
default_transport = error:5.7.1 the test upstream delivers to @{up.domain} only
virtual_alias_maps =
virtual_alias_domains =
virtual_mailbox_domains = {up.domain}
virtual_mailbox_maps =
virtual_transport = lmtp:unix:private/dovecot-lmtp
biff = no
smtpd_banner = $myhostname ESMTP relay365 test upstream
disable_vrfy_command = yes
smtpd_discard_ehlo_keywords = etrn{"" if up.pipelining else ", pipelining"}
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 1000
message_size_limit = {EXCHANGE_MESSAGE_SIZE_LIMIT}
mailbox_size_limit = 0
line_length_limit = {AUTH_LINE_LIMIT}
smtpd_sasl_response_limit = {AUTH_LINE_LIMIT}
smtpd_tls_cert_file = {r}/tls/cert.pem
smtpd_tls_key_file = {r}/tls/key.pem
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_session_cache_database =
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = no
smtpd_sasl_authenticated_header = no
smtpd_sender_login_maps = regexp:{etc}/sender_login.regexp
smtpd_delay_reject = no
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = check_recipient_access texthash:{etc}/recipient_access, permit
{sender_line}
{sendas} = {sasl_first}reject_sender_login_mismatch
"""


def _postfix_master_cf(up: MailUpstream) -> str:
    services = [
        # service type private unpriv chroot wakeup maxproc command
        f"{up.host}:{up.smtp_port} inet n - n - - smtpd"
        " -o smtpd_tls_security_level=encrypt -o smtpd_tls_auth_only=yes"
        " -o smtpd_sasl_auth_enable=yes",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "tlsmgr unix - - n 1000? 1 tlsmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "lmtp unix - - n - - lmtp",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ]
    return "\n".join(services) + "\n"


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"
