"""A stand-in controller for window tests that need a controller to misbehave on cue.

It speaks the public protocol (docs/protocol.md) on a ROUTER (a REP's peer
sees no difference) and publishes events on a PUB at ``<endpoint>.events``,
from its own thread, which owns both sockets. ``mute`` makes it swallow
requests unanswered (a stuck controller); ``publish`` queues an event.
Every request it receives is kept in ``requests``.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any

import zmq


class FakeController:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.events_endpoint = endpoint + ".events"
        self.requests: list[dict[str, Any]] = []
        self.mute = threading.Event()
        self.state = "idle"
        self._outbox: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-controller", daemon=True)

    def start(self) -> FakeController:
        self._thread.start()
        assert self._bound.wait(5), "the fake controller did not bind"
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def publish(self, topic: str, **fields: Any) -> None:
        self._outbox.put((topic, {"event": topic, **fields}))

    def commands(self) -> list[str]:
        return [str(r.get("cmd")) for r in list(self.requests)]

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "ping":
            return {"ok": True, "protocol": 2, "pid": 1}
        if cmd == "status":
            return {"ok": True, "state": self.state, "reason": None, "protocol": 2,
                    "events": self.events_endpoint, "endpoint": self.endpoint, "call": None,
                    "last_call": None, "audio": {"ok": True, "device": "Fake device"}}
        if cmd == "devices":
            return {"ok": True, "devices": [{"index": 0, "name": "Fake device", "inputs": 1,
                                             "outputs": 1, "default_rate": 16000.0}]}
        if cmd == "call":
            self.state = "starting"
            self.publish("state", state="starting", reason=None, call_id="fake-1")
            self.state = "in_call"
            self.publish("state", state="in_call", reason=None, call_id="fake-1")
            return {"ok": True, "call_id": "fake-1", "state": "starting"}
        if cmd == "hangup":
            if self.state not in ("starting", "in_call"):
                return {"ok": False, "error": "no call to hang up"}
            self.state = "ending"
            self.publish("state", state="ending", reason=None, call_id="fake-1")
            self.publish("call.ended", call_id="fake-1", reason="hangup", recording=None,
                         conversation_id=None, errors=[],
                         timings={"audio_silent_ms": 1.0, "stream_stopped_ms": 2.0,
                                  "agent_exited_ms": 30.0, "agent_killed": False,
                                  "total_ms": 30.0})
            self.state = "idle"
            self.publish("state", state="idle", reason=None, call_id="fake-1")
            return {"ok": True, "call_id": "fake-1", "audio": {}}
        if cmd == "cancel_clone":
            return {"ok": True, "call_id": "fake-1"}
        if cmd == "echo":
            return {"ok": True, "n": request.get("n")}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _run(self) -> None:
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(self.endpoint)
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind(self.events_endpoint)
        self._bound.set()
        try:
            while not self._stop.is_set():
                if router.poll(5):
                    frames = router.recv_multipart()
                    request = json.loads(frames[-1])
                    self.requests.append(request)
                    if not self.mute.is_set():
                        reply = self._answer(request)
                        router.send_multipart([*frames[:-1], json.dumps(reply).encode()])
                while True:
                    try:
                        topic, body = self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    pub.send_multipart([topic.encode(), json.dumps(body).encode()])
        finally:
            router.close(0)
            pub.close(0)
            ctx.term()
