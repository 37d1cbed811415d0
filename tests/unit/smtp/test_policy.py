"""The SMTP policy core as transcripts: each decision of direct / spool / fallback, and the
properties that make it safe (no 2xx for a message nobody holds; no open relay)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from relay365 import replies
from relay365.config import UnauthenticatedNet
from relay365.smtp import policy as core
from relay365.states import SmtpOutcome

MAILBOX = "scanner@contoso.test"
NET = UnauthenticatedNet(ipaddress.ip_network("10.1.0.0/16"), "printer@contoso.test")
OK = core.Accepted(250, "2.0.0 OK")
TEMP = core.Failed("451 4.4.1 Office 365 cannot be reached right now; try again later")
LOST = core.Failed("451 4.4.1 Office 365 cannot be reached right now; try again later", lost=True)
PERM = core.Failed("550 5.1.1 User unknown")


def session(delivery="direct", fallback="none", peer="192.0.2.1", user=True, sender="rewrite"):
    p = core.SmtpPolicy(core.Rules(sender, (NET,)), peer)
    if user:
        p.authenticated("scanner", MAILBOX, delivery, fallback)
    return p


def test_direct_passes_every_command_and_says_250_only_after_office365():
    p = session()
    mail = p.mail("dev@lan", ["SIZE=10"])
    assert mail == core.UpstreamMail(MAILBOX, MAILBOX, ("SIZE=10",))  # sender rewritten
    assert p.mail_done(OK).text == "250 2.0.0 OK"
    assert p.rcpt("bob@x.test") == core.UpstreamRcpt("bob@x.test")
    assert p.rcpt_done("bob@x.test", OK).text.startswith("250")
    assert p.end_of_data(upstream_alive=True) == core.UpstreamData(MAILBOX)
    assert p.data_done(core.Accepted(250, "2.0.0 queued at Exchange")).text == \
        "250 2.0.0 queued at Exchange"
    assert p.outcome is SmtpOutcome.RELAYED and p.messages == 1 and not p.in_transaction


def test_keep_leaves_the_sender_alone():
    p = session(sender="keep")
    assert p.mail("dev@lan", []) == core.UpstreamMail(MAILBOX, "dev@lan", ())
    p.mail_done(OK)
    p.rcpt_done("b@x", OK)
    assert p.end_of_data(True) == core.UpstreamData(None)


def test_no_user_and_no_network_is_530():
    p = session(user=False)
    assert p.mail("x@evil", []).text == replies.AUTH_REQUIRED
    assert p.rcpt("b@x").text == replies.NEED_MAIL and p.sender is None


def test_an_unauthenticated_network_spools_by_default():
    p = core.SmtpPolicy(core.Rules("rewrite", (NET,)), "10.1.2.3")
    assert p.mail("scan@lan", []).text == replies.SENDER_OK
    assert p.rcpt("b@x").text == replies.RECIPIENT_OK
    it = p.end_of_data(True)
    assert isinstance(it, core.SpoolIt) and it.mailbox == NET.mailbox and it.rcpts == ("b@x",)
    assert not it.reset_first and it.reason is None
    assert p.spool_done(core.Spooled("123")).text == f"{replies.QUEUED_AS} 123"
    assert p.outcome is SmtpOutcome.QUEUED


def test_ipv4_mapped_peer_matches_the_network():
    p = core.SmtpPolicy(core.Rules("rewrite", (NET,)), "::ffff:10.1.0.9")
    assert p.mail("a@lan", []).text == replies.SENDER_OK


def test_spool_full_is_452_and_nothing_is_claimed():
    p = session(delivery="spool")
    p.mail("a@lan", [])
    p.rcpt("b@x")
    p.end_of_data(True)
    assert p.spool_done(core.SpoolFailed(replies.SPOOL_FULL)).text == replies.SPOOL_FULL
    assert p.outcome is SmtpOutcome.DEFERRED and p.messages == 0


def test_direct_without_fallback_passes_4xx_and_5xx_on():
    p = session()
    p.mail("a@lan", [])
    assert p.mail_done(TEMP).text == TEMP.reply and not p.in_transaction
    p.mail("a@lan", [])
    p.mail_done(OK)
    assert p.rcpt_done("b@x", PERM).text == PERM.reply
    assert p.rcpt_done("c@x", TEMP).text == TEMP.reply
    assert p.end_of_data(True).text == replies.NEED_RCPT


def test_fallback_at_mail_spools_the_whole_transaction():
    p = session(fallback="spool")
    p.mail("a@lan", [])
    assert p.mail_done(TEMP).text == replies.SENDER_OK
    assert p.rcpt("b@x").text == replies.RECIPIENT_OK  # spooled: answered here
    it = p.end_of_data(True)
    assert isinstance(it, core.SpoolIt) and it.reason == TEMP.reply and not it.reset_first


def test_fallback_never_turns_a_5xx_into_250():
    p = session(fallback="spool")
    p.mail("a@lan", [])
    assert p.mail_done(PERM).text == PERM.reply
    p.mail("a@lan", [])
    p.mail_done(OK)
    assert p.rcpt_done("b@x", PERM).text == PERM.reply


def test_fallback_for_one_recipient_then_the_rest_upstream():
    p = session(fallback="spool")
    p.mail("a@lan", [])
    p.mail_done(OK)
    assert p.rcpt_done("ok@x", OK).text.startswith("250")
    assert p.rcpt_done("later@x", TEMP).text == replies.RECIPIENT_OK
    assert p.end_of_data(True) == core.UpstreamData(MAILBOX)
    it = p.data_done(OK)
    assert isinstance(it, core.SpoolIt) and it.rcpts == ("later@x",)
    assert p.spool_done(core.Spooled("9")).text == "250 2.0.0 OK"  # Office 365's reply
    assert p.outcome is SmtpOutcome.RELAYED


def test_deferred_recipients_that_cannot_be_spooled_fail_the_data():
    p = session(fallback="spool")
    p.mail("a@lan", [])
    p.mail_done(OK)
    p.rcpt_done("ok@x", OK)
    p.rcpt_done("later@x", TEMP)
    p.end_of_data(True)
    p.data_done(OK)
    assert p.spool_done(core.SpoolFailed(replies.SPOOL_ERROR)).text == replies.SPOOL_ERROR


def test_every_recipient_deferred_spools_and_resets_the_upstream():
    p = session(fallback="spool")
    p.mail("a@lan", [])
    p.mail_done(OK)
    p.rcpt_done("x@x", TEMP)
    it = p.end_of_data(True)
    assert isinstance(it, core.SpoolIt) and it.reset_first and it.rcpts == ("x@x",)


def test_a_lost_session_at_rcpt_spools_everything():
    p = session(fallback="spool")
    p.mail("a@lan", [])
    p.mail_done(OK)
    p.rcpt_done("a@x", OK)
    assert p.rcpt_done("b@x", LOST).text == replies.RECIPIENT_OK
    assert p.rcpt("c@x").text == replies.RECIPIENT_OK
    it = p.end_of_data(True)
    assert isinstance(it, core.SpoolIt) and it.rcpts == ("a@x", "b@x", "c@x")


def test_a_lost_session_without_fallback_is_451_at_data():
    p = session()
    p.mail("a@lan", [])
    p.mail_done(OK)
    p.rcpt_done("a@x", OK)
    assert p.end_of_data(upstream_alive=False).text == replies.CONNECTION_LOST_DATA


def test_a_lost_session_at_data_with_fallback_spools():
    p = session(fallback="spool")
    p.mail("a@lan", [])
    p.mail_done(OK)
    p.rcpt_done("a@x", OK)
    assert isinstance(p.end_of_data(upstream_alive=False), core.SpoolIt)


def test_data_failure_with_and_without_fallback():
    for fallback, expect in (("none", core.Reply), ("spool", core.SpoolIt)):
        p = session(fallback=fallback)
        p.mail("a@lan", [])
        p.mail_done(OK)
        p.rcpt_done("a@x", OK)
        p.end_of_data(True)
        assert isinstance(p.data_done(TEMP), expect)
    p = session(fallback="spool")
    p.mail("a@lan", [])
    p.mail_done(OK)
    p.rcpt_done("a@x", OK)
    p.end_of_data(True)
    assert p.data_done(PERM).text == PERM.reply and p.outcome is SmtpOutcome.REJECTED


def test_nested_mail_and_reset():
    p = session(delivery="spool")
    p.mail("a@lan", [])
    assert p.mail("b@lan", []).text == replies.NESTED_MAIL
    assert p.in_transaction
    p.reset()
    assert not p.in_transaction and p.mail("b@lan", []).text == replies.SENDER_OK


# -- properties --------------------------------------------------------------------------------

OUTCOMES = st.sampled_from([OK, TEMP, LOST, PERM, core.Accepted(354, "go on")])
STEPS = st.lists(st.tuples(st.sampled_from(["mail", "rcpt", "data", "reset"]), OUTCOMES,
                           st.booleans()), max_size=25)


def drive(p: core.SmtpPolicy, steps, pipelined: bool = False) -> list[tuple[str, str, bool]]:
    """Run client commands; every effect is answered with the drawn outcome. Returns
    (command, reply, held) where held says whether someone now durably has the message.
    `pipelined`: the upstream offers PIPELINING, so MAIL is held for the first RCPT, and a drawn
    failure there is the MAIL's when the step's flag is set, else the recipient's."""
    said = []
    for cmd, outcome, flag in steps:
        failed = outcome if isinstance(outcome, core.Failed) else None
        if cmd == "reset":
            p.reset()
            continue
        if cmd == "mail":
            e = p.mail("a@lan", [])
            if isinstance(e, core.UpstreamMail):
                e = p.mail_done(core.Pipelined() if pipelined else failed or OK)
            said.append((cmd, e.text, False))
        elif cmd == "rcpt":
            e = p.rcpt("b@x")
            if isinstance(e, core.UpstreamRcpt) and e.mail is not None:
                mail = failed if failed and flag else OK
                e = p.envelope_done("b@x", mail, None if mail is not OK else failed or OK)
            elif isinstance(e, core.UpstreamRcpt):
                e = p.rcpt_done("b@x", failed or OK)
            said.append((cmd, e.text, False))
        elif p.in_transaction:
            upstream_has = None  # None: not sent upstream; else whether Office 365 accepted
            held = False
            e = p.end_of_data(upstream_alive=True)
            while not isinstance(e, core.Reply):
                if isinstance(e, core.UpstreamData):
                    upstream_has = isinstance(outcome, core.Accepted)
                    e = p.data_done(outcome)
                else:  # the spool takes all of it, or the recipients Office 365 deferred
                    held = flag  # all of it, or the rest after Office 365 took the others
                    e = p.spool_done(core.Spooled("1") if flag else core.SpoolFailed("452 x"))
            held = held or (upstream_has is True and e.text.startswith("2"))
            said.append((cmd, e.text, held))
    return said


@given(STEPS, st.sampled_from(["direct", "spool"]), st.sampled_from(["none", "spool"]), st.booleans())
def test_no_2xx_for_a_message_nobody_holds(steps, delivery, fallback, pipelined):
    p = session(delivery=delivery, fallback=fallback)
    for cmd, reply, held in drive(p, steps, pipelined):
        if cmd == "data" and reply.startswith("2"):
            assert held, reply


@given(STEPS, st.sampled_from(["192.0.2.1", "10.2.0.1", "2001:db8::1", "not-an-ip"]), st.booleans())
def test_outside_the_networks_without_auth_mail_is_never_accepted(steps, peer, pipelined):
    p = session(user=False, peer=peer)
    for cmd, reply, _ in drive(p, steps, pipelined):
        if cmd == "mail":
            assert reply == replies.AUTH_REQUIRED
        assert not reply.startswith("2") or cmd not in ("rcpt", "data")


def test_out_of_order_outcomes_are_a_programming_error_not_a_reply():
    import pytest

    p = session()
    with pytest.raises(RuntimeError, match="mail_sent expected"):
        p.mail_done(OK)
    assert p.rcpts == []
    p.mail("a@lan", [])
    p.mail_done(OK)
    p.rcpt_done("a@x", OK)
    assert p.rcpts == ["a@x"]


def test_a_second_failure_in_a_spooled_transaction_keeps_the_first_reason():
    p = session(fallback="spool")
    p.mail("a@lan", [])
    p.mail_done(TEMP)  # falls back: reason = TEMP
    p.rcpt("b@x")
    it = p.end_of_data(upstream_alive=False)  # spooled already: the loss does not matter
    assert isinstance(it, core.SpoolIt) and it.reason == TEMP.reply


# -- an upstream that pipelines: MAIL is held for the first RCPT ---------------------------------

def pipelined(**kw) -> core.SmtpPolicy:
    p = session(**kw)
    assert isinstance(p.mail("dev@lan", ["SIZE=10"]), core.UpstreamMail)
    assert p.mail_done(core.Pipelined()).text == replies.SENDER_OK
    return p


HELD = core.UpstreamMail(MAILBOX, MAILBOX, ("SIZE=10",))
REFUSED = core.Failed("553 5.7.1 <scanner@contoso.test>: Sender address rejected")


def test_held_mail_goes_with_the_first_rcpt_only():
    p = pipelined()
    assert not p.upstream_open  # nothing went upstream yet: RSET need not either
    assert p.rcpt("bob@x.test") == core.UpstreamRcpt("bob@x.test", HELD)
    assert p.envelope_done("bob@x.test", OK, core.Accepted(250, "2.1.5 Ok")).text == "250 2.1.5 Ok"
    assert p.upstream_open
    assert p.rcpt("carol@x.test") == core.UpstreamRcpt("carol@x.test")  # MAIL is gone: RCPT alone
    assert p.rcpt_done("carol@x.test", PERM).text == PERM.reply  # that recipient's own reply
    assert p.rcpts == ["bob@x.test"]
    assert p.end_of_data(upstream_alive=True) == core.UpstreamData(MAILBOX)


def test_first_recipient_refused_keeps_the_mail_for_the_next():
    p = pipelined()
    p.rcpt("nobody@x.test")
    assert p.envelope_done("nobody@x.test", OK, PERM).text == PERM.reply
    assert p.rcpt("bob@x.test") == core.UpstreamRcpt("bob@x.test")  # upstream has MAIL already
    assert p.upstream_open


def test_a_refused_held_mail_is_every_recipients_reply():
    p = pipelined()
    p.rcpt("bob@x.test")
    assert p.envelope_done("bob@x.test", REFUSED, None).text == REFUSED.reply
    assert p.rcpt("carol@x.test") == core.Reply(REFUSED.reply)  # no second try upstream
    assert not p.upstream_open and p.rcpts == []
    assert p.outcome is SmtpOutcome.REJECTED and p.last_reply == REFUSED.reply
    # the client heard 250 to MAIL, so it is in a transaction until RSET (aiosmtpd says so too)
    assert p.mail("dev@lan", []).text == replies.NESTED_MAIL
    p.reset()
    assert p.mail("dev@lan", []) == core.UpstreamMail(MAILBOX, MAILBOX, ())


def test_a_4xx_held_mail_with_fallback_spools_the_whole_transaction():
    p = pipelined(fallback="spool")
    p.rcpt("bob@x.test")
    assert p.envelope_done("bob@x.test", TEMP, None).text == replies.RECIPIENT_OK
    assert p.rcpt("carol@x.test").text == replies.RECIPIENT_OK  # answered here, spooled
    it = p.end_of_data(upstream_alive=True)
    assert isinstance(it, core.SpoolIt) and it.rcpts == ("bob@x.test", "carol@x.test")
    assert it.reason == TEMP.reply and not it.reset_first  # upstream never opened a transaction


def test_a_lost_session_at_the_held_mail_without_fallback_is_its_451():
    p = pipelined()
    p.rcpt("bob@x.test")
    assert p.envelope_done("bob@x.test", LOST, None).text == LOST.reply
    assert p.outcome is SmtpOutcome.DEFERRED


def test_a_held_mail_that_turns_out_to_go_by_graph():
    p = pipelined()
    p.rcpt("bob@x.test")
    assert p.envelope_done("bob@x.test", core.ViaGraph(), None).text == replies.RECIPIENT_OK
    assert p.rcpt("carol@x.test").text == replies.RECIPIENT_OK
    it = p.end_of_data(upstream_alive=False)
    assert isinstance(it, core.GraphSend) and it.rcpts == ("bob@x.test", "carol@x.test")


def test_envelope_done_out_of_order_is_a_programming_error():
    import pytest

    with pytest.raises(RuntimeError):
        session().envelope_done("b@x", OK, OK)
