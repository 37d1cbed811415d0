"""Fixtures shared by the unit tests that run real msal against the fake identity platform (and
the Graph stand-in beside it; `graph` uses the test module's own `idp`)."""

from __future__ import annotations

import pytest

from relay365.standins import make_test_certs
from relay365.standins.fakegraph import FakeGraph


class Clock:
    """A settable clock for the token manager and the fake identity platform."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def graph(certs, idp):
    with FakeGraph(certs.cert_file, certs.key_file, check_token=idp.valid_token,
                   token_scopes=idp.token_scopes, profile=idp.user_profile) as graph:
        yield graph
        assert graph.errors == []


@pytest.fixture
def clock():
    return Clock()
