"""Properties of the core over generated input: chunking never matters, nothing ever escapes, and
the core never holds more than its limits."""

from __future__ import annotations

import base64
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from relay365.imap.core import (
    MAX_BUFFERED,
    Authenticate,
    Close,
    Effect,
    ImapPreauth,
    SendToClient,
    StartSplice,
    StartTLS,
    State,
)
from relay365.imap.parse import MAX_COMMAND_SIZE

from .helpers import merge

ATOM = st.text(st.sampled_from("abcXYZ019.-_@!#&'+,/:;<>=?^`|~$"), min_size=1, max_size=8)
TAG = st.text(st.sampled_from("abcAZ0189.]"), min_size=1, max_size=6)
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r\n"),
               max_size=12)
EOL = st.sampled_from([b"\r\n", b"\n"])


def _case(draw, name: str) -> bytes:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name).encode()


@st.composite
def strings(draw, atom_ok: bool = True) -> bytes:
    """One astring (or string) in any of its encodings, with the CRLFs a literal brings along."""
    form = draw(st.sampled_from(["atom", "quoted", "sync", "nonsync"] if atom_ok else
                                ["quoted", "sync", "nonsync"]))
    if form == "atom":
        return draw(ATOM).encode()
    value = draw(TEXT).encode()
    if form == "quoted":
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d%s}" % (len(value), b"" if form == "sync" else b"+") + draw(EOL) + value


@st.composite
def commands(draw) -> bytes:
    """One complete command line (and its follow-up lines), valid or plausibly wrong."""
    tag = draw(TAG).encode()
    kind = draw(st.sampled_from(["noop", "capability", "id_nil", "id_list", "login", "plain_ir",
                                 "plain_continue", "plain_cancel", "other", "junk"]))
    eol = draw(EOL)
    if kind in ("noop", "capability"):
        return tag + b" " + _case(draw, kind) + eol
    if kind == "id_nil":
        return tag + b" ID NIL" + eol
    if kind == "id_list":
        pair = st.tuples(strings(atom_ok=False), strings(atom_ok=False))
        pairs = draw(st.lists(pair, max_size=3))
        return tag + b" ID (" + b" ".join(f + b" " + v for f, v in pairs) + b")" + eol
    if kind == "login":
        user, password = draw(strings()), draw(strings())
        return tag + b" " + _case(draw, "login") + b" " + user + b" " + password + eol
    authzid = draw(st.sampled_from([b"", b"bob"]))
    message = b"\0".join([authzid, b"bob", draw(TEXT).encode() or b"x"])
    response = base64.b64encode(message)
    if kind == "plain_ir":
        return tag + b" AUTHENTICATE PLAIN " + response + eol
    if kind == "plain_continue":
        return tag + b" AUTHENTICATE PLAIN" + eol + response + eol
    if kind == "plain_cancel":
        return tag + b" AUTHENTICATE PLAIN" + eol + b"*" + eol
    if kind == "other":
        return tag + b" SELECT INBOX" + eol
    return draw(st.sampled_from([b"(", b"", b"+x NOOP", b"a1 NOOP extra"])) + eol


@st.composite
def sessions(draw) -> bytes:
    body = b"".join(draw(st.lists(commands(), max_size=12)))
    ending = draw(st.sampled_from([b"", b"z LOGOUT\r\n", b"z STARTTLS\r\n"]))
    return body + ending


def split(draw, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]


def run(core: ImapPreauth, chunks: list[bytes]) -> list[Effect]:
    """Play a well-behaved adapter: logins fail (mostly not for the client's fault), TLS starts."""
    outcomes = itertools.cycle(["unavailable", "limit", "unavailable", "auth_failed"])
    effects: list[Effect] = []

    def settle(new: list[Effect]) -> None:
        effects.extend(new)
        check_bounds(core)
        while core.state in (State.AWAITING_LOGIN, State.TLS_HANDSHAKE):
            new = core.login_failed(next(outcomes)) if core.state is State.AWAITING_LOGIN \
                else core.tls_started()
            effects.extend(new)
            check_bounds(core)

    for chunk in chunks:
        settle(core.receive_data(chunk))
    return effects


def check_bounds(core: ImapPreauth) -> None:
    assert core.buffered_size <= MAX_BUFFERED
    if core.state is not State.AWAITING_LOGIN:
        assert core.buffered_size <= MAX_COMMAND_SIZE
    if core.state is State.CLOSED:
        assert core.buffered_size == 0


def new_core(draw) -> ImapPreauth:
    tls = draw(st.booleans())
    return ImapPreauth(tls_active=tls, starttls_available=draw(st.booleans()),
                       allow_plaintext_auth=draw(st.booleans()))


@settings(deadline=None, max_examples=300)
@given(st.data())
def test_any_chunking_of_a_session_gives_the_same_effects(data):
    session = data.draw(sessions())
    flags = dict(tls_active=data.draw(st.booleans()), starttls_available=data.draw(st.booleans()),
                 allow_plaintext_auth=data.draw(st.booleans()))
    whole = merge(run(ImapPreauth(**flags), [session]))
    chunked = merge(run(ImapPreauth(**flags), split(data.draw, session)))
    bytewise = merge(run(ImapPreauth(**flags), [session[i:i + 1] for i in range(len(session))]))
    assert chunked == whole
    assert bytewise == whole


def check_effects(effects: list[Effect]) -> None:
    for i, effect in enumerate(effects):
        assert isinstance(effect, (SendToClient, Close, Authenticate, StartTLS))
        if isinstance(effect, SendToClient):
            assert effect.data.endswith(b"\r\n") and b"\n" not in effect.data.replace(b"\r\n", b"")
        if isinstance(effect, Close):
            assert i == len(effects) - 1, "nothing after Close"


@settings(deadline=None, max_examples=500)
@given(st.data())
def test_arbitrary_bytes_only_get_replies_and_never_raise(data):
    core = new_core(data.draw)
    noise = data.draw(st.binary(max_size=600))
    check_effects(run(core, split(data.draw, noise)))


@settings(deadline=None, max_examples=300)
@given(st.data())
def test_commands_mixed_with_noise_only_get_replies_and_never_raise(data):
    core = new_core(data.draw)
    parts = data.draw(st.lists(st.one_of(commands(), st.binary(max_size=30),
                                         st.sampled_from([b"{5}\r\n", b"{3+}\r\n", b"{99999}\r\n",
                                                          b"\r\n", b'"', b"\\", b"*\r\n"])),
                               max_size=15))
    check_effects(run(core, split(data.draw, b"".join(parts))))


@settings(deadline=None, max_examples=50)
@given(st.data())
def test_big_noise_stays_bounded(data):
    core = new_core(data.draw)
    unit = data.draw(st.sampled_from([b"a", b"a1 ID (", b"a1 LOGIN {4096+}\r\n", b" {4000+}\r\n",
                                      b"a1 LOGIN bob pw\r\n", b"\r\n"]))
    noise = unit * (70_000 // len(unit))
    effects = run(core, split(data.draw, noise))
    check_effects(effects)
    assert StartSplice() not in effects
