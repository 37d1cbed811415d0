"""Fixtures shared by the unit tests that run real msal against the fake identity platform."""

from __future__ import annotations

import pytest

from relay365.standins import make_test_certs


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
def clock():
    return Clock()
