"""`callctl hangup`, `callctl status`, `callctl events`: talk to a running controller.

Exit codes (every command): 0 done, 1 nothing to do (e.g. no call to hang
up), 2 no controller at the endpoint, or bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import zmq

from callctl.controller import endpoints
from callctl.controller.calls import printable
from callctl.controller.curve import ClientKeys, CurveError, curve_dir
from callctl.controller.options import add_endpoint
from callctl.engine.control_client import ControlClient

EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2


class NoController(RuntimeError):
    pass


def request(endpoint: str, message: dict[str, Any], timeout: float = 3.0,
            keys: ClientKeys | None = None) -> dict[str, Any]:
    """One request to the controller at ``endpoint``; ``NoController`` if nobody answers."""
    if endpoint.startswith("ipc://"):
        from pathlib import Path

        if not Path(endpoint[len("ipc://"):]).exists():
            raise NoController(f"no controller at {endpoint} (start one with `callctl call` "
                               "or `callctl serve`)")
    client = ControlClient(endpoint, secure=keys.apply if keys else None)
    try:
        return client.request(message, timeout=timeout)
    except TimeoutError:
        raise NoController(f"no controller answered at {endpoint} within {timeout:g} s") from None
    finally:
        client.close()


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"callctl {name}", description=description,
                                epilog="exit codes: 0 done, 1 nothing to do, 2 no controller "
                                "or bad usage")
    add_endpoint(p)
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    return p


def _resolve(args: argparse.Namespace, name: str) -> str | None:
    """The endpoint to talk to (and ``args.keys``, the CurveZMQ client keys or None)."""
    directory = curve_dir(args.curve_dir)
    try:
        args.keys = ClientKeys.load(directory) if directory else None
        return endpoints.control_endpoint(args.endpoint, curve=directory is not None,
                                          insecure=args.insecure)
    except (endpoints.EndpointError, CurveError) as exc:
        print(f"callctl {name}: {exc}", file=sys.stderr)
        return None


def _ask(args: argparse.Namespace, name: str, message: dict[str, Any]) -> dict[str, Any] | None:
    """Resolve the endpoint and send ``message``; None (the reason printed) when that fails."""
    endpoint = _resolve(args, name)
    if endpoint is None:
        return None
    try:
        return request(endpoint, message, keys=args.keys)
    except NoController as exc:
        print(f"callctl {name}: {exc}", file=sys.stderr)
        return None


def hangup_main(argv: list[str] | None = None) -> int:
    args = _parser("hangup", "End the current call at once.").parse_args(argv)
    reply = _ask(args, "hangup", {"cmd": "hangup"})
    if reply is None:
        return EXIT_USAGE
    if args.json:
        print(json.dumps(reply))
    elif reply.get("ok"):
        audio = reply.get("audio") or {}
        silent = audio.get("silent_ms")
        print(f"hung up call {reply.get('call_id')}"
              + (f": audio silent {silent:.1f} ms after the request arrived"
                 if silent is not None else ""))
    else:
        print(f"callctl hangup: {printable(reply.get('error'))}", file=sys.stderr)
    return EXIT_OK if reply.get("ok") else EXIT_NOTHING


def status_main(argv: list[str] | None = None) -> int:
    args = _parser("status", "Show the controller's state and endpoints.").parse_args(argv)
    reply = _ask(args, "status", {"cmd": "status"})
    if reply is None:
        return EXIT_USAGE
    if args.json:
        print(json.dumps(reply))
        return EXIT_OK
    print(f"state:     {reply['state']}"
          + (f" ({printable(reply['reason'])})" if reply.get("reason") else ""))
    print(f"endpoint:  {reply['endpoint']}")
    print(f"events:    {reply['events']}")
    call = reply.get("call")
    if call:
        print(f"call:      {call['call_id']} with {printable(call['agent'])}, "
              f"{call['duration_s']:.1f} s")
    audio = reply.get("audio") or {}
    if audio.get("ok"):
        print(f"audio:     {audio['state']} on {audio['device']} at {audio['device_rate']} Hz")
    last = reply.get("last_call")
    if last:
        timings = last.get("timings") or {}
        print(f"last call: {last['call_id']} ended ({last['reason']}), "
              f"agent gone after {timings.get('agent_exited_ms')} ms")
    return EXIT_OK


def events_main(argv: list[str] | None = None) -> int:
    p = _parser("events", "Print the controller's events as they happen (Ctrl-C stops).")
    p.add_argument("--topic", action="append", default=[],
                   help="only these topics (repeatable): state, transcript, levels, "
                   "call.ended, error, agent")
    p.add_argument("--count", type=int, default=0, help="stop after N events")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="stop after this many seconds (default: never)")
    args = p.parse_args(argv)
    status = _ask(args, "events", {"cmd": "status"})
    if status is None:
        return EXIT_USAGE
    events = status["events"]
    sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if args.keys is not None:
        args.keys.apply(sub)
    for topic in args.topic or [""]:
        sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sub.connect(events)
    seen = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        while args.count <= 0 or seen < args.count:
            if deadline is not None and time.monotonic() > deadline:
                break
            if not sub.poll(100):
                continue
            topic, body = sub.recv_multipart()
            event = json.loads(body)
            seen += 1
            if args.json:
                print(json.dumps(event), flush=True)
            else:
                # What a service or a caller said can hold terminal control sequences.
                fields = " ".join(f"{k}={printable(v)}" for k, v in event.items()
                                  if k != "event")
                print(f"{printable(topic.decode(errors='replace')):<11} {fields}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sub.close(0)
    return EXIT_OK
