"""Alerts before mail stops: tell someone when an account needs re-auth, a refresh token goes
stale, an app secret nears its expiry, the spool backs up or a message is given up on.

- `core`: the pure edge detector and rate limit (`AlertBook`): conditions in, notices out, with
  what was announced per channel kept across restarts;
- `conditions`: plain facts about the relay -> `Condition`s (every word of an alert, no secret);
- `render`: a notice as a webhook JSON body and as a mail;
- `send`: the webhook (httpx) and the mail (the relay's own `Deliverer`) channels;
- `service`: the asyncio adapter the daemon runs: look, plan, send, save.
"""
