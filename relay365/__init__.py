"""relay365: legacy SMTP/IMAP in, Office 365 with XOAUTH2 out.

Architecture, one page
======================

Three rings; imports point inward only (tests/test_architecture.py enforces it, late imports
included, and names the core modules).

1. Pure cores - no sockets, event loop, clock or logging; time comes in as `now`:
   `smtp.policy` (who sends as which mailbox, direct/spool/fallback, what the client hears),
   `smtp.data` (DATA bytes -> content: line ends, dot-stuffing, the end marker),
   `smtp.rewrite` (From header), `imap.core` + `imap.parse` (IMAP before login),
   `sasl` (PLAIN/LOGIN decode, XOAUTH2 encode), `replies` (every SMTP reply text),
   `throttle`, `proxyproto`, `spool.schedule`, `tokens.classify` (AADSTS -> action),
   `config.units`, `states` (StrEnums), `errors`, `secret`.
2. Thin asyncio adapters - own sockets, TLS, timers and tasks, feed the cores, carry out effects:
   `smtp.protocol` (aiosmtpd subclass) + `smtp.server`/`outbound`/`auth`/`listen`,
   `imap.server` + `imap.upstream` + `imap.splice`, `delivery` (Office 365 SMTP client, session
   pool, the `Deliverer` interface), `spool.worker` + `spool.queue` (on-disk, in threads),
   `tokens.manager` (msal off the loop, single flight) + `tokens.store`, `localauth`, `httpapi`.
3. The daemon shell - `config` loading, `logs`, `metrics`, `sdnotify`, `app` (startup -> serve ->
   shutdown, reload), `cli`, `checks`, `onboard` (`relay365 auth`), `accounts`.
   `standins` (fake Entra ID and Office 365 for `relay365 demo` and the tests) ships beside it;
   the daemon never imports it.

An SMTP message, socket to Office 365
-------------------------------------
`smtp.listen` binds the listeners; each connection is a `smtp.protocol.RelaySMTP` (aiosmtpd),
counted by `throttle.ConnectionLimits` and bound to a log context (conn, proto, peer). AUTH
PLAIN/LOGIN -> `smtp.auth` -> `localauth.LocalAuth.login` (scrypt in a thread, throttling, the
`auth_failed` line). MAIL/RCPT -> `smtp.server.RelayHandler` asks the session's `SmtpPolicy`; for
`delivery: direct` it opens (or takes from `delivery.pool`) a `delivery.smtp.UpstreamSMTP` -
verified TLS, AUTH XOAUTH2 with a token from `tokens.manager.TokenManager` - and passes each
command on (`smtp.outbound`), the policy mapping each outcome to the client's reply. DATA is read
by `smtp.data.DataReader`, the From header rewritten, and sent; `250` only once Office 365
accepted. For `delivery: spool` (or `fallback: spool` on a 4xx) the message goes to
`spool.worker.SpoolWorker.submit` -> `spool.queue` (fsynced, one rename) and the client hears
`250 ... queued as ID`; the worker later delivers it with `delivery.SmtpDeliverer`.

An IMAP login, socket to Office 365
-----------------------------------
`imap.server.ImapHandler` feeds the client's bytes to `imap.core.ImapPreauth`, which answers
CAPABILITY/NOOP/ID/STARTTLS/LOGOUT itself and turns LOGIN or AUTHENTICATE PLAIN into an
`Authenticate` effect. The adapter checks the local user (`localauth`), logs in upstream with
`imap.upstream.open_upstream` (TLS, AUTHENTICATE XOAUTH2, SASL-IR or continuation, the error
challenge answered), tells the core, which answers with the client's own tag - and from then on
`imap.splice` copies bytes both ways with back-pressure until one side closes.
"""

__version__ = "0.1.0"
