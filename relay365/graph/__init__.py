"""Sending through Microsoft Graph (issue 13), for tenants that turned SMTP AUTH off.

- `mime`: pure work on the message bytes - the envelope decides the recipients (Graph reads them
  from To/Cc/Bcc), and whether one `sendMail` request can carry the message.
- `errors`: pure mapping of Graph's answers (status, error JSON, Retry-After, request-id) to the
  relay's `UpstreamError`s.
"""
