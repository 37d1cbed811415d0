"""Prometheus metrics. One registry for the process; the daemon's state is read at scrape time.

Counters and histograms are incremented where the facts happen (one line each, never per chunk);
gauges that mirror state (accounts needing re-authorisation, queue depth, active connections) are
computed when Prometheus scrapes, from callbacks the daemon registers, so they can never drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from . import sessions

# *_created series double the output and nobody alerts on them. (prometheus_client leaves this
# function unannotated; it takes nothing and returns nothing.)
cast(Callable[[], None], disable_created_metrics)()
REGISTRY = CollectorRegistry(auto_describe=True)

SESSIONS = Counter("relay365_sessions", "Client sessions ended, by protocol and outcome",
                   ["proto", "outcome"], registry=REGISTRY)
AUTH_FAILURES = Counter("relay365_auth_failures", "Failed local logins, by protocol and reason",
                        ["proto", "reason"], registry=REGISTRY)


class PerMinute:
    """A Counter whose increments are also counted per minute for the status page's chart.

    The one place messages relayed / spooled / failed are recorded for the page: every call site
    that increments the Prometheus counter feeds the chart too, so the two cannot disagree."""

    def __init__(self, counter: Counter, kind: sessions.Kind) -> None:
        self.counter, self.kind = counter, kind

    def inc(self, amount: float = 1, **labels: str) -> None:
        (self.counter.labels(**labels) if labels else self.counter).inc(amount)
        sessions.RECENT.count(self.kind, time.time(), amount)


# via: smtp (Office 365 SMTP) or graph (Microsoft Graph)
MESSAGES = PerMinute(Counter("relay365_messages_relayed", "Messages accepted by the upstream, by way",
                             ["via"], registry=REGISTRY), "relayed")
SPOOLED = PerMinute(Counter("relay365_messages_spooled",
                            "Messages accepted into the spool for later delivery",
                            registry=REGISTRY), "spooled")
SPOOL_FAILED = PerMinute(Counter("relay365_spool_failed",
                                 "Spooled messages given up on (moved to failed/)",
                                 registry=REGISTRY), "failed")


def record_session(proto: str, **summary: object) -> None:
    """A session ended: keep its summary (the fields of its log line) for the status page."""
    sessions.RECENT.session(proto, time.time(), **summary)  # type: ignore[arg-type]
BYTES = Counter("relay365_bytes_relayed", "Bytes relayed, by protocol and direction",
                ["proto", "direction"], registry=REGISTRY)
UPSTREAM_LATENCY = Histogram(
    "relay365_upstream_seconds", "Upstream latency: connect+TLS+XOAUTH2 login, and DATA",
    ["proto", "stage"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
GRAPH_LATENCY = Histogram(
    "relay365_graph_request_seconds", "Microsoft Graph request latency, by call (sendMail, "
    "createDraft, upload, ...)", ["call"], registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
GRAPH_ERRORS = Counter("relay365_graph_errors", "Microsoft Graph answers that were errors, by HTTP "
                       "status (0: none came) and Graph error code", ["status", "code"],
                       registry=REGISTRY)
TOKEN_REFRESHES = Counter("relay365_token_refreshes", "Token requests, by outcome and AADSTS code",
                          ["outcome", "code"], registry=REGISTRY)

Sample = tuple[Mapping[str, object], float]  # (labels, value); a label's value is shown with str()
_gauges: dict[str, tuple[str, Callable[[], Sequence[Sample]]]] = {}


def register_gauge(name: str, help_text: str, read: Callable[[], Sequence[Sample]]) -> None:
    """A gauge whose samples `read()` returns at scrape time as [(labels, value)]."""
    _gauges[name] = (help_text, read)


class _StateCollector:
    def collect(self) -> Iterator[Metric]:
        for name, (help_text, read) in list(_gauges.items()):
            samples = read()
            labels = sorted({k for lab, _ in samples for k in lab})
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for lab, value in samples:
                family.add_metric([str(lab.get(k, "")) for k in labels], value)
            yield family


REGISTRY.register(_StateCollector())


def render() -> bytes:
    return generate_latest(REGISTRY)
