"""The status page's routes: GET / and /api/*, the login, and the three actions.

Reading is open to whoever reaches the listener (loopback by default). Changing needs the admin
token: a browser logs in (cookie) and posts forms carrying the CSRF token; a script sends
`Authorization: Bearer <token>` to `/api/retry|delete|unblock`. Without `http.admin_token` every
action is refused with 403. Login failures count in the same throttle as SMTP/IMAP logins, under
the user `(status-admin)`, so guessing the token gets slow and then blocked.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ..secret import Secret
from . import collect as data
from . import security as sec
from .model import Viewer, as_json
from .page import CSP, render_page
from .wire import Request, Response, redirect, text

log = structlog.get_logger("relay365.http")
ADMIN_USER = "(status-admin)"  # the throttle's key for status-page login failures

NOTICES = {"retried": "The message is due now; the spool is delivering it.",
           "deleted": "The message was deleted.", "unblocked": "The block was lifted.",
           "in": "Logged in: actions are enabled.", "out": "Logged out."}
ERRORS = {"token": "Wrong admin token.", "blocked": "Too many failed logins; try again later.",
          "login": "Log in with the admin token first.", "csrf": "The form was stale; try again.",
          "readonly": "Read-only: set http.admin_token to allow actions.",
          "notfound": "No such message (delivered or deleted meanwhile?).",
          "bad": "That request was not understood.", "notblocked": "That block had already ended.",
          "nospool": "There is no spool (no smtp: section)."}
PAGE_HEADERS = (("Content-Security-Policy", CSP), ("X-Frame-Options", "DENY"))


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(status, json.dumps(body, indent=1).encode() + b"\n", "application/json")


class StatusApp:
    def __init__(self, sources: data.Sources, salt: bytes | None = None) -> None:
        self.src = sources
        self._salt = salt if salt is not None else secrets.token_bytes(32)

    def _token(self) -> Secret | None:
        http = self.src.config().http
        return http.admin_token if http is not None else None

    def _key(self) -> bytes | None:
        return sec.derive_key(self._token(), self._salt)

    def _session(self, req: Request) -> str | None:
        cookie = sec.cookies(req.headers.get("cookie")).get(sec.COOKIE)
        return cookie if sec.session_valid(self._key(), cookie, self.src.clock()) else None

    async def handle(self, req: Request) -> Response | None:
        """The response, or None when the path is not the status page's."""
        if req.method == "GET":
            return await self._get(req)
        if req.method == "POST":
            return await self._post(req)
        return None

    async def _get(self, req: Request) -> Response | None:
        q = req.query
        if req.path == "/":
            status = await data.collect(self.src, peer=q.get("peer", ""), user=q.get("user", ""))
            key, cookie = self._key(), self._session(req)
            viewer = Viewer(admin_enabled=key is not None, logged_in=cookie is not None,
                            csrf=sec.csrf_token(key, cookie) if key and cookie else None,
                            notice=NOTICES.get(q.get("done", "")), error=ERRORS.get(q.get("error", "")))
            return Response(200, render_page(status, viewer).encode(), "text/html; charset=utf-8",
                            PAGE_HEADERS)
        if req.path in ("/api/accounts", "/api/queue", "/api/sessions", "/api/limits"):
            status = await data.collect(self.src, peer=q.get("peer", ""), user=q.get("user", ""),
                                        limit=None, queue_rows=req.path == "/api/queue")
            return _json(200, {"now": status.now, **_api_body(req.path, as_json(status))})
        return None

    async def _post(self, req: Request) -> Response | None:
        if req.path == "/login":
            return await self._login(req)
        if req.path == "/logout":
            return self._logout(req)
        if req.path.startswith("/action/"):
            return await self._form_action(req, req.path.removeprefix("/action/"))
        if req.path.startswith("/api/"):
            return await self._api_action(req, req.path.removeprefix("/api/"))
        return None

    async def _login(self, req: Request) -> Response:
        if self._key() is None:
            return redirect("/?error=readonly")
        if sec.cross_site(req.headers):
            return text(403, "cross-site request refused")
        # counted apart from mail logins (`http:` IPs), so a printer's failures on the same host
        # do not lock the operator out of the page that lifts its block
        throttle, now, ip = self.src.throttle, self.src.monotonic(), f"http:{req.peer}"
        if throttle.check(ip, ADMIN_USER, now).blocked:
            log.warning("status_login_failed", peer=req.peer, reason="blocked")
            return redirect("/?error=blocked")
        if not sec.token_matches(self._token(), req.form().get("token", "")):
            verdict = throttle.failed(ip, ADMIN_USER, now)
            log.warning("status_login_failed", peer=req.peer, reason="bad_token")
            await asyncio.sleep(verdict.delay)
            return redirect("/?error=token")
        throttle.succeeded(ip, ADMIN_USER)
        key = self._key()
        assert key is not None
        cookie = sec.issue_session(key, self.src.clock())
        log.info("status_login", peer=req.peer)
        return redirect("/?done=in", ("Set-Cookie", sec.set_cookie(cookie, secure=_https(req))))

    def _logout(self, req: Request) -> Response:
        cookie = self._session(req)
        if cookie is None or not sec.csrf_valid(self._key(), cookie, req.form().get("csrf")):
            return text(403, "refused: not logged in, or no valid CSRF token")
        return redirect("/?done=out", ("Set-Cookie", sec.set_cookie("", secure=_https(req), max_age=0)))

    async def _form_action(self, req: Request, name: str) -> Response:
        if self._key() is None:
            return text(403, "read-only: set http.admin_token to allow actions")
        if sec.cross_site(req.headers):
            return text(403, "cross-site request refused")
        cookie, form = self._session(req), req.form()
        if cookie is None:
            return text(403, "refused: log in with the admin token first")
        if not sec.csrf_valid(self._key(), cookie, form.get("csrf")):
            log.warning("status_csrf_refused", peer=req.peer, action=name)
            return text(403, "refused: no valid CSRF token")
        outcome = await self._act(name, form, req.peer)
        if isinstance(outcome, data.ActionError):
            return redirect(f"/?error={outcome.code}#{_section(name)}")
        return redirect(f"/?done={outcome}#{_section(name)}")

    async def _api_action(self, req: Request, name: str) -> Response:
        if self._key() is None:
            return _json(403, {"error": "read-only: set http.admin_token to allow actions"})
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not sec.token_matches(self._token(), given.strip()):
            return _json(401, {"error": "needs Authorization: Bearer <http.admin_token>"})
        outcome = await self._act(name, req.form(), req.peer)
        if isinstance(outcome, data.ActionError):
            return _json(404 if outcome.code in ("notfound", "notblocked") else 400,
                         {"error": str(outcome), "code": outcome.code})
        return _json(200, {"done": outcome})

    async def _act(self, name: str, form: dict[str, str], peer: str) -> str | data.ActionError:
        """Carry out one action; the word for NOTICES, or the error."""
        actions: dict[str, Callable[[], Awaitable[str]]] = {
            "retry": lambda: data.retry(self.src, form.get("id", "")),
            "delete": lambda: data.delete(self.src, form.get("id", "")),
            "unblock": lambda: data.unblock(self.src, form.get("kind", ""), form.get("value", "")),
        }
        if name not in actions:
            return data.ActionError("bad", f"no action {name}")
        try:
            await actions[name]()
        except data.ActionError as exc:
            log.info("status_action_failed", action=name, peer=peer, code=exc.code)
            return exc
        log.info("status_action", action=name, peer=peer, id=form.get("id"), kind=form.get("kind"),
                 value=form.get("value"))
        return {"retry": "retried", "delete": "deleted", "unblock": "unblocked"}[name]


def _api_body(path: str, status: dict[str, Any]) -> dict[str, Any]:
    if path == "/api/queue":
        return dict(status["queue"])
    if path == "/api/limits":
        return {"listeners": status["listeners"], "blocks": status["blocks"]}
    return {path.removeprefix("/api/"): status[path.removeprefix("/api/")]}


def _section(action: str) -> str:
    return "listeners" if action == "unblock" else "queue"


def _https(req: Request) -> bool:
    """Behind a TLS reverse proxy the cookie gets `Secure`."""
    return req.headers.get("x-forwarded-proto", "").lower() == "https"
