"""The status page and its JSON API, served on the `http:` listener next to /metrics.

- `model`: the plain, frozen data the page shows (no secrets by construction: no field holds one).
- `collect`: builds that data from the running relay (token views, spool, sessions, throttle).
- `page`, `sections`, `chart`: pure rendering, data -> HTML through the Jinja2 templates in
  `templates/`; `markup` holds the engine, which escapes every value (autoescape, StrictUndefined).
- `security`: the admin session cookie and CSRF tokens, pure functions of a key and `now`.
`relay365.httpapi` is the thin HTTP layer that puts them together.
"""
