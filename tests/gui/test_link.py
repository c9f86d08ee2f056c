"""The ZeroMQ link inside Qt's event loop: replies matched in order, every edge drained,
events delivered, a silent controller reported and recovered from."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gui.link import ControllerLink
from tests.gui.fake_controller import FakeController


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeController]:
    controller = FakeController(f"ipc://{tmp_path}/control").start()
    yield controller
    controller.stop()


def test_replies_are_matched_in_order_and_every_edge_is_drained(
        app: Any, qtbot: Any, fake: FakeController) -> None:
    link = ControllerLink(fake.endpoint)
    link._safety.stop()  # no safety net: the notifier and the drains must do it all
    replies: list[Any] = []
    for n in range(50):  # a burst: many replies behind one edge of ZMQ_FD
        link.request({"cmd": "echo", "n": n}, lambda reply: replies.append(reply["n"]))
    qtbot.waitUntil(lambda: len(replies) == 50, timeout=3000)
    assert replies == list(range(50))
    assert link.pending == 0
    # A request sent from inside a reply handler is answered too.
    chained: list[Any] = []
    link.request({"cmd": "echo", "n": 1}, lambda r: link.request(
        {"cmd": "echo", "n": 2}, lambda r2: chained.append((r["n"], r2["n"]))))
    qtbot.waitUntil(lambda: chained == [(1, 2)], timeout=3000)
    link.close()


def test_events_arrive_as_signals(app: Any, qtbot: Any, fake: FakeController) -> None:
    link = ControllerLink(fake.endpoint)
    link.subscribe(fake.events_endpoint)
    seen: list[tuple[str, Any]] = []
    link.event_received.connect(lambda topic, body: seen.append((topic, body)))

    def published() -> bool:
        fake.publish("levels", call_id="c", in_dbfs=-20.0, out_dbfs=None)
        return bool(seen)

    qtbot.waitUntil(published, timeout=3000)  # a SUB joins late: publish until it hears
    topic, body = seen[0]
    assert topic == "levels" and body["in_dbfs"] == -20.0 and body["out_dbfs"] is None
    link.close()


def test_a_silent_controller_is_reported_and_the_link_recovers(
        app: Any, qtbot: Any, fake: FakeController) -> None:
    link = ControllerLink(fake.endpoint)
    problems: list[str] = []
    recovered: list[bool] = []
    link.unresponsive.connect(problems.append)
    link.responsive.connect(lambda: recovered.append(True))
    fake.mute.set()
    replies: list[dict[str, Any]] = []
    link.request({"cmd": "status"}, replies.append, timeout=0.3)
    link.request({"cmd": "ping"}, replies.append, timeout=5)
    qtbot.waitUntil(lambda: len(replies) == 2, timeout=3000)
    assert all(r["ok"] is False and r["timeout"] for r in replies)
    assert "controller not responding" in replies[0]["error"] and "'status'" in replies[0]["error"]
    assert problems and "not responding" in problems[0]
    # The controller answers again: a late reply to the old requests must not be taken for
    # the answer to a new one (the socket was replaced).
    fake.mute.clear()
    later: list[dict[str, Any]] = []
    link.request({"cmd": "echo", "n": 7}, later.append)
    qtbot.waitUntil(lambda: bool(later), timeout=3000)
    assert later[0] == {"ok": True, "n": 7}
    assert recovered == [True]
    link.close()


def test_a_request_waits_its_turn_before_its_clock_runs(
        app: Any, qtbot: Any, fake: FakeController) -> None:
    """The controller answers one request at a time: a short request queued behind a slow
    one is not declared late before the slow one is."""
    link = ControllerLink(fake.endpoint)
    fake.mute.set()
    answered: list[float] = []
    start = time.monotonic()
    link.request({"cmd": "devices"}, lambda r: answered.append(time.monotonic() - start),
                 timeout=0.6)
    link.request({"cmd": "status"}, lambda r: answered.append(time.monotonic() - start),
                 timeout=0.1)
    qtbot.waitUntil(lambda: len(answered) == 2, timeout=3000)
    assert min(answered) >= 0.55, answered
    link.close()


def test_a_closed_link_answers_without_blocking(app: Any, qtbot: Any, tmp_path: Path) -> None:
    link = ControllerLink(f"ipc://{tmp_path}/nobody")
    link.close()
    replies: list[dict[str, Any]] = []
    link.request({"cmd": "ping"}, replies.append)
    assert replies == [], "never answered synchronously"
    qtbot.waitUntil(lambda: bool(replies), timeout=1000)
    assert replies[0]["ok"] is False
