"""structlog setup: one event per fact, JSON when not a TTY, stdlib loggers through the same pipe.

The relay's own events go from structlog's processors straight to the stream (`_Line`, under the
stdlib handler's lock, so lines never interleave), not through `logging` - a LogRecord, the
handler chain, and ProcessorFormatter running the processors again cost a relayed SMTP message a
tenth of its CPU for its one `message_relayed` line. Levels are structlog's filtering logger (a
call below the level is one `return`). aiosmtpd and msal log through the standard library; they
are routed into the same processors so a JSON log stays JSON. aiosmtpd logs raw client lines at
DEBUG (AUTH data among them), so its level never goes below ERROR (its INFO lines echo client
commands, its WARNINGs are deprecation notes); msal's HTTP-level chatter stays at WARNING, and so
does httpx's: its INFO line is the request URL, and a webhook's URL is its credential (Slack,
Teams).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping, Sequence
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


class _Line:
    """The end of the relay's own pipe: one rendered event, written whole with the handler's lock
    held (msal's thread and the event loop share the stream). `name` is the logger's, for
    `add_logger_name`."""

    __slots__ = ("_handler", "name")

    def __init__(self, handler: logging.StreamHandler[TextIO], name: str) -> None:
        self._handler, self.name = handler, name

    def msg(self, line: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(line + "\n")
            handler.stream.flush()
        finally:
            handler.release()

    debug = info = warning = error = critical = exception = msg


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
              taps: Sequence[Processor] = ()) -> None:
    """`taps`: processors that see each of the relay's own events before it is rendered (the
    demo keeps its `message_relayed` this way); they return the event dict unchanged."""
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
    exc: Processor = structlog.processors.format_exc_info if json_out else (lambda _, __, e: e)
    handler = logging.StreamHandler(stream)
    structlog.configure(
        processors=[*shared, *taps, exc, renderer],
        logger_factory=lambda *args: _Line(handler, str(args[0]) if args else "relay365"),
        wrapper_class=structlog.make_filtering_bound_logger(_numeric(level)),
        cache_logger_on_first_use=False,  # capture_logs (tests) swaps the processors
    )
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, exc, renderer],
    ))
    logging.getLogger().handlers[:] = [handler]
    set_level(level)


def _numeric(level: str) -> int:
    return int(getattr(logging, level.upper()))


def set_level(level: str) -> None:
    """The log level (at start and on reload); the noisy libraries stay at their floors."""
    numeric = _numeric(level)
    if structlog.is_configured():
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(numeric))
    logging.getLogger().setLevel(numeric)
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(max(numeric, floor))
