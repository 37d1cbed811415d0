"""The SMTP session's rules, with no I/O: who may send, as which mailbox, by which way, and what
the client hears.

Theory of operation. The asyncio adapter (`relay365.smtp.server`) owns sockets, TLS, timers and
the upstream session; for each client command it asks the core what to do, carries out the one
effect the core returns, and reports the outcome back:

    MAIL  -> mail(address, options)  -> Reply | UpstreamMail   -> mail_done(outcome)  -> Reply
    RCPT  -> rcpt(address)           -> Reply | UpstreamRcpt   -> rcpt_done(outcome)  -> Reply
             (UpstreamRcpt.mail set: the held MAIL goes too) -> envelope_done(mail, rcpt) -> Reply
    DATA  -> end_of_data()           -> Reply | UpstreamData | GraphSend | SpoolIt
             data_done(outcome)      -> Reply | SpoolIt          (the recipients Office 365 4xx'd)
             spool_done(outcome)     -> Reply

States (one transaction at a time):

    IDLE --mail ok--> IN_TRANSACTION --end_of_data--> (upstream / spool) --reply--> IDLE
      ^                    |  rset, a MAIL refused, a 4xx/5xx at DATA                   |
      +--------------------+-----------------------------------------------------------+

The rules it owns:
- Who is sending: a local user after AUTH (its mailbox, delivery, fallback), else the
  `smtp.unauthenticated` network the peer is in, else 530 - never an open relay.
- The envelope sender and the upstream login: `sender.decide_sender` (the mailbox, `send_as`,
  `sender: rewrite | keep | refuse`, whose token sends); the From header is made to agree with
  the envelope by the adapter (`rewrite.rewrite_from`).
- The way: `delivery: spool` answers MAIL/RCPT here and DATA 250 only once the spool fsynced the
  message; `direct` passes each command on and the client hears Office 365's own reply;
  `fallback: spool` turns a reply that would be a 4xx into the spool - the whole transaction
  when the session failed, one recipient when only that recipient was 4xx'd. 5xx stays 5xx.
- Graph: when the adapter answers UpstreamMail with `ViaGraph` (the account sends through
  Microsoft Graph), MAIL and RCPT are answered here and the whole message goes in one `GraphSend`
  at the end of DATA; Graph takes it for every recipient or for none, so its outcome is reported
  with `data_done` like an SMTP DATA (and falls back to the spool the same way).
- Pipelining: when the adapter answers UpstreamMail with `Pipelined` (Office 365's EHLO offers
  PIPELINING), MAIL is answered here and held, to go upstream in one write with the first RCPT
  (RFC 2920) - one round trip to Office 365 fewer per message. A refused held MAIL is heard at
  that RCPT and every later one of the transaction (what Postfix's `smtpd_delay_reject` does); a
  4xx with `fallback: spool` spools the whole transaction, as a refused MAIL does. Each RCPT's
  reply is still Office 365's own for that recipient.
- A 2xx to DATA only when Office 365 accepted (and every deferred recipient is spooled) or the
  spool holds the message: `Accepted` and `Spooled` are the only outcomes that produce one.
- Shutdown: `in_transaction` tells the adapter whether the session may be told 421 at once.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import replies
from ..config import UnauthenticatedNet
from ..states import SmtpOutcome
from .effects import (
    Accepted,
    Effect,
    Failed,
    GraphSend,
    Pipelined,
    Reply,
    Spooled,
    SpoolFailed,
    SpoolIt,
    UpstreamData,
    UpstreamMail,
    UpstreamRcpt,
    ViaGraph,
)
from .sender import Refuse, SenderRights, decide_sender

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
__all__ = ["Accepted", "Effect", "Failed", "GraphSend", "Pipelined", "Reply", "Rules", "Sender",
           "SmtpPolicy", "SpoolFailed", "SpoolIt", "Spooled", "UpstreamData", "UpstreamMail",
           "UpstreamRcpt", "ViaGraph"]  # the effects and outcomes are the core's vocabulary


@dataclass(frozen=True)
class Sender:
    """Whom a session sends as, and how its messages travel."""

    mailbox: str
    delivery: str = "direct"  # direct | spool
    fallback: str = "none"  # none | spool
    user: str | None = None  # the local user; None for an unauthenticated network
    account: str | None = None  # whose token sends (an accounts[] mailbox); None: the mailbox
    send_as: tuple[str, ...] = ()  # more addresses this sender may use
    sender_mode: str | None = None  # this user's own smtp.sender

    def rights(self, mode: str) -> SenderRights:
        return SenderRights(self.mailbox, self.account or self.mailbox, self.send_as,
                            self.sender_mode or mode)


@dataclass(frozen=True)
class Rules:
    sender_mode: str = "rewrite"  # rewrite | keep | refuse
    networks: tuple[UnauthenticatedNet, ...] = ()
    spool: bool = True  # a spool worker runs (it always does when SMTP is configured)
    own_accounts: frozenset[str] = frozenset()  # lower-case accounts[] mailboxes


class Phase(enum.Enum):
    IDLE = "idle"
    MAIL_SENT = "mail_sent"  # waiting for the upstream's answer to MAIL
    IN_TRANSACTION = "in_transaction"
    DATA = "data"  # after end of data, waiting for the upstream or the spool


@dataclass
class _Txn:
    sender: str
    login: str  # the accounts[] mailbox that sends it upstream
    rewrite_to: str | None  # the address From must carry, or None
    options: tuple[str, ...]
    spooled: bool
    graph: bool = False  # the whole message goes through Graph at the end of DATA
    rcpts: list[str] = field(default_factory=list)  # every recipient the client was told 250
    deferred: list[str] = field(default_factory=list)  # fallback: those the upstream 4xx'd
    accepted: int = 0  # recipients the upstream accepted
    reason: str | None = None  # why a direct transaction fell back to the spool
    upstream_reply: str | None = None  # the upstream's DATA reply, while deferred ones spool
    held: bool = False  # MAIL is not sent yet: it goes with the first RCPT
    refused: str | None = None  # the upstream refused the held MAIL: what every RCPT hears


class SmtpPolicy:
    """One client session's policy. `peer` is the client's address (after PROXY)."""

    def __init__(self, rules: Rules, peer: str) -> None:
        self.rules = rules
        self.peer = peer
        self.sender: Sender | None = None  # set by authenticated(), or by MAIL from a network
        self.phase = Phase.IDLE
        self._txn: _Txn | None = None
        self.messages = self.recipients = 0
        self.last_reply: str | None = None
        self.outcome = SmtpOutcome.NO_MAIL
        self.fell_back: str | None = None  # the reason of the last fallback, for the log

    @property
    def rcpts(self) -> list[str]:
        """The recipients of the transaction in progress that the client was told 250."""
        return list(self._txn.rcpts) if self._txn is not None else []

    @property
    def in_transaction(self) -> bool:
        """Between MAIL and the reply to DATA: a shutdown must let this one finish."""
        return self.phase is not Phase.IDLE

    @property
    def upstream_open(self) -> bool:
        """A transaction the upstream may have open: RSET must reach it (not for a held MAIL,
        which never left, nor for one it refused)."""
        t = self._txn
        return self.in_transaction and not (t is not None and (t.held or t.refused is not None))

    def authenticated(self, user: str, mailbox: str, delivery: str, fallback: str, *,
                      account: str | None = None, send_as: Sequence[str] = (),
                      sender_mode: str | None = None) -> None:
        self.sender = Sender(mailbox, delivery, fallback, user, account, tuple(send_as), sender_mode)

    def reset(self) -> None:
        """RSET, a new EHLO/HELO, or a transaction that ended."""
        self._txn = None
        self.phase = Phase.IDLE

    # -- MAIL ----------------------------------------------------------------------------------

    def mail(self, address: str, options: Sequence[str]) -> Reply | UpstreamMail:
        if self.phase is not Phase.IDLE:
            return Reply(replies.NESTED_MAIL)
        sender = self.sender if self.sender is not None and self.sender.user else self._network()
        if sender is None:
            return Reply(replies.AUTH_REQUIRED)
        self.sender = sender
        send = decide_sender(sender.rights(self.rules.sender_mode), address, self.rules.own_accounts)
        if isinstance(send, Refuse):
            self._refused(send.reply)
            return Reply(send.reply)
        spooled = sender.delivery == "spool" and self.rules.spool
        self._txn = _Txn(send.envelope, send.login, send.from_header, tuple(options), spooled)
        if spooled:
            self.phase = Phase.IN_TRANSACTION
            return Reply(replies.SENDER_OK)
        self.phase = Phase.MAIL_SENT
        return UpstreamMail(send.login, send.envelope, tuple(options))

    def _network(self) -> Sender | None:
        try:
            ip: IPAddress = ipaddress.ip_address(self.peer.split("%")[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        for net in self.rules.networks:
            if ip.version == net.network.version and ip in net.network:
                return Sender(net.mailbox, net.delivery, net.fallback, None, net.account)
        return None

    def mail_done(self, outcome: Accepted | Failed | ViaGraph | Pipelined) -> Reply:
        txn = self._expect(Phase.MAIL_SENT)
        self.phase = Phase.IN_TRANSACTION
        if isinstance(outcome, ViaGraph | Pipelined):
            txn.graph, txn.held = isinstance(outcome, ViaGraph), isinstance(outcome, Pipelined)
            return Reply(replies.SENDER_OK)
        if isinstance(outcome, Accepted):
            return Reply(f"{outcome.code} {outcome.text}")
        self._refused(outcome.reply)
        if self._fall_back(outcome.reply):
            return Reply(replies.SENDER_OK)
        del txn
        self.reset()
        return Reply(outcome.reply)

    # -- RCPT ----------------------------------------------------------------------------------

    def rcpt(self, address: str) -> Reply | UpstreamRcpt:
        if self.phase is not Phase.IN_TRANSACTION or self._txn is None:
            return Reply(replies.NEED_MAIL)
        t = self._txn
        if t.spooled or t.graph:
            t.rcpts.append(address)
            return Reply(replies.RECIPIENT_OK)
        if t.refused is not None:
            return Reply(t.refused)
        return UpstreamRcpt(address, UpstreamMail(t.login, t.sender, t.options) if t.held else None)

    def envelope_done(self, address: str, mail: Accepted | Failed | ViaGraph,
                      rcpt: Accepted | Failed | None) -> Reply:
        """The held MAIL went with this RCPT: MAIL's outcome, then the RCPT's (None when MAIL
        failed: the reply to a RCPT after a refused MAIL says nothing about the recipient)."""
        txn = self._expect(Phase.IN_TRANSACTION)
        txn.held = False
        if isinstance(mail, ViaGraph):  # Office 365 said SMTP AUTH is off: Graph takes it all
            txn.graph = True
            txn.rcpts.append(address)
            return Reply(replies.RECIPIENT_OK)
        if isinstance(mail, Failed):
            self._refused(mail.reply)
            if self._fall_back(mail.reply):  # as for a MAIL 4xx: the whole transaction spools
                txn.rcpts.append(address)
                return Reply(replies.RECIPIENT_OK)
            txn.refused = mail.reply
            return Reply(mail.reply)
        assert rcpt is not None, "MAIL accepted: the RCPT has its own reply"
        return self.rcpt_done(address, rcpt)

    def rcpt_done(self, address: str, outcome: Accepted | Failed) -> Reply:
        txn = self._expect(Phase.IN_TRANSACTION)
        if isinstance(outcome, Accepted):
            txn.accepted += 1
            txn.rcpts.append(address)
            return Reply(f"{outcome.code} {outcome.text}")
        self._refused(outcome.reply)
        if outcome.lost and self._fall_back(outcome.reply):  # the session is gone: spool all of it
            txn.rcpts.append(address)
            return Reply(replies.RECIPIENT_OK)
        if not outcome.lost and self._may_fall_back(outcome.reply):
            txn.deferred.append(address)  # this one recipient goes by the spool
            txn.rcpts.append(address)
            self.fell_back = outcome.reply
            return Reply(replies.RECIPIENT_OK)
        return Reply(outcome.reply)

    # -- DATA ----------------------------------------------------------------------------------

    def end_of_data(self, upstream_alive: bool) -> Reply | UpstreamData | GraphSend | SpoolIt:
        """The client sent the whole message. `upstream_alive`: the upstream session is still up."""
        txn = self._expect(Phase.IN_TRANSACTION)
        if not txn.rcpts:
            self.reset()
            return Reply(replies.NEED_RCPT)
        self.phase = Phase.DATA
        if txn.graph and not txn.spooled:
            assert self.sender is not None
            return GraphSend(self.sender.mailbox, txn.sender, tuple(txn.rcpts), self._rewrite_to())
        if txn.spooled or txn.accepted == 0:  # all by the spool (also: every recipient deferred)
            return self._spool(txn.rcpts, reset_first=not txn.spooled)
        if not upstream_alive:
            reply = replies.CONNECTION_LOST_DATA
            if self._fall_back(reply):
                return self._spool(txn.rcpts)
            return self._end(reply, SmtpOutcome.DEFERRED)
        return UpstreamData(self._rewrite_to())

    def data_done(self, outcome: Accepted | Failed) -> Reply | SpoolIt:
        txn = self._expect(Phase.DATA)
        if isinstance(outcome, Failed):
            self._refused(outcome.reply)
            if self._fall_back(outcome.reply):
                return self._spool(txn.rcpts)
            return self._end(outcome.reply, self.outcome)
        txn.upstream_reply = replies.upstream_reply(outcome.code, outcome.text)
        if txn.deferred:
            # Office 365 has it for the others; the 4xx'd recipients go by the spool. If that
            # fails the client must hear it, even though a resend duplicates for the others.
            return self._spool(txn.deferred)
        return self._relayed(txn)

    def spool_done(self, outcome: Spooled | SpoolFailed) -> Reply:
        txn = self._expect(Phase.DATA)
        if isinstance(outcome, SpoolFailed):
            return self._end(outcome.reply, SmtpOutcome.DEFERRED)
        if txn.upstream_reply is not None:  # the deferred recipients of a relayed message
            return self._relayed(txn)
        self.messages += 1
        self.recipients += len(txn.rcpts)
        return self._end(f"{replies.QUEUED_AS} {outcome.entry_id}", SmtpOutcome.QUEUED)

    # -- helpers -------------------------------------------------------------------------------

    def _expect(self, phase: Phase) -> _Txn:
        if self.phase is not phase or self._txn is None:
            raise RuntimeError(f"SMTP policy: {phase.value} expected, in {self.phase.value}")
        return self._txn

    def _rewrite_to(self) -> str | None:
        assert self._txn is not None
        return self._txn.rewrite_to

    def _spool(self, rcpts: Sequence[str], *, reset_first: bool = False) -> SpoolIt:
        assert self._txn is not None and self.sender is not None
        return SpoolIt(self._txn.login, self._txn.sender, tuple(rcpts), self._txn.options,
                       self._rewrite_to(), self._txn.reason, reset_first)

    def _relayed(self, txn: _Txn) -> Reply:
        assert txn.upstream_reply is not None
        self.messages += 1
        self.recipients += len(txn.rcpts)
        return self._end(txn.upstream_reply, SmtpOutcome.RELAYED)

    def _end(self, reply: str, outcome: SmtpOutcome) -> Reply:
        self.last_reply, self.outcome = replies.one_line(reply, 120), outcome
        self.reset()
        return Reply(reply)

    def _refused(self, reply: str) -> None:
        self.last_reply = replies.one_line(reply, 120)
        self.outcome = SmtpOutcome.REJECTED if reply.startswith("5") else SmtpOutcome.DEFERRED

    def _may_fall_back(self, reply: str) -> bool:
        return (self.sender is not None and self.sender.fallback == "spool" and self.rules.spool
                and reply.startswith("4"))

    def _fall_back(self, reply: str) -> bool:
        """Continue this transaction into the spool instead of answering `reply` (a 4xx)?"""
        if self._txn is None or not self._may_fall_back(reply):
            return False
        # only a direct transaction gets here: a spooled one never waits on Office 365
        self._txn.spooled, self._txn.reason = True, reply
        self.fell_back = reply
        return True
