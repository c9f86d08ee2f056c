"""The protocol's command tables and the one serving loop (``engine.serving``).

A spec'd command without a handler, or a handler without a spec, fails at the
class statement; every process's handler class passes. The loop is driven
over a real REP socket by real REQ clients: dispatch, error codes for a bad
frame and for a handler that raises, and the arrival stamp.
"""

from __future__ import annotations

import ast
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from callctl.controller.controller import Controller
from callctl.engine import protocol
from callctl.engine.agent_process import AgentControl
from callctl.engine.audio_process import AudioEngine
from callctl.engine.protocol import Field
from callctl.engine.serving import Commands, CommandServer, Reply, Request, SpecMismatch

ROOT = Path(__file__).resolve().parents[2]

TOY_COMMANDS = protocol.command_table(
    cmd_echo={"text": Field((str,), required=True)},
    cmd_crash={},
    cmd_refuse={},
    cmd_stamp={},
)


class Toy(Commands, spec=TOY_COMMANDS):
    failures = {LookupError: protocol.AUDIO}

    def __init__(self) -> None:
        self.server: CommandServer | None = None
        self.handled_at = 0.0

    def cmd_echo(self, request: Request) -> Reply:
        return protocol.ok(text=request["text"])

    def cmd_crash(self, request: Request) -> Reply:
        raise ZeroDivisionError("a bug")

    def cmd_refuse(self, request: Request) -> Reply:
        raise KeyError("the device went away")

    def cmd_stamp(self, request: Request) -> Reply:
        assert self.server is not None
        self.handled_at = time.monotonic()
        return protocol.ok(received_at=self.server.received_at)


def test_cmd_table_refuses_a_spec_d_command_without_a_handler() -> None:
    with pytest.raises(SpecMismatch, match="no handler for cmd_stamp"):
        class Lacking(Commands, spec=TOY_COMMANDS):
            def cmd_echo(self, request: Request) -> Reply: ...
            def cmd_crash(self, request: Request) -> Reply: ...
            def cmd_refuse(self, request: Request) -> Reply: ...


def test_cmd_table_refuses_a_handler_without_a_spec() -> None:
    with pytest.raises(SpecMismatch, match="no spec for handler cmd_extra"):
        class Extra(Toy):
            def cmd_extra(self, request: Request) -> Reply: ...


@pytest.mark.parametrize("handlers, spec", [
    (Controller, protocol.PUBLIC_COMMANDS),
    (AudioEngine, protocol.AUDIO_COMMANDS),
    (AgentControl, protocol.AGENT_COMMANDS),
])
def test_every_process_handles_exactly_its_spec(handlers: type[Commands],
                                                spec: dict[str, Any]) -> None:
    assert handlers.spec is spec
    assert {n[4:] for n in dir(handlers) if n.startswith("cmd_")} == set(spec)


@pytest.fixture
def toy_server(tmp_path: Path) -> Iterator[tuple[str, Toy]]:
    ctx = zmq.Context.instance()
    endpoint = f"ipc://{tmp_path}/toy"
    socket = ctx.socket(zmq.REP)
    toy = Toy()
    toy.server = CommandServer(socket, toy)
    socket.bind(endpoint)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            assert toy.server is not None
            toy.server.turn(0.02)

    thread = threading.Thread(target=loop, name="toy-server")
    thread.start()
    try:
        yield endpoint, toy
    finally:
        stop.set()
        thread.join(5)
        socket.close(0)


def ask(endpoint: str, frames: list[bytes]) -> dict[str, Any]:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(3000), f"no reply to {frames!r}"
        reply: dict[str, Any] = json.loads(sock.recv())
        return reply
    finally:
        sock.close()


def test_the_loop_dispatches_and_every_error_carries_a_code(
        toy_server: tuple[str, Toy]) -> None:
    endpoint, _ = toy_server
    assert ask(endpoint, [b'{"cmd": "echo", "text": "hi"}']) == {"ok": True, "text": "hi"}
    cases = {
        b"not json": protocol.BAD_REQUEST,
        b'{"cmd": "echo"}': protocol.BAD_REQUEST,  # a required field missing
        b'{"cmd": "echo", "text": "x", "y": 1}': protocol.BAD_REQUEST,
        b'{"cmd": "nope"}': protocol.UNKNOWN_COMMAND,
        b'{"cmd": "crash"}': protocol.INTERNAL,
        b'{"cmd": "refuse"}': protocol.AUDIO,  # the class's ``failures``
        b"x" * (protocol.MAX_MESSAGE_BYTES + 1): protocol.BAD_REQUEST,
    }
    for frame, code in cases.items():
        reply = ask(endpoint, [frame])
        assert reply["ok"] is False and reply["code"] == code, (frame[:40], reply)
        assert reply["error"] and "\n" not in reply["error"]
    assert ask(endpoint, [b'{"cmd": "echo", "text": "a"}', b"b"])["code"] == \
        protocol.BAD_REQUEST  # two frames
    assert "internal error: ZeroDivisionError" in ask(endpoint, [b'{"cmd": "crash"}'])["error"]
    assert ask(endpoint, [b'{"cmd": "echo", "text": "still here"}'])["ok"]


def test_the_arrival_is_stamped_before_the_handler_runs(toy_server: tuple[str, Toy]) -> None:
    endpoint, toy = toy_server
    sent = time.monotonic()
    reply = ask(endpoint, [b'{"cmd": "stamp"}'])
    assert sent <= reply["received_at"] <= toy.handled_at


def test_an_error_reply_needs_a_known_code() -> None:
    assert protocol.error(protocol.NO_CALL, "no call to hang up") == {
        "ok": False, "error": "no call to hang up", "code": "no_call"}
    with pytest.raises(AssertionError):
        protocol.error("no call to hang up", "oops")
    assert len(set(protocol.ERROR_CODES)) == len(protocol.ERROR_CODES)
    assert protocol.PROTOCOL_VERSION == 3


EVENT_NAMES = {getattr(protocol, n) for n in dir(protocol)
               if n.startswith(("EVENT_", "AGENT_")) and isinstance(getattr(protocol, n), str)
               and n not in ("AGENT_UNREACHABLE", "AGENT_AUTH", "AGENT_FAILED", "AGENT_SERVER")}


def _names_an_event(node: ast.expr) -> bool:
    """``topic``, ``name``, ``x["event"]``, ``x.get("event")``, ``topic.decode()``."""
    if isinstance(node, ast.Name):
        return node.id in ("topic", "name")
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "event"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr == "get":
            return bool(node.args) and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value == "event"
        return node.func.attr == "decode" and _names_an_event(node.func.value)
    return False


def test_receivers_compare_event_names_with_the_constants_not_literals() -> None:
    found = []
    for folder in ("controller", "gui", "engine", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Compare):
                    continue
                sides = [node.left, *node.comparators]
                literal = [s.value for s in sides if isinstance(s, ast.Constant)
                           and s.value in EVENT_NAMES]
                if literal and any(_names_an_event(s) for s in sides):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {literal[0]!r}")
    assert not found, "use protocol.EVENT_*/AGENT_*:\n" + "\n".join(found)
