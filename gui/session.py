"""A controller as the window sees it: spawned (its own `callctl serve`) or attached.

GUI thread only; nothing waits. The session owns the ``ControllerLink`` and,
when it spawned the controller, the ``ServeProcess``. It turns their
signals into what a window needs:

* ``phase_changed(phase, message)``: the link to the controller —
  ``starting`` (spawned, waiting for it to answer ``ping``), ``connecting``
  (attached, waiting; retried every ``RETRY_MS``), ``ready``,
  ``unresponsive`` (a request timed out; status is still polled, and the
  next reply makes it ``ready`` again) and ``down`` (the spawned controller
  exited; ``message`` says why, with the last lines of its stderr).
* ``call_state_changed(state, reason)``: ``idle``, ``starting``,
  ``in_call``, ``ending``, ``failed`` — from ``state`` events, and from a
  ``status`` poll every ``POLL_MS`` as a safety net for lost events (a poll
  reply is ignored if a ``state`` event arrived after it was asked for:
  events and replies travel on different sockets).
* ``event_received(topic, body)``: every controller event (transcript, levels,
  call.ended, error, postcall, …), as published.
* ``devices_changed(list)``: the audio process's devices (index, name,
  inputs, outputs, default_rate), asked for whenever the controller
  becomes ready while no call runs.
* ``status_changed(dict)``: each ``status`` reply (the window takes the
  running call's duration from it when attaching mid-call).
"""

from __future__ import annotations

import time
from typing import Any

from PyQt6.QtCore import QObject, QTimer, pyqtSignal

from callctl.controller import endpoints
from callctl.engine import protocol
from callctl.gui.controller_process import ServeConfig, ServeProcess
from callctl.gui.link import ControllerLink, ReplyHandler

RETRY_MS = 1000
"""Between two ``ping`` attempts while waiting for a controller."""
PING_TIMEOUT_S = 1.5
START_TIMEOUT_S = 45.0
"""A spawned controller that has not answered ``ping`` by then is given up on."""
POLL_MS = 1000
"""``status`` safety-net poll while ready (also how an unresponsive controller is noticed)."""
DEVICES_TIMEOUT_S = 8.0
DEVICES_RETRY_MS = 300
"""While the controller is still listing devices, ask again this often (ms)."""
"""The audio process enumerates devices through PortAudio, which can take seconds."""
CALL_TIMEOUT_S = 5.0

IDLE_STATES = ("idle", "failed")


class Session(QObject):
    """See module docstring. Build with ``spawned(config)`` or ``attached(endpoint)``."""

    phase_changed = pyqtSignal(str, str)
    call_state_changed = pyqtSignal(str, object)
    event_received = pyqtSignal(str, object)
    devices_changed = pyqtSignal(object)
    status_changed = pyqtSignal(object)

    def __init__(self, endpoint: str, config: ServeConfig | None, kill_after_s: float = 2.0,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.endpoint = endpoint
        self.config = config
        self.kill_after_s = kill_after_s
        self.phase = "starting" if config is not None else "connecting"
        self.call_state = "idle"
        self.reason: str | None = None
        self.reason_code: str | None = None
        """``reason``'s error code (``engine.protocol``), for the window's hint."""
        self.down_code: str | None = None
        """Why the spawned controller exited, as an error code when known, else None."""
        self.state_call_id: str | None = None
        """The call the last ``state`` news was about."""
        self.process: ServeProcess | None = None
        self.link: ControllerLink | None = None
        self._state_seq = 0
        self._restarting: ServeConfig | None = None
        self._start_deadline = 0.0
        self._attempts = 0
        self._closing = False
        self._retry = QTimer(self)
        self._retry.setSingleShot(True)
        self._retry.timeout.connect(self._ping)
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._poll_status)

    @classmethod
    def spawned(cls, config: ServeConfig, kill_after_s: float = 2.0,
                parent: QObject | None = None) -> Session:
        return cls(config.endpoint, config, kill_after_s, parent)

    @classmethod
    def attached(cls, endpoint: str, parent: QObject | None = None) -> Session:
        return cls(endpoint, None, parent=parent)

    @property
    def owns_controller(self) -> bool:
        """True when the session spawned its controller (so it may restart it)."""
        return self.config is not None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Spawn (or find) the controller; ``phase_changed`` reports the progress."""
        self._open_link()
        if self.config is not None:
            if self.process is not None:
                self.process.deleteLater()
            self.process = ServeProcess(self.config, self)
            self.process.exited.connect(self._on_exited)
            try:
                self.process.start()
            except OSError as exc:
                self._set_phase("down", f"Could not start `callctl serve`: {exc}")
                return
            self._set_phase("starting", "Starting the audio engine…")
        else:
            self._set_phase("connecting", f"Connecting to {self.endpoint}…")
        self._start_deadline = time.monotonic() + START_TIMEOUT_S
        self._attempts = 0
        self._ping()

    def _open_link(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link.deleteLater()
        self.link = ControllerLink(self.endpoint, self)
        self.link.event_received.connect(self._on_event)
        self.link.unresponsive.connect(self._on_unresponsive)
        self.link.responsive.connect(self._on_responsive)
        try:  # subscribe before the controller is up, so no event of the first call is missed
            self.link.subscribe(endpoints.events_endpoint(self.endpoint))
        except (ValueError, AssertionError):
            pass  # an odd endpoint: the status reply names the events endpoint

    def _ping(self) -> None:
        if self.link is None or self.phase not in ("starting", "connecting") or self._closing:
            return
        self._attempts += 1
        self.link.request({"cmd": "ping"}, self._on_ping, timeout=PING_TIMEOUT_S)

    def _on_ping(self, reply: dict[str, Any]) -> None:
        if self.phase not in ("starting", "connecting") or self._closing:
            return
        if reply.get("ok"):
            self._became_ready()
            return
        if self.process is not None:
            if not self.process.running:
                return  # _on_exited reports it
            if time.monotonic() > self._start_deadline:
                self._set_phase("down", f"The controller did not answer within "
                                f"{START_TIMEOUT_S:g} s.\n{self.process.stderr_tail()}".strip())
                self.process.terminate(self.kill_after_s + 3)
                return
        elif self._attempts >= 2:
            self._set_phase("connecting", f"No controller answers at {self.endpoint}. "
                            "Start one with `callctl serve`; retrying…")
        self._retry.start(0 if reply.get("timeout") else RETRY_MS)

    def _became_ready(self) -> None:
        self._set_phase("ready", "")
        self._poll.start()
        self._poll_status(first=True)

    def _on_exited(self, code: int, stderr: str) -> None:
        self._poll.stop()
        self._retry.stop()
        if self._restarting is not None:
            config, self._restarting = self._restarting, None
            self.config = config
            self.start()
            return
        if self._closing:
            return
        if code < 0:
            how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        self.down_code = next((why for why, status in protocol.SERVE_EXIT_STATUS.items()
                               if status == code), None)
        self._set_call_state("idle", None)
        self._set_phase("down", f"The controller {how}.\n{stderr}".strip())

    def restart(self, config: ServeConfig | None = None) -> bool:
        """Restart the spawned controller (with ``config``, e.g. other devices).

        Only between calls; returns False (and does nothing) when attached or
        while a call runs. The new controller reports through ``phase_changed``.
        """
        if self.config is None:
            return False  # attached: not ours
        if self.phase == "ready" and self.call_state not in IDLE_STATES:
            return False  # a call runs (a stuck, unresponsive controller may be restarted)
        config = config or self.config
        self._poll.stop()
        self._retry.stop()
        if self.link is not None:
            self.link.close()
        self._set_phase("starting", "Switching audio devices…" if config != self.config
                        else "Restarting the audio engine…")
        if self.process is not None and self.process.running:
            self._restarting = config
            self.process.terminate(self.kill_after_s + 3)
        else:
            self.config = config
            self.start()
        return True

    def close(self) -> None:
        """Stop talking; ask a spawned controller to end (SIGTERM, SIGKILL at a deadline)."""
        self._closing = True
        self._poll.stop()
        self._retry.stop()
        if self.link is not None:
            self.link.close()
        if self.process is not None and self.process.running:
            self.process.terminate(self.kill_after_s + 3)

    def stop_blocking(self) -> None:
        """After the event loop: make sure a spawned controller is gone (bounded)."""
        self.close()
        if self.process is not None:
            self.process.stop_blocking(self.kill_after_s + 3)

    # -- status and events -------------------------------------------------------

    def _set_phase(self, phase: str, message: str) -> None:
        self.phase = phase
        self.phase_changed.emit(phase, message)

    def _set_call_state(self, state: str, reason: str | None, code: object = None) -> None:
        self.reason_code = code if isinstance(code, str) else None
        if (state, reason) == (self.call_state, self.reason):
            return
        self.call_state, self.reason = state, reason
        self.call_state_changed.emit(state, reason)

    def _poll_status(self, first: bool = False) -> None:
        if self.link is None or self._closing or (self.link.pending and not first):
            return  # a request is out: its own deadline tells whether the controller answers
        seq = self._state_seq
        self.link.request({"cmd": "status"}, lambda reply: self._on_status(reply, seq, first))

    def _on_status(self, reply: dict[str, Any], seq: int, first: bool) -> None:
        if not reply.get("ok") or self._closing:
            return
        if self.link is not None and isinstance(reply.get("events"), str):
            self.link.subscribe(reply["events"])
        if seq == self._state_seq and isinstance(reply.get("state"), str):
            call = reply.get("call")
            if isinstance(call, dict) and isinstance(call.get("call_id"), str):
                self.state_call_id = call["call_id"]
            self._set_call_state(reply["state"], reply.get("reason"), reply.get("reason_code"))
        self.status_changed.emit(reply)
        if first and self.call_state in IDLE_STATES:
            self.request_devices()

    def request_devices(self) -> None:
        if self.link is not None:
            self.link.request({"cmd": "devices"}, self._on_devices, timeout=DEVICES_TIMEOUT_S)

    def _on_devices(self, reply: dict[str, Any]) -> None:
        if reply.get("ok") and reply.get("pending"):
            # The controller lists devices off its loop; ask again once it has them.
            QTimer.singleShot(DEVICES_RETRY_MS, self.request_devices)
            return
        if reply.get("ok") and isinstance(reply.get("devices"), list):
            self.devices_changed.emit(reply["devices"])

    def _on_event(self, topic: str, body: dict[str, Any]) -> None:
        if topic == protocol.EVENT_STATE and isinstance(body.get("state"), str):
            self._state_seq += 1
            if isinstance(body.get("call_id"), str):
                self.state_call_id = body["call_id"]
            self._set_call_state(body["state"], body.get("reason"), body.get("reason_code"))
        self.event_received.emit(topic, body)

    def _on_unresponsive(self, message: str) -> None:
        if self.phase == "ready":
            self._set_phase("unresponsive", message)

    def _on_responsive(self) -> None:
        if self.phase == "unresponsive":
            self._set_phase("ready", "")

    # -- commands ------------------------------------------------------------------

    def call(self, agent: str, clone_voice: str | None, on_reply: ReplyHandler) -> None:
        """``{"cmd": "call", "agent": …, "clone_voice": …}``; progress follows as events."""
        request: dict[str, Any] = {"cmd": "call", "agent": agent}
        if clone_voice:
            request["clone_voice"] = clone_voice
        self._request(request, on_reply, CALL_TIMEOUT_S)

    def hangup(self, on_reply: ReplyHandler) -> None:
        """``{"cmd": "hangup"}``: answered once the audio is silent and stopped."""
        self._request({"cmd": "hangup"}, on_reply, CALL_TIMEOUT_S)

    def cancel_clone(self, on_reply: ReplyHandler) -> None:
        self._request({"cmd": "cancel_clone"}, on_reply, CALL_TIMEOUT_S)

    def _request(self, request: dict[str, Any], on_reply: ReplyHandler, timeout: float) -> None:
        if self.link is None:
            on_reply(protocol.error(protocol.NOT_CONNECTED, "no controller"))
            return
        self.link.request(request, on_reply, timeout=timeout)
