"""After the call: the call folder, the caller's voice and the voice clone, in a process of its own.

The package, one idea a module:

``runner``
    The controller's side, ``PostcallRunner`` (the only part that runs in the
    controller's loop thread, and nothing of it blocks).
``process``
    The post-call process (``Postcall``, its ``Reporter``, ``main``; started
    through ``__main__``).
``trimming``
    The caller's voice cut out of the recording (pure functions).
``files``
    The call folder, its claim and failure note, private and atomic writes.
``cloning``
    The upload to ElevenLabs Instant Voice Cloning.

The names other modules use are importable from here.

Nothing runs in the controller's loop thread except ``PostcallRunner``'s
bookkeeping: at the end of a call the controller writes a small job file and
spawns ``python -m callctl.controller.postcall --job FILE`` (a fork and an exec, a
few milliseconds), republishes the process's progress events, and sends it
SIGTERM to cancel a clone. The process lowers its priority, so it never
competes with the audio of the next call.

The call folder, ``<record_dir>/<call_id>/``:

``recording.wav``
    Both sides, stereo 16-bit 16 kHz, as recorded by the audio process (left:
    the microphone, right: what the speaker played). The audio process
    finalises it in the background after the hangup; the post-call process
    waits (at most ``RECORDING_WAIT_S``) until no descriptor of the audio
    process holds it open.
``caller.wav``
    The caller's channel alone, mono: silence and anything said while the
    agent was speaking (and its echo tail) left out, the pieces joined by
    short gaps, the peak normalised to ``PEAK_DBFS``. What a voice clone gets.
``transcript.jsonl``
    One JSON object a line: ``offset_s`` (seconds since the call was
    requested), ``at`` (wall time, ISO 8601), ``role`` (``agent`` or
    ``caller``), ``text``.
``summary.json``
    The call: agent, start and end times, duration, end reason, hangup
    timings, xruns, errors, the recording's and the caller's seconds, and
    the voice clone (``voice``: name, status, voice id, message; ``voice_id``
    at the top level). Rewritten atomically as the work goes on.

Progress goes to the controller as single JSON frames
``{"event": "postcall", "pid", "t", "call_id", "stage", "progress", "message",
"voice_id"}`` on its agent-events PULL socket; the controller republishes
them as the public ``postcall`` event. Stages: ``saving`` → ``trimming`` →
(``cloning``) → ``done``, or ``failed`` / ``cancelled``; exactly one of the
last three ends every run.

The voice clone (Instant Voice Cloning through the elevenlabs SDK) is made
only when a name was asked for, an API key is configured (read here from the
environment or the config file, never from the controller) and the caller
spoke for at least ``CALLCTL_CLONE_MIN_SPEECH_S`` seconds (default 10);
otherwise nothing is sent and the message says why. SIGTERM cancels a clone
(the upload is abandoned at once) but lets the files be finished; SIGINT is
ignored (the controller owns Ctrl-C).
"""

from callctl.controller.postcall.cloning import (
    CloneError,
    api_error_message,
    clone_sample,
    clone_voice,
)
from callctl.controller.postcall.files import (
    CALLER,
    FAILED_NOTE,
    JOB_FILE,
    RECORDING,
    SUMMARY,
    TRANSCRIPT,
    claim_call_folder,
    held_open_by,
    make_call_folder,
    read_failure_note,
    release_claim,
    reserve_failure_note,
    wait_for_recording,
    write_failure_note,
    write_wav,
)
from callctl.controller.postcall.runner import FINAL_STAGES, STAGES, PostcallRunner
from callctl.controller.postcall.trimming import (
    JOIN_SILENCE_S,
    MIN_SPEECH_ENV,
    PAD_S,
    PEAK_DBFS,
    Trimmed,
    min_speech_s,
    trim_caller,
)

__all__ = [
    "CALLER", "FAILED_NOTE", "FINAL_STAGES", "JOB_FILE", "JOIN_SILENCE_S", "MIN_SPEECH_ENV",
    "PAD_S", "PEAK_DBFS", "RECORDING", "STAGES", "SUMMARY", "TRANSCRIPT", "CloneError",
    "PostcallRunner", "Trimmed", "api_error_message", "claim_call_folder", "clone_sample",
    "clone_voice", "held_open_by", "make_call_folder", "min_speech_s", "read_failure_note",
    "release_claim", "reserve_failure_note", "trim_caller", "wait_for_recording",
    "write_failure_note", "write_wav",
]
