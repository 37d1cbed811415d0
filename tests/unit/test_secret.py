"""A Secret never shows itself: not in repr, str, format, containers, exceptions or logs."""

from __future__ import annotations

import hmac
import io
import json
import logging
import pickle

import pytest
import structlog

from relay365 import logs
from relay365.sasl import Credentials
from relay365.secret import Secret

CLEAR = "hunter2-client-secret"


@pytest.fixture
def s() -> Secret:
    return Secret(CLEAR)


@pytest.mark.parametrize("render", [
    str, repr, ascii, "{}".format, "{!r}".format, "{!s}".format, lambda v: f"{v}", lambda v: f"{v}",
    lambda v: f"{v!r}", lambda v: str([v]), lambda v: str({"password": v}), lambda v: str((v,)),
    lambda v: format(v, ""), lambda v: repr(Credentials("u", v)), lambda v: str(ValueError(v)),
])
def test_every_rendering_is_redacted(s, render):
    assert render(s) in ("Secret('***')", "[Secret('***')]", "{'password': Secret('***')}",
                         "(Secret('***'),)", "Credentials(username='u', password=Secret('***'), authzid='')")


def test_a_format_spec_raises_without_the_value(s):
    with pytest.raises(TypeError) as err:
        f"{s:>30}"
    assert CLEAR not in str(err.value)


def test_reveal_is_the_only_way_out(s):
    assert s.reveal() == CLEAR
    assert not hasattr(s, "__dict__")
    with pytest.raises(AttributeError):
        s.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(s)
    with pytest.raises(TypeError, match="wraps a str"):
        Secret(CLEAR.encode())  # type: ignore[arg-type]


def test_equality_hash_and_truth():
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert Secret("a") != "a"  # never equal to the clear text, which would make it easy to leak by accident
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2
    assert not Secret("") and Secret("x")


def test_equality_is_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert Secret("abc") != Secret("abd")
    assert calls == [(b"abc", b"abd")]


def test_stdlib_logging_shows_no_secret(s, caplog):
    logging.getLogger("relay365.test").warning("login with %s and %r", s, s)
    assert CLEAR not in caplog.text and "Secret('***')" in caplog.text


@pytest.fixture
def relay_logging():
    """relay.logs.configure() into a buffer; the global logging and structlog setup restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    yield out
    root.handlers[:], level = saved
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_relay_log_pipeline_redacts_secrets(relay_logging, s, fmt):
    logs.configure("info", fmt, stream=relay_logging)
    log = structlog.get_logger("relay365.test")
    log.info("upstream_login", password=s, nested={"token": s}, creds=Credentials("u", s))
    logging.getLogger("msal").warning("token %s", s)  # a stdlib logger through the same processors
    text = relay_logging.getvalue()
    assert CLEAR not in text
    assert text.count("upstream_login") == 1 and "token Secret('***')" in text
    if fmt == "json":
        event = json.loads(text.splitlines()[0])
        assert event["password"] == "***" and event["nested"] == {"token": "Secret('***')"}
        assert event["creds"] == "Credentials(username='u', password=Secret('***'), authzid='')"
