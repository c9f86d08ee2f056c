"""Fixtures of the engine's device tests: a private PulseAudio server per test module,
and per test an observer on its speaker and a watch on the machine's stalls
(``testing.pulse``, ``testing.observer``, ``testing.stalls``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testing.observer import PlaybackObserver
from testing.pulse import PulseServer
from testing.stalls import MachineStalls


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


@pytest.fixture
def machine(pulse: PulseServer) -> Iterator[MachineStalls]:
    """The machine's stalls, and the waits of ``pulse``'s threads, during one test."""
    with MachineStalls(pulse.pid) as watch:
        yield watch
