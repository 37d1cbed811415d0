"""Parts of the relay that are loaded only when the config uses them: the status page, and httpx.

Theory of operation. Python keeps every module it imports for the life of the process, and most
of a relay's memory at rest is its imports. Two parts serve only some configs: the status page
(`relay365.httpapi`, `relay365.web`, Jinja2 and every template, compiled once when loaded) is for
an `http:` listener; httpx (and whatever httpcore finds installed, such as trio) is for accounts
with `send_via: graph` or `auto` and for alert webhooks. Loading them only for such a config
saves their memory without moving an error to a later, worse moment: a config that uses a part
loads it before the config is applied - at start-up (`relay365 serve` refuses to start), or in a
reload before the new config replaces the old (`reload_rejected`) - and `relay365 check` loads
every part whatever the config says. A missing package or a broken template is never found at
the first page view or the first Graph send.
"""

from __future__ import annotations

from importlib import import_module

from .config import Config

STATUS_PAGE = "status page"
HTTPX = "httpx (Graph, webhooks)"
# web.routes imports web.page, which imports web.markup, which compiles every template
PARTS: dict[str, tuple[str, ...]] = {
    STATUS_PAGE: ("relay365.httpapi", "relay365.web.collect", "relay365.web.routes"),
    HTTPX: ("httpx",),
}


def uses_graph(config: Config) -> bool:
    return any(a.send_via != "smtp" for a in config.accounts)


def uses_httpx(config: Config) -> bool:
    return uses_graph(config) or (config.alerts is not None and config.alerts.webhook is not None)


def needed(config: Config) -> list[str]:
    """The parts this config uses."""
    return ([STATUS_PAGE] if config.http is not None else []) + ([HTTPX] if uses_httpx(config) else [])


def load(parts: list[str]) -> list[str]:
    """Import each part; one problem line for each that does not load (none: all loaded)."""
    problems = []
    for part in parts:
        for module in PARTS[part]:
            try:
                import_module(module)
            except Exception as exc:  # ImportError, a template's TemplateSyntaxError, ...
                problems.append(f"{part} does not load ({module}: {type(exc).__name__}: {exc})")
                break
    return problems
