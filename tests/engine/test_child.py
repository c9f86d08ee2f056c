"""``engine.child``: spawn, the pidfd, the bounded stop and the restarter, on real processes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callctl.engine import child
from callctl.engine.lifeline import PARENT_PID_ENV

IGNORES_SIGTERM = ("import signal, sys, time\n"
                   "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                   "print('ready', flush=True)\n"
                   "time.sleep(60)\n")


def python(code: str, **kwargs: object) -> child.Child:
    return child.spawn([sys.executable, "-c", code], env=dict(os.environ), **kwargs)  # type: ignore[arg-type]


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts: it is not running)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:") and "Z" in line for line in status)
    except FileNotFoundError:
        return True


def wait_line(proc: child.Child, timeout: float = 10.0) -> str:
    stdout = proc.popen.stdout
    assert stdout is not None
    assert select.select([stdout], [], [], timeout)[0], "the child said nothing in time"
    return stdout.readline().decode().strip()


def test_the_environment_is_exactly_the_one_given() -> None:
    show = "import os, json; print(json.dumps(dict(os.environ)))"
    proc = child.spawn([sys.executable, "-c", show],
                       env={"ONLY": "this", "PATH": os.environ.get("PATH", "")},
                       stdout=subprocess.PIPE)
    try:
        seen = json.loads(wait_line(proc))
    finally:
        proc.stop(grace=2)
    # setpriv may add nothing; Python may add LC_CTYPE on some systems: never more than that.
    assert seen["ONLY"] == "this" and seen[PARENT_PID_ENV] == str(os.getpid())
    assert set(seen) - {"ONLY", "PATH", PARENT_PID_ENV, "LC_CTYPE"} == set(), seen


def test_wait_on_the_pidfd_returns_at_the_exit_and_is_bounded() -> None:
    proc = child.spawn(["sleep", "0.3"], env={})
    assert proc.pidfd is not None, "Linux ≥ 5.3 gives a pidfd"
    began = time.monotonic()
    assert proc.wait(0.05) is None, "still running: the wait is bounded"
    assert time.monotonic() - began < 0.5
    assert not select.select([proc.pidfd], [], [], 0)[0], "not readable while it runs"
    assert proc.wait(5) == 0
    took = time.monotonic() - began
    assert 0.25 < took < 1.5, f"woken by the exit, not by a poll interval: {took:.3f} s"
    assert proc.returncode == 0 and not proc.alive()
    assert proc.stop().step == "exited"
    assert proc.pidfd is None, "stop releases the pidfd"


def test_stop_asks_first() -> None:
    proc = python("import sys; sys.stdin.read()", stdin=subprocess.PIPE)
    stdin = proc.popen.stdin
    assert stdin is not None
    stopped = proc.stop(stdin.close, grace=5)
    assert stopped.step == "asked" and stopped.returncode == 0
    assert stopped.seconds < 5


def test_stop_terminates_a_child_that_does_not_answer_the_ask() -> None:
    proc = python("import time; print('ready', flush=True); time.sleep(60)",
                  stdout=subprocess.PIPE)
    assert wait_line(proc) == "ready"
    asked = []
    stopped = proc.stop(lambda: asked.append(True), grace=0.3, term_grace=5)
    assert asked == [True]
    assert stopped.step == "terminated" and stopped.returncode == -signal.SIGTERM
    assert 0.3 <= stopped.seconds < 3


def test_a_child_ignoring_sigterm_is_killed_within_the_bound() -> None:
    proc = python(IGNORES_SIGTERM, stdout=subprocess.PIPE)
    assert wait_line(proc) == "ready"
    stopped = proc.stop(grace=0.3)
    assert stopped.step == "killed" and stopped.returncode == -signal.SIGKILL
    assert 0.3 <= stopped.seconds < 0.3 + 2.0, stopped
    assert gone(proc.pid)


def test_a_sigstopped_child_needs_and_gets_sigkill() -> None:
    proc = child.spawn(["sleep", "60"], env={})
    os.kill(proc.pid, signal.SIGSTOP)
    began = time.monotonic()
    # An exception from the ask is a child that cannot be asked: on to SIGTERM.
    stopped = proc.stop(lambda: 1 / 0, grace=0.2, term_grace=0.2)
    assert stopped.step == "killed" and stopped.returncode == -signal.SIGKILL
    assert time.monotonic() - began < 0.4 + 2.0
    assert proc.stop().step == "exited", "stopping again returns at once"


def test_a_signal_goes_through_the_pidfd_and_not_to_a_reaped_pid() -> None:
    proc = child.spawn(["true"], env={})
    assert proc.wait(5) == 0
    assert proc.send_signal(signal.SIGTERM) is False, "reaped: nothing to signal"
    assert proc.kill() is False


def test_the_child_dies_with_the_thread_that_spawned_it(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time\n"
         "from callctl.engine import child\n"
         "c = child.spawn(['sleep', '60'], env=dict(os.environ))\n"
         "print(c.pid, flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        assert parent.stdout is not None
        assert select.select([parent.stdout], [], [], 15)[0]
        grandchild = int(parent.stdout.readline())
        # Once it runs ``sleep``, setpriv has set the parent-death signal (a Python child
        # would also check its parent itself: ``lifeline.die_with_parent``).
        deadline = time.monotonic() + 5
        while Path(f"/proc/{grandchild}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline, "setpriv did not exec the child"
            time.sleep(0.01)
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        while not gone(grandchild) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gone(grandchild), "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)


def kept(argv: list[str], ready: object = None, **kwargs: float) -> child.Restarter[child.Child]:
    started: list[child.Child] = []

    def start() -> child.Child:
        started.append(child.spawn(argv, env=dict(os.environ), stdout=subprocess.PIPE))
        return started[-1]

    restarter: child.Restarter[child.Child] = child.Restarter(
        start, alive=child.Child.alive,
        ready=ready if callable(ready) else (lambda c: True),
        discard=lambda c: c.stop(grace=0.0, term_grace=0.0), what="the test child",
        **kwargs)  # type: ignore[arg-type]
    restarter.started = started  # type: ignore[attr-defined]
    return restarter


def test_the_restarter_restarts_a_dead_child_up_to_its_limit_then_gives_up() -> None:
    restarter = kept(["true"], limit=3, window_s=60.0)
    restarter.begin()
    died, restarts, gave_up = 0, 0, None
    deadline = time.monotonic() + 20
    while gave_up is None and time.monotonic() < deadline:
        turn = restarter.poll()
        died += turn.died is not None
        restarts += turn.restarted
        gave_up = gave_up or turn.gave_up
        time.sleep(0.01)
    assert gave_up is not None and "4 times" in gave_up, gave_up
    assert (died, restarts) == (4, 3)
    assert len(restarter.started) == 4  # type: ignore[attr-defined]
    assert restarter.current is None and restarter.gave_up == gave_up
    assert restarter.poll().died is None, "nothing more after giving up"
    assert all(c.returncode == 0 for c in restarter.started)  # type: ignore[attr-defined]
    restarter.reset()  # a fresh attempt: one start, counted anew
    assert restarter.current is not None and restarter.gave_up is None
    restarter.stop()


def test_restarts_outside_the_window_do_not_count() -> None:
    restarter = kept(["true"], limit=1, window_s=0.2)
    restarter.begin()
    restarts = 0
    deadline = time.monotonic() + 10
    while restarts < 4 and time.monotonic() < deadline:
        turn = restarter.poll()
        assert turn.gave_up is None, "one restart per 0.2 s is within the limit"
        restarts += turn.restarted
        time.sleep(0.25)
    assert restarts == 4
    restarter.stop()


def test_the_readiness_check_never_blocks_the_loop() -> None:
    slow = "import time; time.sleep(1.0); print('ready', flush=True); time.sleep(60)"

    def said_ready(c: child.Child) -> bool:
        stdout = c.popen.stdout
        return stdout is not None and bool(select.select([stdout], [], [], 0)[0])

    restarter = kept([sys.executable, "-c", slow], ready=said_ready, ready_timeout_s=20.0)
    restarter.begin()
    try:
        slowest, became_ready = 0.0, False
        deadline = time.monotonic() + 20
        while not became_ready and time.monotonic() < deadline:
            began = time.monotonic()
            turn = restarter.poll()
            slowest = max(slowest, time.monotonic() - began)
            became_ready = turn.became_ready
            time.sleep(0.01)
        assert became_ready and restarter.ready_child is restarter.current
        assert slowest < 0.05, f"a turn took {slowest * 1000:.0f} ms"
    finally:
        restarter.stop()


def test_a_child_that_never_gets_ready_is_replaced_after_the_timeout() -> None:
    restarter = kept(["sleep", "60"], ready=lambda c: False, ready_timeout_s=0.3, limit=1)
    first = restarter.begin()
    try:
        turn: child.Turn[child.Child] = child.Turn()
        deadline = time.monotonic() + 5
        while turn.died is None and time.monotonic() < deadline:
            turn = restarter.poll()
            time.sleep(0.02)
        assert turn.died is first and turn.restarted and gone(first.pid)
        assert restarter.current is not None and restarter.current is not first
    finally:
        restarter.stop()


@pytest.mark.parametrize("start_next", [True, False])
def test_take_hands_the_child_over_without_counting_a_restart(start_next: bool) -> None:
    restarter = kept(["sleep", "60"], limit=0)
    first = restarter.begin()
    assert restarter.poll().became_ready
    taken = restarter.take(start_next=start_next)
    try:
        assert taken is first and taken.alive()
        assert (restarter.current is not None) == start_next
        assert restarter.poll().gave_up is None
    finally:
        taken.stop(grace=0.0, term_grace=0.0)
        restarter.stop()


def test_take_over_moves_a_ready_child_from_one_keeper_to_another() -> None:
    spare, standby = kept(["sleep", "60"]), kept(["sleep", "60"])
    child_ = spare.begin()
    try:
        assert spare.poll().became_ready
        standby.take_over(spare)
        assert standby.ready_child is child_ and spare.current is None
        assert not standby.poll().became_ready, "its readiness came with it"
        assert spare.poll().died is None
    finally:
        spare.stop()
        standby.stop()
