"""`relay365 auth MAILBOX`: get a mailbox's first refresh token, on a headless server, in a minute.

Three ways in, all ending the same way - the refresh token stored (encrypted, under the same lock
the daemon uses, so a running daemon picks it up at its next refresh without a restart) and, unless
`--no-verify`, one real XOAUTH2 login upstream over SMTP and IMAP:

- the authorization-code flow with PKCE (default). msal builds the URL (PKCE verifier, `state`,
  `login_hint`, `prompt=select_account`) and checks `state` on the way back. With a
  `http://localhost[:port]` redirect URI a one-shot listener on 127.0.0.1 (bound before the URL is
  shown; without a port, on a free one) catches the redirect; with any other (e.g. the
  `nativeclient` page) the operator pastes the address the browser landed on.
- `--device`: the device-code flow, for a server with no browser nearby. It runs as a public
  client with the app's `client_id` - also for an app that has a `client_secret`: Entra ID lets
  the same registration do that when "Allow public client flows" is on, and refuses it with
  AADSTS7000218 when it is off (said plainly, with the portal setting). A token from a public
  flow cannot be refreshed with the secret (AADSTS700025), so it is stored marked as a public
  client's, and the daemon refreshes it without the secret.
- `--refresh-token-stdin`: import a token obtained elsewhere; it is redeemed once to prove it works.

The signed-in user must be the mailbox asked for: a token for anybody else is refused, not stored.
When the sign-in name differs (an alias or proxy address, a UPN on another domain), Microsoft Graph
says whether the mailbox is one of the user's addresses (`GET /me`, User.Read); only then is Graph
asked, and if it cannot be, nothing is stored either.
"""

from __future__ import annotations

import asyncio
import http.server
import sys
import threading
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from .config import AccountConfig, Config
from .errors import RelayError, TokenError
from .secret import Secret
from .tokens.http import TokenHTTPSession
from .tokens.manager import fingerprint
from .tokens.msalapp import call_msal
from .tokens.store import TokenStore

Result = dict[str, Any]  # msal's answer: access_token, refresh_token, id_token_claims, ...
NATIVE_CLIENT = "https://login.microsoftonline.com/common/oauth2/nativeclient"
LISTEN_TIMEOUT = 300.0


class OnboardError(RelayError):
    pass


@dataclass
class Onboarding:
    config: Config
    account: AccountConfig
    out: TextIO = sys.stdout

    def __post_init__(self) -> None:
        self.app_cfg = self.config.apps[self.account.app]
        self.session = TokenHTTPSession(self.app_cfg.ca_file, self.app_cfg.timeout)
        self.cache: dict[str, Any] = {}
        self.scopes = self.config.scopes_for(self.account)
        # send_via graph/auto: the same sign-in consents to Graph's Mail.Send (and Mail.ReadWrite,
        # for drafts). A token is for one resource (else AADSTS28000): the sign-in asks for both,
        # the code is redeemed for the mail scopes, and store() redeems once for Graph to check
        self.graph_scopes = (self.config.graph_scopes_for(self.account)
                             if self.account.send_via != "smtp" else [])
        self.consent = self.scopes + [s for s in self.graph_scopes if s not in self.scopes]
        self.public = False  # the token came from a public client flow run with a confidential app

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def close(self) -> None:
        self.session.close()

    def _msal(self, call: Callable[[Any], Any], public: bool = False) -> Result:
        return call_msal(self.account.mailbox, self.app_cfg, self.session, self.cache, call, public)

    # -- the three ways in ---------------------------------------------------------------------

    def auth_code(self, redirect_uri: str, read_line: Callable[[], str] = input) -> Result:
        parsed = urllib.parse.urlsplit(redirect_uri)
        if parsed.scheme == "http" and parsed.hostname in ("localhost", "127.0.0.1"):
            # listening before the URL is shown: a busy port fails before anyone signs in
            with _RedirectCatcher(parsed) as catcher:
                flow = self._start_flow(catcher.redirect_uri)
                port = urllib.parse.urlsplit(catcher.redirect_uri).port
                self.say(f"Waiting for the browser to come back to {catcher.redirect_uri} ...\n"
                         f"(browser on another machine? forward the port first: "
                         f"ssh -L {port}:127.0.0.1:{port} THIS-SERVER)")
                params = catcher.wait(LISTEN_TIMEOUT)
        else:
            flow = self._start_flow(redirect_uri)
            self.say("After signing in, the browser lands on a (blank) page. Paste its full address:")
            params = _pasted_params(read_line())
        if "error" in params:
            raise OnboardError(f"sign-in failed: {params.get('error')}: "
                               f"{params.get('error_description', '')[:300]}")
        if params.get("state") != flow.get("state"):
            raise OnboardError("the redirect's state does not match this sign-in (a stale or "
                               "forged redirect); start again")
        try:
            return self._msal(lambda a: a.acquire_token_by_auth_code_flow(flow, params,
                                                                          scopes=self.scopes))
        except TokenError as exc:
            if exc.error != "invalid_grant":
                raise
            # classify's advice is about refresh tokens; here it is the code of this sign-in
            raise OnboardError(
                f"{self.account.mailbox}: the sign-in's code was refused ({_code(exc)}: "
                f"{exc.description[:200]}). A code works once and only for a few minutes: run "
                f"relay365 auth again and paste (or let the browser return) promptly") from None

    def _start_flow(self, redirect_uri: str) -> Result:
        from .tokens.msalapp import build_app

        app = build_app(self.app_cfg, self.session, self.cache)
        with warnings.catch_warnings():
            # msal recommends response_mode=form_post; the nativeclient page (paste mode) only
            # shows a code it got in the query, so the query it is - PKCE protects the code anyway
            warnings.filterwarnings("ignore", "response_mode='form_post' is recommended")
            flow: Result = app.initiate_auth_code_flow(self.consent, redirect_uri=redirect_uri,
                                               login_hint=self.account.mailbox,
                                               prompt="select_account")
        if "auth_uri" not in flow:
            raise OnboardError(f"cannot start the sign-in: {flow.get('error_description', flow)}")
        self.say(f"Open this address in a browser and sign in as {self.account.mailbox}:\n\n"
                 f"  {flow['auth_uri']}\n")
        return flow

    def device(self) -> Result:
        from .tokens.msalapp import build_app

        # always as a public client: with a client_secret, the same registration's public side
        self.public = self.app_cfg.client_secret is not None
        app = build_app(self.app_cfg, self.session, self.cache, public=True)
        flow: Result = app.initiate_device_flow(scopes=self.consent)
        if "user_code" not in flow:
            raise OnboardError(f"the device-code flow could not start: "
                               f"{flow.get('error')}: {str(flow.get('error_description', ''))[:300]} "
                               f"({PUBLIC_FLOWS_SETTING})")
        self.say(flow.get("message") or f"Go to {flow['verification_uri']} and enter {flow['user_code']}")
        try:
            return self._msal(lambda a: a.acquire_token_by_device_flow(flow), public=True)
        except TokenError as exc:
            raise self._device_refused(exc, flow) from None

    def _device_refused(self, exc: TokenError, flow: Result) -> RelayError:
        """The device flow's own failures, explained (classify's advice is about refresh tokens)."""
        mailbox, code = self.account.mailbox, flow["user_code"]
        if exc.error == "authorization_declined":
            return OnboardError(f"{mailbox}: the sign-in with code {code} was declined "
                                f"(authorization_declined); nothing was stored")
        if exc.error == "expired_token":
            return OnboardError(f"{mailbox}: the code {code} expired before anyone signed in "
                                f"with it ({_code(exc)}); run relay365 auth --device again and "
                                f"enter the new code within {int(flow.get('expires_in', 900)) // 60} "
                                f"minutes")
        if exc.code in (7000218, 700025):
            # Entra wants a secret: the registration does not allow public client flows
            return OnboardError(
                f"{mailbox}: Entra ID refused the device-code flow for apps.{self.account.app} "
                f"(client_id {self.app_cfg.client_id}): {_code(exc)}, public client flows are off "
                f"for this app registration. {PUBLIC_FLOWS_SETTING}; or run relay365 auth without "
                f"--device (the browser sign-in works with the client secret). Nothing was stored")
        return exc

    def import_token(self, refresh_token: Secret) -> Result:
        return self._msal(lambda a: a.acquire_token_by_refresh_token(refresh_token.reveal(), self.scopes))

    # -- after any of them ---------------------------------------------------------------------

    def check_identity(self, result: Result, fallback: Secret | None = None) -> Result:
        """The result to store, if the signed-in user is the mailbox or has it as an address."""
        claims = result.get("id_token_claims") or {}
        who = claims.get("preferred_username") or claims.get("upn") or claims.get("email")
        mailbox = self.account.mailbox
        if who is None or who.lower() == mailbox.lower():
            return result  # an imported token may come without an id_token; the upstream login checks it
        owned, rt = self._addresses(who, _refresh_token(result, fallback))
        if mailbox.lower() not in owned:
            raise OnboardError(f"signed in as {who}, but the account is {mailbox}; nothing was "
                               f"stored. Microsoft Graph lists {who}'s addresses as "
                               f"{', '.join(sorted(owned)) or '(none)'}, and {mailbox} is not one of "
                               f"them. Sign in as {mailbox} (the URL pre-fills it; use a private "
                               f"window if the browser picks another account)")
        self.say(f"Signed in as {who}; Microsoft Graph lists {mailbox} among its addresses.")
        return {**result, "refresh_token": rt.reveal()}

    def _addresses(self, who: str, rt: Secret) -> tuple[frozenset[str], Secret]:
        """`who`'s addresses from Graph (a User.Read token from the fresh refresh token, redeemed
        as the sign-in's client: a device flow's is a public one's), and the refresh token to keep."""
        from .graph.client import my_addresses
        from .graph.errors import GraphError

        graph = self.config.upstream.graph
        try:
            got = self._msal(lambda a: a.acquire_token_by_refresh_token(
                rt.reveal(), [f"{graph.resource}/User.Read"]), public=self.public)
            rt = Secret(str(got.get("refresh_token") or rt.reveal()))
            return my_addresses(self.config, Secret(str(got["access_token"]))), rt
        except TokenError as exc:
            why = f"no Microsoft Graph token for User.Read: {exc.error} ({_code(exc)})"
            transient = exc.transient
        except GraphError as exc:
            why = f"Microsoft Graph's GET /me answered {exc}" if exc.status else str(exc)
            transient = exc.transient and exc.status != 401  # 401/403: the token lacks User.Read
        mailbox = self.account.mailbox
        todo = (f"check that this host reaches {graph.base_url} (proxy, firewall) and run relay365 "
                f"auth again" if transient else
                "add the delegated Microsoft Graph permission User.Read to the app registration, "
                "grant admin consent and run relay365 auth again")
        raise OnboardError(
            f"signed in as {who}, but the account is {mailbox}; nothing was stored. Whether "
            f"{mailbox} is one of {who}'s addresses (an alias) could not be checked: {why}. To "
            f"use {who}'s sign-in for {mailbox}: {todo}. Or set the account's mailbox to the "
            f"sign-in name {who} (if that is the mailbox's address), or sign in as {mailbox}")

    def store(self, result: Result, fallback: Secret | None = None) -> None:
        rt = _refresh_token(result, fallback)
        if self.graph_scopes:
            rt = self.check_graph(rt)
        store = TokenStore(self.config.state_dir)
        with store.account_lock(self.account.mailbox):
            # keep the config's seed fingerprint, so an old seed never overrides this token
            store.put(self.account.mailbox, rt,
                      seed_fingerprint=fingerprint(self.account.refresh_token), public=self.public)
        kind = " (a public client's: refreshed without the client secret)" if self.public else ""
        self.say(f"Stored a refresh token for {self.account.mailbox} in {store.path} "
                 f"(encrypted){kind}.")


    def check_graph(self, refresh_token: Secret) -> Secret:
        """The token redeems for Microsoft Graph (consent given): the refresh token to keep."""
        names = ", ".join(s.rpartition("/")[2] for s in self.graph_scopes)
        try:
            got = self._msal(lambda a: a.acquire_token_by_refresh_token(refresh_token.reveal(),
                                                                        self.graph_scopes),
                             public=self.public)
        except TokenError as exc:
            raise OnboardError(
                f"{self.account.mailbox}: the sign-in worked, but the token is refused for Microsoft "
                f"Graph ({_code(exc)}), which send_via: {self.account.send_via} needs. Add the "
                f"delegated Microsoft Graph permissions {names} to the app registration, grant "
                f"admin consent (or sign in again and accept), and run relay365 auth again. "
                f"Nothing was stored") from None
        self.say(f"Microsoft Graph: consented ({names}), for send_via: {self.account.send_via}.")
        return Secret(str(got.get("refresh_token") or refresh_token.reveal()))


PUBLIC_FLOWS_SETTING = ("turn on 'Allow public client flows' in the app registration (Entra admin "
                        "center > App registrations > the app > Authentication > Advanced "
                        "settings > Allow public client flows: Yes > Save)")


def _code(exc: TokenError) -> str:
    return f"AADSTS{exc.code}" if isinstance(exc.code, int) else str(exc.code)


def _refresh_token(result: Result, fallback: Secret | None) -> Secret:
    rt = result.get("refresh_token") or (fallback.reveal() if fallback else None)
    if not rt:
        raise OnboardError("the identity platform returned no refresh token: add the "
                           "offline_access permission to the app registration")
    return Secret(str(rt))


def _pasted_params(pasted: str) -> dict[str, str]:
    """The answer's parameters from the address the operator pasted (query, else fragment)."""
    pasted = pasted.strip()
    if not pasted:
        raise OnboardError("nothing was pasted; run relay365 auth again and paste the whole address "
                           "the browser shows after signing in")
    url = urllib.parse.urlsplit(pasted)
    params = dict(urllib.parse.parse_qsl(url.query)) or dict(urllib.parse.parse_qsl(url.fragment))
    if "code" not in params and "error" not in params:
        raise OnboardError("the pasted text has no code in it; paste the whole address from the "
                           "browser's address bar (it contains ?code=...&state=...), not the code "
                           "alone or the page text")
    return params


class _RedirectCatcher:
    """A one-shot HTTP listener on 127.0.0.1 for a `http://localhost[:port]` redirect URI.

    Without a port it takes a free one: Entra ID accepts any port on a registered loopback
    redirect URI (RFC 8252 s.7.3), and port 80 would need root."""

    def __init__(self, parsed: urllib.parse.SplitResult) -> None:
        self._got: dict[str, str] = {}
        self._done = threading.Event()
        path = parsed.path or "/"
        catcher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path != path or not url.query or catcher._done.is_set():
                    self.send_error(404)
                    return
                catcher._got.update(urllib.parse.parse_qsl(url.query))
                body = b"relay365: sign-in received; you can close this tab.\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                catcher._done.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the query holds the code: never print it

        try:
            self._server = http.server.HTTPServer(("127.0.0.1", parsed.port or 0), Handler)
        except OSError as exc:
            raise OnboardError(
                f"cannot listen on 127.0.0.1:{parsed.port} for the browser's return: "
                f"{exc.strerror or exc}; choose another port (--redirect-uri "
                f"http://localhost:PORT/), or leave the port out to get a free one") from None
        port = self._server.server_address[1]
        self.redirect_uri = urllib.parse.urlunsplit(
            (parsed.scheme, f"{parsed.hostname}:{port}", parsed.path, parsed.query, ""))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)

    def __enter__(self) -> _RedirectCatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def wait(self, timeout: float) -> dict[str, str]:
        if not self._done.wait(timeout):
            raise OnboardError(f"no sign-in came back within {int(timeout)} s")
        return self._got


def run_auth(config: Config, mailbox: str, *, device: bool, token_stdin: bool, verify: bool,
             redirect_uri: str | None, out: TextIO = sys.stdout, stdin: TextIO = sys.stdin) -> int:
    account = config.account(mailbox)
    if account is None:
        print(f"relay365: no account {mailbox!r} under accounts in {config.source}", file=sys.stderr)
        return 2
    if account.flow != "refresh_token":
        print(f"relay365: {mailbox} uses flow: {account.flow}; only refresh_token accounts need "
              f"relay365 auth", file=sys.stderr)
        return 2
    ob = Onboarding(config, account, out)
    try:
        if token_stdin:
            raw = stdin.readline().strip()
            if not raw:
                raise OnboardError("no refresh token on standard input")
            result = ob.import_token(Secret(raw))
            ob.store(ob.check_identity(result, Secret(raw)), fallback=Secret(raw))
        else:
            result = ob.device() if device else ob.auth_code(redirect_uri or NATIVE_CLIENT,
                                                             read_line=lambda: stdin.readline())
            ob.store(ob.check_identity(result))
    except TokenError as exc:
        code = f"AADSTS{exc.code}" if isinstance(exc.code, int) else exc.code
        print(f"relay365: {mailbox}: {exc.error} ({code}): {exc.action}", file=sys.stderr)
        if exc.description:
            print(f"  {exc.description}", file=sys.stderr)
        return 1
    except RelayError as exc:
        print(f"relay365: {exc}", file=sys.stderr)
        return 1
    finally:
        ob.close()
    if not verify:
        return 0
    from .checks import check_upstream

    return asyncio.run(check_upstream(config, only=account.mailbox))
