"""`delivery.pipeline`: the RFC 2920 group's bytes, its replies in any chunking, and what an
envelope came to. Every reply transcript runs whole, byte by byte and in random cuts, and reads
the same words as aiosmtplib's own parser."""

from __future__ import annotations

import pytest
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import SMTPProtocol
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay365.delivery.pipeline import (
    MAX_REPLY_LINE,
    Envelope,
    Reply,
    ReplyError,
    ReplyReader,
    expected,
    group,
    plain_path,
    settle,
)

OK = Reply(250, "2.1.0 Ok")
RCPT_OK = Reply(250, "2.1.5 Ok")
FORWARD = Reply(251, "2.1.5 will forward")
UNKNOWN = Reply(550, "5.1.1 <nobody@example.test>: Recipient address rejected: User unknown")
BUSY = Reply(451, "4.3.0 try later")
NEED_MAIL = Reply(503, "5.5.1 Error: need MAIL command")
CLOSING = Reply(421, "4.3.2 Service shutting down")


def read(data: bytes, cut: int | None = None) -> list[Reply]:
    reader = ReplyReader()
    step = cut or len(data) or 1
    out: list[Reply] = []
    for i in range(0, len(data), step):
        out += reader.feed(data[i:i + step])
    return out


def aiosmtplib_reads(data: bytes) -> list[tuple[int, str]]:
    """What aiosmtplib's parser makes of the same bytes, one reply after another."""
    protocol = SMTPProtocol.__new__(SMTPProtocol)
    protocol._buffer = bytearray(data)
    out = []
    while (response := protocol._read_response_from_buffer()) is not None:
        out.append((response.code, response.message))
    return out


# -- the group ------------------------------------------------------------------------------------

def test_group_is_mail_then_every_rcpt_in_one_write():
    assert group("<scanner@contoso.test>", ["SIZE=10240", "BODY=8BITMIME"],
                 ["<bob@example.test>", "<carol@example.test>"]) == (
        b"MAIL FROM:<scanner@contoso.test> SIZE=10240 BODY=8BITMIME\r\n"
        b"RCPT TO:<bob@example.test>\r\nRCPT TO:<carol@example.test>\r\n")
    assert group("<>", [], ["<a@b>"]) == b"MAIL FROM:<>\r\nRCPT TO:<a@b>\r\n"


@pytest.mark.parametrize("mail_from, options, rcpts", [
    ("<a@b>\r\nRSET", [], ["<c@d>"]),
    ("<a@b>", ["SIZE=1\nDATA"], ["<c@d>"]),
    ("<a@b>", [], ["<c@d>\rQUIT"]),
    ("<a@b>", [], ["<c\x00@d>"]),
])
def test_no_control_character_can_add_a_command(mail_from, options, rcpts):
    with pytest.raises(ValueError, match="control character"):
        group(mail_from, options, rcpts)


def test_non_ascii_is_refused_as_aiosmtplib_refuses_it():
    with pytest.raises(UnicodeEncodeError):
        group("<jörg@example.test>", [], ["<a@b>"])


@settings(max_examples=1000)
@given(st.text(st.sampled_from("abcZ09.@-_+'!~\"<> ()[]\\,;:\u00e9"), max_size=24))
@example("scanner@contoso.test")
@example("a..b@c")
@example("a@b.")
@example("<a@b>")
@example("")
def test_the_plain_path_is_what_aiosmtplib_quotes(address):
    fast = plain_path(address)
    if fast is not None:  # taken only where aiosmtplib's answer is the same
        assert fast == quote_address(address)


# -- replies --------------------------------------------------------------------------------------

TRANSCRIPTS = [
    (b"250 2.1.0 Ok\r\n", [(250, "2.1.0 Ok")]),
    (b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 nope\r\n",
     [(250, "2.1.0 Ok"), (250, "2.1.5 Ok"), (550, "5.1.1 nope")]),
    (b"250-first\r\n250-second \r\n250 third\r\n451 4.3.0 later\r\n",
     [(250, "first\nsecond\nthird"), (451, "4.3.0 later")]),
    (b"250\r\n250 \r\n", [(250, ""), (250, "")]),
    (b"250 lf only\n550 5.7.1 no\n", [(250, "lf only"), (550, "5.7.1 no")]),
    (b"421 4.3.2 bye\r\n", [(421, "4.3.2 bye")]),
    (b"250 caf\xc3\xa9 \xff\r\n", [(250, "caf\u00e9 \udcff")]),
]


@pytest.mark.parametrize("data, replies", TRANSCRIPTS)
def test_replies_whole_and_byte_by_byte(data, replies):
    whole = [(r.code, r.text) for r in read(data)]
    assert whole == replies
    assert [(r.code, r.text) for r in read(data, cut=1)] == replies
    assert whole == aiosmtplib_reads(data)  # the words a client hears do not change


def test_a_partial_reply_waits_for_the_rest():
    reader = ReplyReader()
    assert reader.feed(b"250-Ok\r\n250 still") == []
    assert reader.feed(b" more\r\n550 5.1") == [Reply(250, "Ok\nstill more")]
    assert reader.feed(b".1 no\r\n") == [Reply(550, "5.1.1 no")]


@pytest.mark.parametrize("data", [b"OK then\r\n", b"25\r\n", b"\r\n", b"2x0 Ok\r\n"])
def test_what_is_no_reply_raises(data):
    with pytest.raises(ReplyError):
        read(data)


def test_an_endless_line_raises_before_its_end():
    reader = ReplyReader()
    with pytest.raises(ReplyError, match="too long"):
        reader.feed(b"250 " + b"x" * MAX_REPLY_LINE)


def test_an_endless_multiline_reply_raises():
    with pytest.raises(ReplyError, match="too long"):
        read(b"250-" + b"x" * 1000 + b"\r\n" * 1 + (b"250-" + b"y" * 1000 + b"\r\n") * 40)


reply_lines = st.builds(
    lambda code, lines: b"".join(
        f"{code}{'-' if i < len(lines) - 1 else ' '}{text}\r\n".encode()
        for i, text in enumerate(lines)),
    st.integers(200, 599),
    st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
             min_size=1, max_size=4))


@given(st.lists(reply_lines, min_size=1, max_size=6), st.data())
def test_any_cut_reads_the_same_replies_as_aiosmtplib(replies, data):
    raw = b"".join(replies)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=8)))
    reader, got = ReplyReader(), []
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        got += reader.feed(raw[a:b])
    assert [(r.code, r.text) for r in got] == aiosmtplib_reads(raw)
    assert len(got) == len(replies)


# -- what the envelope came to ---------------------------------------------------------------------

def test_some_recipients_accepted_go_on_to_data():
    env = settle([OK, RCPT_OK, UNKNOWN, FORWARD], 3)
    assert env == Envelope(OK, (RCPT_OK, UNKNOWN, FORWARD))
    assert env.mail_ok and env.accepted == (0, 2) and not env.needs_rset and env.closing is None


def test_no_recipient_accepted_is_rset_not_data():
    env = settle([OK, UNKNOWN, BUSY], 2)
    assert env.accepted == () and env.needs_rset


def test_a_refused_mail_consumes_every_rcpt_reply_and_sends_nothing():
    env = settle([Reply(553, "5.7.1 Sender address rejected"), NEED_MAIL, NEED_MAIL], 2)
    assert not env.mail_ok and env.accepted == ()
    assert env.rcpts == (NEED_MAIL, NEED_MAIL)  # read, so the next command's reply is its own
    assert not env.needs_rset  # no transaction was opened


def test_a_421_ends_the_replies_and_the_rest_are_lost_not_refused():
    env = settle([OK, RCPT_OK, CLOSING], 4)
    assert env.rcpts == (RCPT_OK, CLOSING, CLOSING, CLOSING)
    assert env.closing == CLOSING and not env.needs_rset
    assert settle([CLOSING], 2).closing == CLOSING


def test_fewer_replies_without_a_421_is_a_bug_not_an_envelope():
    with pytest.raises(ValueError):
        settle([OK, RCPT_OK], 2)
    with pytest.raises(ValueError):
        settle([], 0)


def test_more_replies_than_commands_are_not_taken_for_recipients():
    assert settle([OK, RCPT_OK, RCPT_OK], 1).rcpts == (RCPT_OK,)
    assert expected(3) == 4


def test_reply_reads_as_the_client_hears_it():
    assert str(UNKNOWN).startswith("550 5.1.1")
    assert BUSY.transient and CLOSING.transient and not UNKNOWN.transient
