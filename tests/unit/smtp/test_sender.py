"""The sender decision: which address a message goes out as, and whose token sends it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay365.smtp.policy import Reply, Rules, SmtpPolicy, UpstreamMail
from relay365.smtp.sender import Refuse, Send, SenderRights, allowed_senders, decide_sender, is_allowed

ERP = SenderRights("erp@contoso.com", "erp@contoso.com",
                   ("invoices@contoso.com", "*@orders.contoso.com"), "rewrite")
SHARED = SenderRights("helpdesk@contoso.com", "agent@contoso.com", (), "rewrite")


def test_the_mailbox_and_send_as_are_kept_and_from_agrees():
    for address in ("erp@contoso.com", "invoices@contoso.com", "Invoices@Contoso.COM",
                    "anyone@orders.contoso.com"):
        assert decide_sender(ERP, address) == Send("erp@contoso.com", address, address)


def test_anything_else_is_rewritten_to_the_mailbox():
    for address in ("", "printer@lan.local", "noreply@contoso.com", "x@sub.orders.contoso.com",
                    "orders.contoso.com", "@orders.contoso.com"):
        assert decide_sender(ERP, address) == Send("erp@contoso.com", "erp@contoso.com",
                                                   "erp@contoso.com")


def test_refuse_names_the_allowed_addresses():
    refuse = SenderRights(ERP.mailbox, ERP.account, ERP.send_as, "refuse")
    got = decide_sender(refuse, "noreply@contoso.com")
    assert isinstance(got, Refuse)
    assert got.reply == ("550 5.7.60 Not allowed to send as <noreply@contoso.com>; allowed: "
                         "erp@contoso.com, invoices@contoso.com, *@orders.contoso.com")
    assert decide_sender(refuse, "invoices@contoso.com") == Send(
        "erp@contoso.com", "invoices@contoso.com", "invoices@contoso.com")


def test_keep_passes_everything_on_untouched():
    keep = SenderRights(ERP.mailbox, ERP.account, ERP.send_as, "keep")
    assert decide_sender(keep, "printer@lan.local") == Send("erp@contoso.com", "printer@lan.local", None)
    assert decide_sender(keep, "invoices@contoso.com") == Send(
        "erp@contoso.com", "invoices@contoso.com", None)


def test_a_shared_mailbox_is_sent_by_its_delegate():
    assert decide_sender(SHARED, "helpdesk@contoso.com") == Send(
        "agent@contoso.com", "helpdesk@contoso.com", "helpdesk@contoso.com")
    assert decide_sender(SHARED, "someone@lan") == Send(
        "agent@contoso.com", "helpdesk@contoso.com", "helpdesk@contoso.com")


def test_a_sender_with_its_own_account_logs_in_as_itself():
    own = frozenset({"erp@contoso.com", "invoices@contoso.com"})
    assert decide_sender(ERP, "INVOICES@contoso.com", own).login == "invoices@contoso.com"
    # the mailbox itself keeps its configured account, even when it has one of its own
    assert decide_sender(SHARED, "helpdesk@contoso.com",
                         frozenset({"helpdesk@contoso.com"})).login == "agent@contoso.com"
    # a wildcard sender with no account of its own: the login's account, with SendAs
    assert decide_sender(ERP, "a@orders.contoso.com", own).login == "erp@contoso.com"


def test_allowed_senders_lists_each_once():
    rights = SenderRights("a@x.com", "a@x.com", ("A@x.com", "b@x.com", "b@x.com"))
    assert allowed_senders(rights) == ["a@x.com", "b@x.com"]


addresses = st.one_of(
    st.sampled_from(["erp@contoso.com", "invoices@contoso.com", "x@orders.contoso.com", "", "<>",
                     "@", "a@", "*@orders.contoso.com"]),
    st.emails().map(str), st.text(max_size=40))


@given(addresses, st.sampled_from(["rewrite", "keep", "refuse"]))
def test_envelope_and_from_always_agree_with_what_was_allowed(address, mode):
    rights = SenderRights(ERP.mailbox, ERP.account, ERP.send_as, mode)
    got = decide_sender(rights, address, frozenset({"invoices@contoso.com"}))
    if isinstance(got, Refuse):
        assert mode == "refuse" and not is_allowed(rights, address)
        assert got.reply.startswith("550 ") and "erp@contoso.com" in got.reply
        return
    assert got.login in ("erp@contoso.com", "invoices@contoso.com")
    if mode == "keep":
        assert got.envelope == address and got.from_header is None
    else:
        assert got.from_header == got.envelope and is_allowed(rights, got.envelope)
        assert got.envelope == (address if is_allowed(rights, address) else rights.mailbox)


def test_the_policy_asks_the_sender_module():
    rules = Rules("refuse", own_accounts=frozenset({"invoices@contoso.com"}))
    p = SmtpPolicy(rules, "192.0.2.1")
    p.authenticated("erp", "erp@contoso.com", "direct", "none", send_as=["invoices@contoso.com"])
    refused = p.mail("noreply@contoso.com", [])
    assert isinstance(refused, Reply) and refused.text.startswith("550 5.7.60")
    assert p.outcome == "rejected" and not p.in_transaction
    assert p.mail("invoices@contoso.com", ["SIZE=10"]) == UpstreamMail(
        "invoices@contoso.com", "invoices@contoso.com", ("SIZE=10",))
    p = SmtpPolicy(Rules("rewrite"), "192.0.2.1")
    p.authenticated("hd", "helpdesk@contoso.com", "direct", "none", account="agent@contoso.com")
    assert p.mail("", []) == UpstreamMail("agent@contoso.com", "helpdesk@contoso.com", ())


def test_a_users_own_sender_mode_wins_over_the_listeners():
    p = SmtpPolicy(Rules("rewrite"), "192.0.2.1")
    p.authenticated("erp", "erp@contoso.com", "direct", "none", sender_mode="refuse")
    refused = p.mail("noreply@contoso.com", [])
    assert isinstance(refused, Reply) and refused.text.startswith("550 5.7.60")
