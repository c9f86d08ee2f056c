"""`callctl`: the command line. Each subcommand lives in its own module."""

from __future__ import annotations

import sys

USAGE = """usage: callctl COMMAND [ARGS]

Talk to a voice agent through your microphone and speaker, and hang up at once.

commands:
  demo           an offline demo: the audio process, a voice, a hangup over ZeroMQ
  agent-server   run the offline ElevenLabs-compatible agent server
  devices        list the audio devices PortAudio sees

`callctl COMMAND --help` explains each one.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = args[0], args[1:]
    if command == "demo":
        from controller import demo

        return demo.main(rest)
    if command == "agent-server":
        from engine.agent_server import cli

        return cli.main(rest)
    if command == "devices":
        from controller import devices

        return devices.main(rest)
    print(f"callctl: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
