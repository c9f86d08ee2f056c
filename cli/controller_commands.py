"""`callctl hangup`, `callctl status`, `callctl events`: talk to a running controller.

Each goes through ``callctl.Client``, the public Python API, as any program would.
Exit codes (every command): 0 done, 1 nothing to do (e.g. no call to hang up:
the controller refused), 2 no controller at the endpoint, or bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from callctl.cli.terminal import printable
from callctl.client import CallctlError, Client, Refused
from callctl.controller.options import add_endpoint

EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"callctl {name}", description=description,
                                epilog="exit codes: 0 done, 1 nothing to do, 2 no controller "
                                "or bad usage")
    add_endpoint(p)
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    return p


def _client(args: argparse.Namespace, name: str) -> Client | None:
    """The client for the endpoint and keys the options name; None (the reason printed)
    when they cannot be used."""
    try:
        return Client(args.endpoint, curve_dir=args.curve_dir, insecure=args.insecure)
    except CallctlError as exc:
        print(f"callctl {name}: {exc}", file=sys.stderr)
        return None


def _ask(args: argparse.Namespace, name: str, message: dict[str, Any]) -> dict[str, Any] | None:
    """Send ``message``; the reply, also an error reply (``ok`` false); None (the reason
    printed) when no controller answers or the options are unusable."""
    client = _client(args, name)
    if client is None:
        return None
    try:
        return client.request(message)
    except Refused as exc:
        return exc.reply
    except CallctlError as exc:
        print(f"callctl {name}: {exc}", file=sys.stderr)
        return None
    finally:
        client.close()


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
        return EXIT_OK if reply.get("ok") else EXIT_NOTHING
    if not reply.get("ok"):
        print(f"callctl status: {printable(reply.get('error'))}", file=sys.stderr)
        return EXIT_NOTHING
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
                   "call.ended, error, agent, postcall")
    p.add_argument("--count", type=int, default=0, help="stop after N events")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="stop after this many seconds (default: never)")
    args = p.parse_args(argv)
    client = _client(args, "events")
    if client is None:
        return EXIT_USAGE
    try:
        stream = client.events(args.topic, timeout=args.timeout or None)
    except CallctlError as exc:
        print(f"callctl events: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        client.close()
    seen = 0
    try:
        with stream:
            for event in stream:
                seen += 1
                if args.json:
                    print(json.dumps(event), flush=True)
                else:
                    # What a service or a caller said can hold terminal control sequences.
                    fields = " ".join(f"{k}={printable(v)}" for k, v in event.items()
                                      if k != "event")
                    print(f"{printable(event['event']):<11} {fields}", flush=True)
                if 0 < args.count <= seen:
                    break
    except KeyboardInterrupt:
        pass
    return EXIT_OK
