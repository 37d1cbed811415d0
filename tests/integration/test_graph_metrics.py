"""Metrics and logs say which way a message went: `via` on relay365_messages_relayed_total,
Graph's latency per call, Graph's errors by status and code."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration import test_graph_relay as base
from tests.integration.test_operations import get, samples
from tests.support.upstream import free_port

pytestmark = pytest.mark.integration
graph, _graph_clean = base.graph, base._graph_clean


def test_graph_metrics_and_the_relayed_line(make_relay, tmp_path, pki, idp, upstream, graph):
    port = free_port()
    relay = make_relay(base.graph_config(tmp_path, pki, idp, upstream, graph,
                                         http={"listen": f"127.0.0.1:{port}"}))
    subject = f"graph metrics {uuid.uuid4()}"
    graph.fail_next(1, 503, "ServiceUnavailable", retry_after=5)
    assert base.send(relay.smtp_port, [base.BOB], base.message(subject))[0] == 451
    assert base.send(relay.smtp_port, [base.BOB], base.message(subject))[0] == 250
    base.find(upstream, base.BOB, subject)
    time.sleep(0.2)
    m = samples(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert m[("relay365_messages_relayed_total", (("via", "graph"),))] == 1
    assert ("relay365_messages_relayed_total", (("via", "smtp"),)) not in m
    assert m[("relay365_graph_errors_total", (("code", "ServiceUnavailable"), ("status", "503")))] == 1
    assert m[("relay365_graph_request_seconds_count", (("call", "sendMail"),))] == 2
    (line,) = relay.find("message_relayed")
    assert line["via"] == "graph" and line["upstream_reply"].startswith("250")
