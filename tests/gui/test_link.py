"""The ZeroMQ link inside Qt's event loop, against a real `callctl serve`: replies matched
in order, every edge drained, events delivered, a silent controller (SIGSTOP) reported
and recovered from (SIGCONT)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from callctl.engine import protocol
from callctl.gui.link import ControllerLink


def _n(reply: dict[str, Any]) -> int:
    """The number of an ``unknown command 'probe-N'`` error reply."""
    match = re.search(r"'probe-(\d+)'", reply.get("error", ""))
    assert match, reply
    return int(match.group(1))


def test_replies_are_matched_in_order_and_every_edge_is_drained(
        app: Any, qtbot: Any, serve: Any) -> None:
    served = serve()
    link = ControllerLink(served.endpoint)
    link._safety.stop()  # no safety net: the notifier and the drains must do it all
    replies: list[int] = []
    for n in range(50):  # a burst: many replies behind one edge of ZMQ_FD
        link.request({"cmd": f"probe-{n}"}, lambda reply: replies.append(_n(reply)))
    qtbot.waitUntil(lambda: len(replies) == 50, timeout=5000)
    assert replies == list(range(50))
    assert link.pending == 0
    # A request sent from inside a reply handler is answered too.
    chained: list[Any] = []
    link.request({"cmd": "probe-1"}, lambda r: link.request(
        {"cmd": "probe-2"}, lambda r2: chained.append((_n(r), _n(r2)))))
    qtbot.waitUntil(lambda: chained == [(1, 2)], timeout=3000)
    link.close()


def test_events_arrive_as_signals(app: Any, qtbot: Any, serve: Any) -> None:
    served = serve()
    link = ControllerLink(served.endpoint)
    link.subscribe(served.events_endpoint)
    seen: list[tuple[str, Any]] = []
    link.event_received.connect(lambda topic, body: seen.append((topic, body)))
    qtbot.wait(300)  # the subscription reaches the publisher
    assert served.request({"cmd": "call"})["ok"]
    qtbot.waitUntil(lambda: any(t == "levels" for t, _ in seen), timeout=15000)
    topic, body = next((t, b) for t, b in seen if t == "levels")
    assert isinstance(body["call_id"], str) and "in_dbfs" in body and "out_dbfs" in body
    assert any(t == "state" and b["state"] == "starting" for t, b in seen)
    served.request({"cmd": "hangup"})
    link.close()


def test_a_silent_controller_is_reported_and_the_link_recovers(
        app: Any, qtbot: Any, serve: Any) -> None:
    served = serve()
    link = ControllerLink(served.endpoint)
    problems: list[str] = []
    recovered: list[bool] = []
    link.unresponsive.connect(problems.append)
    link.responsive.connect(lambda: recovered.append(True))
    os.kill(served.proc.pid, signal.SIGSTOP)
    try:
        replies: list[dict[str, Any]] = []
        link.request({"cmd": "status"}, replies.append, timeout=0.3)
        link.request({"cmd": "ping"}, replies.append, timeout=5)
        qtbot.waitUntil(lambda: len(replies) == 2, timeout=3000)
    finally:
        os.kill(served.proc.pid, signal.SIGCONT)
    assert all(r["ok"] is False and r["timeout"] and r["code"] == protocol.NOT_RESPONDING
               for r in replies)
    assert "controller not responding" in replies[0]["error"] and "'status'" in replies[0]["error"]
    assert problems and "not responding" in problems[0]
    # The controller answers again: a late reply to the old requests must not be taken for
    # the answer to a new one (the socket was replaced).
    later: list[dict[str, Any]] = []
    link.request({"cmd": "probe-7"}, later.append)
    qtbot.waitUntil(lambda: bool(later), timeout=3000)
    assert _n(later[0]) == 7
    assert recovered == [True]
    link.close()


def test_a_request_waits_its_turn_before_its_clock_runs(
        app: Any, qtbot: Any, serve: Any) -> None:
    """The controller answers one request at a time: a short request queued behind a slow
    one is not declared late before the slow one is."""
    served = serve()
    link = ControllerLink(served.endpoint)
    os.kill(served.proc.pid, signal.SIGSTOP)
    answered: list[float] = []
    try:
        start = time.monotonic()
        link.request({"cmd": "devices"}, lambda r: answered.append(time.monotonic() - start),
                     timeout=0.6)
        link.request({"cmd": "status"}, lambda r: answered.append(time.monotonic() - start),
                     timeout=0.1)
        qtbot.waitUntil(lambda: len(answered) == 2, timeout=3000)
    finally:
        os.kill(served.proc.pid, signal.SIGCONT)
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
