"""structlog setup: one event per fact, JSON when not a TTY, stdlib loggers through the same pipe.

aiosmtpd and msal log through the standard library; they are routed into the same processors so a
JSON log stays JSON. aiosmtpd logs raw client lines at DEBUG (AUTH data among them), so its level
never goes below ERROR (its INFO lines echo client commands, its WARNINGs are deprecation
notes); msal's HTTP-level chatter stays at WARNING, and so does httpx's: its INFO line is the
request URL, and a webhook's URL is its credential (Slack, Teams).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from .secret import Secret

_QUIET = {"mail.log": logging.ERROR, "msal": logging.WARNING, "urllib3": logging.WARNING,
          "asyncio": logging.WARNING, "httpx": logging.WARNING, "httpcore": logging.WARNING}


def _redact(_: object, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: a Secret that reaches a log call prints as ***."""
    for k, v in event_dict.items():
        if isinstance(v, Secret):
            event_dict[k] = "***"
    return event_dict


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    json_out = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer = (structlog.processors.JSONRenderer() if json_out
                else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info if json_out else (lambda _, __, e: e),
                    renderer],
    ))
    logging.getLogger().handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    """The log level (at start and on reload); the noisy libraries stay at their floors."""
    numeric = getattr(logging, level.upper())
    logging.getLogger().setLevel(numeric)
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(max(numeric, floor))
