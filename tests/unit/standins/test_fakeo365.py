"""FakeO365SMTP driven by stdlib smtplib and by aiosmtplib, over real STARTTLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import ssl

import aiosmtplib
import msal
import pytest
import requests

from relay365.standins import FakeIdP, FakeO365SMTP
from relay365.standins.fakeo365 import XOAUTH2_ERROR, parse_xoauth2

MAILBOX = "bob@contoso.com"
TOKEN = "eyJ0" + "x" * 2996  # Exchange-sized bearer token
MESSAGE = b"From: bob@contoso.com\r\nTo: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture
def client_tls(certs):
    return ssl.create_default_context(cafile=str(certs.ca_file))


def sasl(mailbox=MAILBOX, token=TOKEN) -> str:
    return f"user={mailbox}\x01auth=Bearer {token}\x01\x01"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def accept(token, mailbox):
    return token == TOKEN and mailbox.lower() == MAILBOX


def serve(certs, client, check_token=accept):
    """Run `client(port)` in a thread against a fresh fake; return (result, fake)."""
    async def main():
        fake = FakeO365SMTP(certs.cert_file, certs.key_file, check_token)
        port = await fake.start()
        try:
            return await asyncio.to_thread(client, port), fake
        finally:
            await fake.stop()
    return asyncio.run(main())


def tls_session(port, client_tls) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    s.starttls(context=client_tls)
    s.ehlo()
    return s


# -- stdlib smtplib ---------------------------------------------------------------------------

def test_nothing_but_starttls_before_tls(certs):
    def client(port):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo()
            features = dict(s.esmtp_features)
            return features, s.docmd("AUTH", "XOAUTH2 " + b64(sasl())), s.docmd("MAIL FROM:<a@b>")

    (features, auth, mail), fake = serve(certs, client)
    assert "starttls" in features and "auth" not in features
    assert auth[0] == 530 and mail[0] == 530
    assert fake.messages == []


def test_send_with_xoauth2(certs, client_tls):
    seen = []

    def client(port):
        with tls_session(port, client_tls) as s:
            auth_line = s.esmtp_features["auth"]
            reply = s.auth("XOAUTH2", lambda challenge=None: sasl(), initial_response_ok=True)
            refused = s.sendmail(MAILBOX, ["alice@example.org", "carol@example.org"], MESSAGE)
            return auth_line, reply, refused

    async def main():
        fake = FakeO365SMTP(certs.cert_file, certs.key_file, accept)
        fake.on_message = seen.append
        port = await fake.start()
        try:
            result = await asyncio.to_thread(client, port)
            return result, await fake.wait_for_messages(1, timeout=5)
        finally:
            await fake.stop()

    (auth_line, reply, refused), [message] = asyncio.run(main())
    assert auth_line.strip() == "XOAUTH2"
    assert reply == (235, b"2.7.0 Authentication successful")
    assert refused == {}
    assert message.mechanism == "XOAUTH2" and message.mailbox == MAILBOX
    assert message.mail_from == MAILBOX
    assert message.rcpt_tos == ("alice@example.org", "carol@example.org")
    assert message.data == MESSAGE and message.tls is True
    assert seen == [message]
    assert TOKEN not in repr(message)


def test_bad_token_gets_the_office365_challenge_then_535(certs, client_tls):
    def client(port):
        with tls_session(port, client_tls) as s:
            challenge = s.docmd("AUTH", "XOAUTH2 " + b64(sasl(token="expired")))
            final = s.docmd("")
            mail = s.docmd("MAIL FROM:<bob@contoso.com>")
            return challenge, final, mail

    (challenge, final, mail), _fake = serve(certs, client)
    assert challenge[0] == 334
    assert json.loads(base64.b64decode(challenge[1])) == XOAUTH2_ERROR
    assert final == (535, b"5.7.3 Authentication unsuccessful")
    assert mail[0] == 530


def test_bad_token_through_smtplib_auth(certs, client_tls):
    def client(port):
        with tls_session(port, client_tls) as s:
            with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                s.auth("XOAUTH2", lambda challenge=None: sasl(mailbox="alice@contoso.com"),
                       initial_response_ok=True)
            return failed.value.smtp_code, failed.value.smtp_error

    (code, text), _ = serve(certs, client)
    assert (code, text) == (535, b"5.7.3 Authentication unsuccessful")


def test_auth_without_initial_response(certs, client_tls):
    def client(port):
        with tls_session(port, client_tls) as s:
            return s.docmd("AUTH", "XOAUTH2"), s.docmd(b64(sasl()))

    (first, second), _ = serve(certs, client)
    assert first == (334, b"")
    assert second[0] == 235


@pytest.mark.parametrize("blob, code", [
    ("*", 501),  # client aborts at the challenge
    ("not base64!", 501),
])
def test_aborted_or_undecodable_continuation(certs, client_tls, blob, code):
    def client(port):
        with tls_session(port, client_tls) as s:
            return s.docmd("AUTH", "XOAUTH2"), s.docmd(blob), s.noop()

    (first, second, noop), _ = serve(certs, client)
    assert first[0] == 334 and second[0] == code and noop[0] == 250


def test_undecodable_initial_response(certs, client_tls):
    def client(port):
        with tls_session(port, client_tls) as s:
            return s.docmd("AUTH", "XOAUTH2 %%%")

    (reply), _ = serve(certs, client)
    assert reply[0] == 501


def test_only_xoauth2_is_offered(certs, client_tls):
    def client(port):
        with tls_session(port, client_tls) as s:
            return s.docmd("AUTH", "PLAIN " + b64("\0bob\0pw")), s.docmd("AUTH", "LOGIN")

    (plain, login), _ = serve(certs, client)
    assert plain[0] == 504 and login[0] == 504


def test_mail_before_auth_is_refused(certs, client_tls):
    def client(port):
        with tls_session(port, client_tls) as s:
            return s.docmd("MAIL FROM:<bob@contoso.com>")

    reply, _ = serve(certs, client)
    assert reply == (530, b"5.7.57 Client not authenticated to send mail")


def test_send_as_another_address_is_refused_after_data(certs, client_tls):
    def client(port):
        with tls_session(port, client_tls) as s:
            s.auth("XOAUTH2", lambda challenge=None: sasl(), initial_response_ok=True)
            mail, rcpt = s.mail("eve@contoso.com"), s.rcpt("alice@example.org")
            data = s.data(MESSAGE)
            s.rset()
            s.sendmail("Bob@Contoso.com", ["alice@example.org"], MESSAGE)  # case does not matter
            return mail, rcpt, data

    (mail, rcpt, data), fake = serve(certs, client)
    assert mail[0] == 250 and rcpt[0] == 250
    assert data == (554, b"5.2.252 SendAsDenied; bob@contoso.com not allowed to send as "
                         b"eve@contoso.com")
    assert [m.mail_from for m in fake.messages] == ["Bob@Contoso.com"]


@pytest.mark.parametrize("length", [1500, 3000, 8000])
def test_long_tokens_fit(certs, client_tls, length):
    token = "y" * length

    def client(port):
        with tls_session(port, client_tls) as s:
            return s.auth("XOAUTH2", lambda challenge=None: sasl(token=token),
                          initial_response_ok=True)

    reply, _ = serve(certs, client, check_token=lambda t, m: t == token)
    assert reply[0] == 235


def test_absurd_auth_line_is_refused(certs, client_tls):
    def client(port):
        with tls_session(port, client_tls) as s:
            return s.docmd("AUTH", "XOAUTH2 " + b64(sasl(token="z" * 20000))), s.noop()

    (reply, noop), _ = serve(certs, client)
    assert reply[0] == 500 and noop[0] == 250


def test_data_lines_keep_the_rfc_limit(certs, client_tls):
    def client(port):
        with tls_session(port, client_tls) as s:
            s.auth("XOAUTH2", lambda challenge=None: sasl(), initial_response_ok=True)
            s.mail(MAILBOX)
            s.rcpt("alice@example.org")
            return s.data(b"Subject: x\r\n\r\n" + b"a" * 1200 + b"\r\n")

    reply, fake = serve(certs, client)
    assert reply[0] == 500 and fake.messages == []


def test_exceptions_never_reach_the_wire(certs, client_tls):
    def explode(token, mailbox):
        raise RuntimeError("secret internals")

    def client(port):
        with tls_session(port, client_tls) as s:
            return s.docmd("AUTH", "XOAUTH2 " + b64(sasl())), s.noop()

    (reply, noop), fake = serve(certs, client, check_token=explode)
    assert reply[0] == 451 and b"secret" not in reply[1] and b"Runtime" not in reply[1]
    assert noop[0] == 250
    assert [type(e) for e in fake.errors] == [RuntimeError]


def test_stop_closes_idle_sessions(certs, client_tls):
    async def main():
        fake = FakeO365SMTP(certs.cert_file, certs.key_file, accept)
        port = await fake.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220 ")
        await fake.stop()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


# -- aiosmtplib (native XOAUTH2) --------------------------------------------------------------

def test_aiosmtplib_xoauth2(certs, client_tls):
    async def main():
        async with FakeO365SMTP(certs.cert_file, certs.key_file, accept) as fake:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=fake.port, start_tls=True,
                                   tls_context=client_tls, timeout=10)
            async with smtp:
                with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
                    await smtp.auth_xoauth2(MAILBOX, "wrong")
                assert failed.value.code == 535
                reply = await smtp.auth_xoauth2(MAILBOX, TOKEN)
                assert reply.code == 235
                await smtp.sendmail(MAILBOX, ["alice@example.org"], MESSAGE)
            return await fake.wait_for_messages(1)

    [message] = asyncio.run(main())
    assert message.rcpt_tos == ("alice@example.org",)


def test_with_fakeidp_tokens(certs, client_tls):
    class CASession(requests.Session):
        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            settings["verify"] = str(certs.ca_file)
            return settings

    with FakeIdP(certs.cert_file, certs.key_file) as idp, CASession() as http:
        idp.add_client("app", "secret", app_mailboxes=["shared@contoso.com"])
        cca = msal.ConfidentialClientApplication(
            "app", client_credential="secret", authority=f"{idp.url}/contoso",
            instance_discovery=False, http_client=http)
        token = cca.acquire_token_for_client(
            scopes=["https://outlook.office365.com/.default"])["access_token"]

        async def main():
            async with FakeO365SMTP(certs.cert_file, certs.key_file, idp.valid_token) as fake:
                async with aiosmtplib.SMTP(hostname="127.0.0.1", port=fake.port, start_tls=True,
                                           tls_context=client_tls) as smtp:
                    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                        await smtp.auth_xoauth2("bob@contoso.com", token)  # not its mailbox
                    await smtp.auth_xoauth2("shared@contoso.com", token)
                    await smtp.sendmail("shared@contoso.com", ["x@example.org"], MESSAGE)
                return fake.messages

        [message] = asyncio.run(main())
    assert message.mailbox == "shared@contoso.com"


# -- the SASL parser --------------------------------------------------------------------------

@pytest.mark.parametrize("blob, expected", [
    (b"user=a@b\x01auth=Bearer tok\x01\x01", ("a@b", "tok")),
    (b"user=a@b\x01auth=bearer tok\x01\x01", ("a@b", "tok")),
    (b"auth=Bearer tok\x01user=a@b\x01\x01", ("a@b", "tok")),
    (b"user=a@b\x01auth=Bearer tok\x01", None),
    (b"user=a@b\x01auth=Basic tok\x01\x01", None),
    (b"user=\x01auth=Bearer tok\x01\x01", None),
    (b"user=a@b\x01auth=Bearer \x01\x01", None),
    (b"user=a@b\x01\x01", None),
    (b"", None),
    (b"\x01\x01", None),
    (b"user=\xff\x01auth=Bearer tok\x01\x01", None),
    (b"user=a@b\x01auth=Bearer t\xffk\x01\x01", None),
])
def test_parse_xoauth2(blob, expected):
    assert parse_xoauth2(blob) == expected
