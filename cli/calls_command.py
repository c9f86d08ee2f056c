"""`callctl calls`: past calls from the record directory, newest first; `calls show ID`: one call.

Reads only the call folders (``<record_dir>/<call_id>/summary.json`` and
``transcript.jsonl``, written by ``callctl.controller.postcall``); no controller needs
to run. A folder whose post-call work has not finished (no summary yet) is
listed as incomplete.

exit codes: 0 done, 1 no such call (or several match), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from callctl.cli.terminal import printable
from callctl.controller.options import default_record_dir
from callctl.controller.postcall import (
    CALLER,
    FAILED_NOTE,
    JOB_FILE,
    RECORDING,
    SUMMARY,
    TRANSCRIPT,
    read_failure_note,
)

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2


@dataclass
class CallFolder:
    """One call folder and what it says (``summary`` is None while post-call work runs)."""

    path: Path
    summary: dict[str, Any] | None

    @property
    def call_id(self) -> str:
        return self.path.name

    @property
    def started(self) -> datetime | None:
        text = (self.summary or {}).get("started_at")
        if isinstance(text, str):
            try:
                return datetime.fromisoformat(text)
            except ValueError:
                pass
        try:  # call ids begin with the UTC start time: 20261126-001502-3fa9
            return datetime.strptime(self.call_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            return None

    def row(self) -> dict[str, Any]:
        """The listing's fields (also the ``--json`` objects)."""
        s = self.summary or {}
        timings = s.get("timings") or {}
        voice = s.get("voice") or {}
        started = self.started
        return {
            "call_id": self.call_id,
            "started_at": s.get("started_at") or (started.isoformat() if started else None),
            "agent": s.get("agent"),
            "duration_s": s.get("duration_s"),
            "hangup_to_silence_ms": timings.get("audio_silent_ms"),
            "end_reason": s.get("end_reason"),
            "voice_id": s.get("voice_id"),
            "voice_status": voice.get("status"),
            "complete": self.summary is not None,
            "postcall_error": self.postcall_error,
            "folder": str(self.path),
        }

    @property
    def postcall_error(self) -> str | None:
        """Why the post-call work failed, when it left a note (``FAILED_NOTE``)."""
        return read_failure_note(self.path)


def load_calls(record_dir: Path) -> list[CallFolder]:
    """Every call folder in ``record_dir``, newest first. Folders with neither a summary
    nor a recording (``logs``, strays) are skipped."""
    if not record_dir.is_dir():
        return []
    calls = []
    for path in record_dir.iterdir():
        if not path.is_dir() or path.name.startswith("."):
            continue
        summary = _read_json(path / SUMMARY)
        if summary is None and not any((path / name).exists()
                                       for name in (RECORDING, FAILED_NOTE, JOB_FILE)):
            continue
        calls.append(CallFolder(path, summary))
    epoch = datetime.min.replace(tzinfo=UTC)
    calls.sort(key=lambda c: (c.started or epoch, c.call_id), reverse=True)
    return calls


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_transcript(folder: Path) -> list[dict[str, Any]]:
    """The lines of ``transcript.jsonl`` (unreadable lines skipped)."""
    lines = []
    try:
        text = (folder / TRANSCRIPT).read_text()
    except OSError:
        return []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def find_call(calls: list[CallFolder], key: str) -> CallFolder | str:
    """The call named by ``key`` (an id, a unique prefix of one, or ``last``), else the
    one-line reason there is none."""
    if key in ("last", "latest"):
        return calls[0] if calls else "no calls yet"
    exact = [c for c in calls if c.call_id == key]
    if exact:
        return exact[0]
    matches = [c for c in calls if c.call_id.startswith(key)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        return f"{key!r} matches {len(matches)} calls: " + ", ".join(c.call_id for c in matches[:5])
    return f"no call {key!r}"


# -- printing ---------------------------------------------------------------------

def _when(call: CallFolder) -> str:
    started = call.started
    return started.astimezone().strftime("%Y-%m-%d %H:%M:%S") if started else "?"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    whole = int(round(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def _ms(value: Any) -> str:
    return f"{value:.1f} ms" if isinstance(value, (int, float)) else "—"


def _voice(row: dict[str, Any]) -> str:
    if row["voice_id"]:
        return str(row["voice_id"])
    if not row["complete"]:
        return "(post-call failed)" if row.get("postcall_error") else "(saving…)"
    return f"({row['voice_status']})" if row["voice_status"] else "—"


def print_list(calls: list[CallFolder], record_dir: Path, out: Any) -> None:
    if not calls:
        print(f"no calls in {record_dir}", file=out)
        return
    head = ("WHEN", "CALL", "AGENT", "DURATION", "HANGUP→SILENCE", "VOICE")
    rows = []
    for call in calls:
        row = call.row()
        agent = printable(row["agent"] or "?")
        rows.append((_when(call), printable(call.call_id),
                     agent if len(agent) <= 24 else agent[:23] + "…",
                     _duration(row["duration_s"]), _ms(row["hangup_to_silence_ms"]),
                     printable(_voice(row))))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {3, 4}
    for r in [head, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("  ".join(cells).rstrip(), file=out)


def print_show(call: CallFolder, out: Any) -> None:
    s = call.summary or {}
    t = s.get("timings") or {}
    print(f"call {printable(call.call_id)}", file=out)
    if call.postcall_error:
        print(f"  post-call work failed: {printable(call.postcall_error)}", file=out)
    elif call.summary is None:
        print("  (post-call work not finished: no summary yet)", file=out)
    fields = [
        ("when", _when(call)),
        ("agent", s.get("agent")),
        ("conversation", s.get("conversation_id")),
        ("duration", _duration(s.get("duration_s"))),
        ("ended", f"{s['end_reason']}{' (failed)' if s.get('failed') else ''}"
         if s.get("end_reason") else None),
        ("hangup → silent", _ms(t.get("audio_silent_ms"))),
        ("hangup → stopped", _ms(t.get("stream_stopped_ms"))),
        ("hangup → agent " + ("killed" if t.get("agent_killed") else "exited"),
         _ms(t.get("agent_exited_ms"))),
        ("xruns", ", ".join(f"{k} {v}" for k, v in (s.get("xruns") or {}).items()) or None),
        ("caller speech", f"{s['caller']['speech_s']:.1f} s" if s.get("caller") else None),
    ]
    voice = s.get("voice")
    if isinstance(voice, dict):
        fields.append(("voice", f"{voice.get('name')!r}: {voice.get('status')}"
                       + (f", id {voice['voice_id']}" if voice.get("voice_id") else "")))
        if voice.get("message") and not voice.get("voice_id"):
            fields.append(("", str(voice["message"])))
    for error in s.get("errors") or []:
        fields.append(("error", str(error)))
    for label, value in fields:
        if value is not None:
            print(f"  {label:<22} {printable(value)}", file=out)
    for name in (RECORDING, CALLER, TRANSCRIPT, SUMMARY):
        if (call.path / name).exists():
            print(f"  {'file':<22} {printable(call.path / name)}", file=out)
    lines = read_transcript(call.path)
    print(f"transcript ({len(lines)} lines)", file=out)
    for line in lines:
        offset = line.get("offset_s")
        stamp = f"{offset:7.1f}s" if isinstance(offset, (int, float)) else "       ?"
        print(f"  {stamp}  {printable(line.get('role')):<6} {printable(line.get('text', ''))}",
              file=out)


# -- the command ------------------------------------------------------------------


def _parser(show: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callctl calls show" if show else "callctl calls",
        description="Show one past call: its summary and transcript." if show else
        "List past calls, newest first: when, agent, duration, hangup → silence, voice id.",
        epilog=None if show else "`callctl calls show ID` shows one call (ID: a call id, a "
        "unique prefix, or 'last').\nexit codes: 0 done, 1 no such call, 2 bad usage",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    if show:
        p.add_argument("id", metavar="ID", help="a call id, a unique prefix of one, or 'last'")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--record-dir", type=Path, metavar="DIR",
                   help="where call folders are (default: the controller's default)")
    if not show:
        p.add_argument("-n", "--limit", type=int, metavar="N", help="only the newest N calls")
    return p


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    show = bool(args_in) and args_in[0] == "show"
    try:
        args = _parser(show).parse_args(args_in[1:] if show else args_in)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    record_dir: Path = args.record_dir or default_record_dir()
    calls = load_calls(record_dir)
    if not show:
        if args.limit is not None:
            calls = calls[: max(0, args.limit)]
        if args.json:
            print(json.dumps([c.row() for c in calls], indent=2))
        else:
            print_list(calls, record_dir, sys.stdout)
        return EXIT_OK
    found = find_call(calls, args.id)
    if isinstance(found, str):
        print(f"callctl calls show: {printable(found)} in {printable(record_dir)}",
              file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print(json.dumps({"call_id": found.call_id, "folder": str(found.path),
                          "summary": found.summary, "transcript": read_transcript(found.path)},
                         indent=2))
    else:
        print_show(found, sys.stdout)
    return EXIT_OK
