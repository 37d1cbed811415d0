"""Every transcript runs twice: its input fed whole, and byte by byte."""

from __future__ import annotations

import pytest

from .helpers import Feed, feed_bytewise, feed_whole


@pytest.fixture(params=[feed_whole, feed_bytewise], ids=["whole", "bytewise"])
def feed(request: pytest.FixtureRequest) -> Feed:
    return request.param
