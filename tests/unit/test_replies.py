"""What the SMTP client hears: every reply text and the mapping from failures to replies."""

from __future__ import annotations

import re

import pytest

from relay365 import replies
from relay365.errors import RelayError, TokenError, UpstreamAuthError, UpstreamError
from relay365.replies import for_exception, one_line, upstream_reply

# -- replies -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, flat", [
    ("one", "one"),
    ("5.7.60 SMTP; Client does not have permissions\r\n to send as this sender",
     "5.7.60 SMTP; Client does not have permissions to send as this sender"),
    ("  a\tb\n\nc  ", "a b c"),
    ("", ""),
])
def test_one_line(text, flat):
    assert one_line(text) == flat


def test_one_line_is_bounded():
    assert one_line("x" * 1000) == "x" * 400 and one_line("x " * 100, 10) == "x x x x x "


@pytest.mark.parametrize("code, text, reply", [
    (550, "5.7.60 SMTP; Client does not have\r\n permissions",
     "550 5.7.60 SMTP; Client does not have permissions"),
    (452, "4.5.3 Too many recipients", "452 4.5.3 Too many recipients"),
    (250, "2.0.0 OK queued", "250 2.0.0 OK queued"),
    (554, "", "554 No text"),
    (199, "weird", "451 4.4.0 Unexpected reply from Office 365; try again later"),
    (600, "weird", "451 4.4.0 Unexpected reply from Office 365; try again later"),
    (-1, "", "451 4.4.0 Unexpected reply from Office 365; try again later"),
])
def test_upstream_reply(code, text, reply):
    assert upstream_reply(code, text) == reply


@pytest.mark.parametrize("exc, reply", [
    (TokenError("a@b", "temporarily_unavailable", 90033, True, "retry"),
     "451 4.7.0 Office 365 sign-in is temporarily unavailable; try again later"),
    (TokenError("a@b", "invalid_grant", 70008, False, "re-authorise ..."),
     "451 4.7.0 The relay's Office 365 account needs attention from its administrator; try again later"),
    (UpstreamAuthError("refused", code=535, text="5.7.3 Authentication\r\n unsuccessful"),
     "451 4.7.0 Office 365 refused the relay's login: 5.7.3 Authentication unsuccessful; try again later"),
    (UpstreamAuthError("refused"), "451 4.7.0 Office 365 refused the relay's login; try again later"),
    (UpstreamError("refused", code=550, text="5.1.10 RESOLVER.ADR.RecipientNotFound", transient=False),
     "550 5.1.10 RESOLVER.ADR.RecipientNotFound"),
    (UpstreamError("busy", code=421, text="4.3.2 Service not available"), "421 4.3.2 Service not available"),
    (UpstreamError("cannot reach upstream smtp.office365.com:587: ConnectionRefusedError"),
     "451 4.4.1 Office 365 cannot be reached right now; try again later"),
    # a failure must never sound like success: aiosmtplib raises for any code it did not expect
    (UpstreamError("upstream refused the message", code=250, text="2.0.0 OK"),
     "451 4.4.0 Unexpected reply from Office 365; try again later"),
    (UpstreamError("upstream refused the message", code=354, text="go ahead"),
     "451 4.4.0 Unexpected reply from Office 365; try again later"),
    (RelayError("secret internals"), "451 4.3.0 Internal error in the relay; try again later"),
    (KeyError("password"), "451 4.3.0 Internal error in the relay; try again later"),
])
def test_for_exception(exc, reply):
    assert for_exception(exc) == reply


def test_token_details_stay_out_of_the_reply():
    exc = TokenError("scanner@contoso.com", "invalid_grant", 70008, False, "re-authorise", "AADSTS70008: x")
    assert "AADSTS" not in for_exception(exc) and "scanner" not in for_exception(exc)


FIXED = sorted(n for n, v in vars(replies).items() if n.isupper() and isinstance(v, str)
               and re.match(r"[2-5]\d\d ", v))


def test_every_fixed_reply_is_checked():
    assert {"INTERNAL_ERROR", "SHUTTING_DOWN", "SPOOL_FULL", "RECIPIENT_OK"} <= set(FIXED)


@pytest.mark.parametrize("name", FIXED)
def test_fixed_replies_are_well_formed(name):
    """`NNN X.Y.Z text`: enhanced status code class matching the reply code, one line."""
    reply = getattr(replies, name)
    code, enhanced = reply.split(" ")[:2]
    assert enhanced[0] == code[0] and enhanced.count(".") == 2 and "\n" not in reply
