"""Targets for the pure cores: IMAP and POP3 before login, the SMTP policy, the DATA reader, SASL."""

from __future__ import annotations

import ipaddress
from typing import Any

from relay365 import replies
from relay365.config import UnauthenticatedNet
from relay365.imap import core as imap
from relay365.pop3 import core as pop3
from relay365.sasl import (
    Credentials,
    SaslError,
    b64decode_strict,
    decode_plain,
    decode_text,
    decode_xoauth2_error,
)
from relay365.secret import Secret
from relay365.smtp import policy
from relay365.smtp.data import DataError, DataReader

from .chunks import check_wire, chunked

# -- IMAP and POP3 before login ----------------------------------------------------------------


def _drive(core: Any, mod: Any, pieces: list[bytes], answers: bytes) -> list[Any]:
    """Feed `pieces` to a pre-auth core the way its adapter does: run StartTLS at once, answer
    each Authenticate from `answers` (fail, unavailable, limit, succeed). Returns the effects,
    consecutive SendToClient merged; checks the invariants on the way."""
    out: list[Any] = []
    logins = 0
    pending = list(core.greeting())
    chunks = iter(pieces)
    while True:
        while pending:
            effect = pending.pop(0)
            if isinstance(effect, mod.SendToClient):
                if out and isinstance(out[-1], mod.SendToClient):
                    out[-1] = mod.SendToClient(out[-1].data + effect.data)
                else:
                    out.append(effect)
                continue
            out.append(effect)
            if isinstance(effect, mod.StartTLS):
                pending += core.tls_started()
            elif isinstance(effect, mod.Authenticate):
                if not isinstance(effect.password, Secret):
                    raise AssertionError("password not a Secret")
                choice = answers[logins % len(answers)] % 4 if answers else 0
                logins += 1
                if choice == 3:
                    pending += core.login_succeeded()
                else:
                    kind = (mod.LoginFailure.AUTH_FAILED, mod.LoginFailure.UNAVAILABLE,
                            mod.LoginFailure.LIMIT)[choice]
                    pending += core.login_failed(kind)
            elif isinstance(effect, mod.StartSplice):
                core.take_buffered()
                return out
            elif isinstance(effect, mod.Close):
                if core.receive_data(b"x\r\n") != []:
                    raise AssertionError("output after Close")
                return out
            else:
                raise AssertionError(f"unknown effect {effect!r}")
        if core.buffered_size > getattr(mod, "MAX_BUFFERED", 64 * 1024 + 8192):
            raise AssertionError(f"core holds {core.buffered_size} bytes")
        piece = next(chunks, None)
        if piece is None:
            out.append(core.timeout())  # the idle timer, as the adapter would fire it
            return out
        pending += core.receive_data(piece)


def _preauth(data: bytes, mod: Any, cls: Any, tls_word: bytes) -> None:
    flags, answers, body = (data[0] if data else 0), data[1:3], data[3:]
    def make() -> Any:
        return cls(tls_active=bool(flags & 1), starttls_available=bool(flags & 2),
                   allow_plaintext_auth=bool(flags & 4))
    whole = _drive(make(), mod, [body], answers)
    for effect in whole:
        if isinstance(effect, mod.SendToClient):
            check_wire(effect.data, cls.__name__)
    # pipelining behind STARTTLS is refused only when the bytes arrive together: not comparable
    if tls_word not in body.upper():
        pieces = _drive(make(), mod, chunked(body), answers)
        if pieces != whole:
            raise AssertionError(f"chunking changed the outcome:\n{whole}\n{pieces}")


def imap_preauth(data: bytes) -> None:
    """IMAP before login (`relay365.imap.core`). Oracle: only the five effects; replies are clean
    CRLF lines; the core never holds more than MAX_BUFFERED; nothing after Close; the same
    effects whether the bytes come at once or in pieces."""
    _preauth(data, imap, imap.ImapPreauth, b"STARTTLS")


def pop3_preauth(data: bytes) -> None:
    """POP3 before login (`relay365.pop3.core`); the same oracle as IMAP."""
    _preauth(data, pop3, pop3.Pop3Preauth, b"STLS")


# -- the SMTP policy core ------------------------------------------------------------------------

_NET = ipaddress.ip_network("10.0.0.0/8")
_PEERS = ("10.1.2.3", "192.0.2.1", "::ffff:10.0.0.1", "fe80::1%eth0", "not an address", "2001:db8::1",
          "::ffff:192.0.2.9", "10.0.0.1%x")
_OUTCOMES: tuple[policy.Accepted | policy.Failed, ...] = (
    policy.Accepted(250, "2.0.0 OK"), policy.Failed("451 4.4.1 try later"),
    policy.Failed("451 4.4.1 gone", lost=True), policy.Failed("550 5.1.1 unknown"),
    policy.Failed("421 4.7.0 bye", lost=True), policy.Accepted(251, "2.1.5 forwarded"))
_SPOOL = (policy.Spooled("00000000000000000001-1"), policy.SpoolFailed(replies.SPOOL_FULL),
          policy.SpoolFailed(replies.SPOOL_ERROR))
_WAYS = (("direct", "none"), ("direct", "spool"), ("spool", "none"))


def smtp_policy(data: bytes) -> None:
    """The SMTP session's rules (`relay365.smtp.policy`) driven as the adapter drives them, with
    outcomes chosen by the input. Oracle: nothing is relayed or spooled for a session that is
    neither logged in nor from a listed network (no open relay); a 2xx to DATA only if every
    outcome of that DATA was Accepted or Spooled; replies are SMTP replies; the transaction is
    over after DATA's reply."""
    if len(data) < 3:
        return
    b = iter(data)
    way = _WAYS[next(b) % 3]
    peer = _PEERS[next(b) % len(_PEERS)]
    keep = next(b) & 1
    net = UnauthenticatedNet(_NET, "printer@contoso.test", *way)  # type: ignore[arg-type]
    p = policy.SmtpPolicy(policy.Rules("keep" if keep else "rewrite", (net,)), peer)
    may_send = _in_net(peer)
    for op in b:
        kind = op % 6
        arg = next(b, 0)
        if kind == 0:
            d, f = _WAYS[arg % 3]
            p.authenticated("scanner", "scanner@contoso.test", d, f)
            may_send = True
        elif kind == 1:
            effect = p.mail(f"dev{arg}@lan", ["SIZE=10"] if arg & 1 else [])
            if isinstance(effect, policy.UpstreamMail):
                _relay_allowed(may_send, effect)
                effect = p.mail_done(_OUTCOMES[arg % len(_OUTCOMES)])
            _reply(effect)
        elif kind == 2:
            address = f"rcpt{arg}@x.test"
            effect = p.rcpt(address)
            if isinstance(effect, policy.UpstreamRcpt):
                effect = p.rcpt_done(address, _OUTCOMES[(arg >> 1) % len(_OUTCOMES)])
            _reply(effect)
        elif kind == 3:
            _data(p, b, bool(arg & 1), may_send)
        else:
            p.reset()


def _in_net(peer: str) -> bool:
    try:
        ip = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.version == 4 and ip in _NET


def _relay_allowed(may_send: bool, effect: object) -> None:
    if not may_send:
        raise AssertionError(f"open relay: {effect!r} for a session that may not send")


def _reply(effect: object) -> str:
    if not isinstance(effect, policy.Reply):
        raise AssertionError(f"expected a Reply, got {effect!r}")
    text = effect.text
    if len(text) < 4 or not text[:3].isdigit() or text[0] not in "2345" or text[3] not in " -":
        raise AssertionError(f"not an SMTP reply: {text!r}")
    return text


def _data(p: policy.SmtpPolicy, b: Any, alive: bool, may_send: bool) -> None:
    if p.phase is not policy.Phase.IN_TRANSACTION:
        return  # the adapter only ends DATA inside a transaction (aiosmtpd checks RCPT first)
    told = set(p.rcpts)
    effect: object = p.end_of_data(alive)
    clean = False  # the last outcome reported was Accepted or Spooled
    while not isinstance(effect, policy.Reply):
        _relay_allowed(may_send, effect)
        choice = next(b, 0)
        if isinstance(effect, policy.UpstreamData):
            outcome = _OUTCOMES[choice % len(_OUTCOMES)]
            clean = isinstance(outcome, policy.Accepted)
            effect = p.data_done(outcome)
        elif isinstance(effect, policy.SpoolIt):
            if not effect.rcpts or not set(effect.rcpts) <= told:
                raise AssertionError(f"spooled for recipients never accepted: {effect!r}")
            result = _SPOOL[choice % len(_SPOOL)]
            clean = isinstance(result, policy.Spooled)
            effect = p.spool_done(result)
        else:
            raise AssertionError(f"unexpected effect at DATA: {effect!r}")
    text = _reply(effect)
    if text.startswith("2") and not clean:
        raise AssertionError(f"2xx to DATA after a failure: {text!r}")
    if not text.startswith("2") and clean and not text.startswith("5"):
        raise AssertionError(f"{text!r} to DATA after it was accepted or spooled")
    if p.in_transaction:
        raise AssertionError("still in a transaction after the reply to DATA")


# -- DATA ----------------------------------------------------------------------------------------

def _end(r: DataReader) -> tuple[DataError | None, int] | None:
    """What the client hears about its DATA (error, size), once it has ended."""
    return (r.error, r.size) if r.done else None


def smtp_data(data: bytes) -> None:
    """The DATA reader (`relay365.smtp.data`). Oracle: the same content, error, size and rest in
    any chunking; content lines all end in CRLF; and content that was read without error,
    dot-stuffed again and ended with CRLF.CRLF, reads back as itself."""
    limit = None if not data or data[0] & 1 else 2000
    whole = DataReader(limit, 200)
    got = whole.feed(data)
    pieced = DataReader(limit, 200)
    parts = b"".join(pieced.feed(c) for c in chunked(data))
    if whole.error is not None:  # the adapter drops the content then; a stream can't unsay it
        got = parts = b""
    # size counts what was read or dropped, and the error is only heard at the end of DATA:
    # while DATA is unfinished, bytes still pending (a long line's tail) may differ
    if (got, whole.done, whole.rest, _end(whole)) != (parts, pieced.done, pieced.rest, _end(pieced)):
        raise AssertionError(f"chunking changed the outcome: {(got, whole.error, whole.rest)!r} vs "
                             f"{(parts, pieced.error, pieced.rest)!r}")
    if got and not got.endswith(b"\r\n"):
        raise AssertionError(f"content does not end in CRLF: {got[-40:]!r}")
    if whole.done and whole.error is None:
        lines = got.split(b"\r\n")[:-1]
        stuffed = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
        again = DataReader(None, 10**6)
        back = again.feed(stuffed + b".\r\n")
        if not again.done or again.rest or back != got:
            raise AssertionError(f"re-stuffed content reads differently: {got!r} -> {back!r}")
    if whole.error is not None and whole.error not in (DataError.TOO_BIG, DataError.LINE_TOO_LONG):
        raise AssertionError(whole.error)
    if not whole.done:  # the client ends it now: both must reach the same verdict
        whole.feed(b"\r\n.\r\n")
        pieced.feed(b"\r\n.\r\n")
        if _end(whole) != _end(pieced):
            raise AssertionError(f"chunking changed the verdict: {_end(whole)!r} vs {_end(pieced)!r}")


# -- SASL ------------------------------------------------------------------------------------

def sasl(data: bytes) -> None:
    """SASL decoders (`relay365.sasl`). Oracle: SaslError or a value, never another exception;
    PLAIN gives a non-empty user without NUL and an authzid that is empty or the user; the XOAUTH2
    error decoder always gives a dict."""
    for raw in (data, data.decode("latin-1")):
        try:
            b64decode_strict(raw)
        except SaslError:
            pass
    try:
        creds = decode_plain(data)
    except SaslError:
        pass
    else:
        if not isinstance(creds, Credentials) or not creds.username or "\0" in creds.username \
                or creds.authzid not in ("", creds.username):
            raise AssertionError(f"PLAIN decoded to {creds!r}")
    try:
        decode_text(data, "user name")
    except SaslError:
        pass
    for challenge in (data, data.decode("latin-1")):
        if not isinstance(decode_xoauth2_error(challenge), dict):
            raise AssertionError("XOAUTH2 error decoder did not give a dict")
