"""How ``LoopWatch`` splits a gap of the event loop between the window and the machine."""

from __future__ import annotations

import pytest

from callctl.gui.loopwatch import Gap


def test_computing_in_user_space_is_the_windows_own_whatever_the_host_stole() -> None:
    gap = Gap(at=1.0, wall_ms=40.0, wait_ms=0.0, cpu_ms=20.0, steal_ms=20.0, sys_ms=0.0)
    assert gap.own_ms == pytest.approx(20.0)


def test_kernel_time_up_to_the_steal_is_the_hosts() -> None:
    """The CI failure of 2026-12-03: 20.3 ms on a CPU, all but a little in the kernel,
    with 20 ms stolen; what is left is the loop's own."""
    gap = Gap(at=5.46, wall_ms=23.7, wait_ms=1.5, cpu_ms=20.3, steal_ms=20.0, sys_ms=19.0)
    assert gap.own_ms == pytest.approx(2.2)
    unstolen = Gap(at=5.46, wall_ms=23.7, wait_ms=1.5, cpu_ms=20.3, steal_ms=0.0, sys_ms=19.0)
    assert unstolen.own_ms == pytest.approx(22.2), "no steal, no allowance"


def test_blocked_time_is_the_windows_own_less_waiting_and_steal() -> None:
    gap = Gap(at=1.0, wall_ms=30.0, wait_ms=5.0, cpu_ms=1.0, steal_ms=10.0, sys_ms=1.0)
    assert gap.own_ms == pytest.approx(15.0)
