"""`callctl`: the command line. Each command lives in its own module, loaded when run."""

from __future__ import annotations

import importlib
import sys

USAGE = """usage: callctl COMMAND [ARGS]

Talk to a voice agent through your microphone and speaker, and hang up at once.

calls:
  call           make a call in the foreground (Enter or Ctrl-C hangs up)
  serve          run a controller with no call, for scripts and the GUI
  hangup         end the current call of a running controller
  status         show a running controller's state and endpoints
  events         print a running controller's events as they happen
  devices        list audio devices for --device
  gui            the window: call, hang up, levels, transcript
  calls          past calls: when, agent, duration, hangup timings

tools:
  agent-server   run the offline ElevenLabs-compatible agent server
  keys           make CurveZMQ keys for a controller reachable beyond loopback
  demo           an offline demo: a whole call and a hangup over ZeroMQ

`callctl COMMAND --help` explains each one. Scripting: docs/protocol.md.
exit codes: 0 done, 1 nothing to do or the call failed, 2 no controller or bad usage
"""

COMMANDS = {
    # command: (module, function); imported only when that command runs, so that
    # `callctl hangup` does not load Qt.
    "call": ("callctl.cli.call_command", "main"),
    "serve": ("callctl.cli.serve_command", "main"),
    "hangup": ("callctl.cli.controller_commands", "hangup_main"),
    "status": ("callctl.cli.controller_commands", "status_main"),
    "events": ("callctl.cli.controller_commands", "events_main"),
    "devices": ("callctl.cli.devices_command", "main"),
    "gui": ("callctl.gui.app", "main"),
    "calls": ("callctl.cli.calls_command", "main"),
    "agent-server": ("callctl.engine.agent_server.command", "main"),
    "demo": ("callctl.cli.demo", "main"),
    "keys": ("callctl.cli.keys_command", "main"),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"callctl: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    module, function = COMMANDS[command]
    result: int = getattr(importlib.import_module(module), function)(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
