"""Fixtures of the engine's device tests: a private PulseAudio server per test module,
and an observer on its speaker per test (``testing.pulse``, ``testing.observer``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testing.observer import PlaybackObserver
from testing.pulse import PulseServer


@pytest.fixture(scope="module")
def pulse() -> Iterator[PulseServer]:
    """A private PulseAudio server shared by the tests of one module, stopped after them."""
    with PulseServer() as server:
        yield server


@pytest.fixture
def observer(pulse: PulseServer) -> Iterator[PlaybackObserver]:
    """An observer recording the speaker of ``pulse`` for one test."""
    with PlaybackObserver(pulse) as obs:
        yield obs
