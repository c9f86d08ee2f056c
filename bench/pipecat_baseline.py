"""The third system: Pipecat 1.14's ``LocalAudioTransport`` (PyAudio), driven as a bot drives it.

Runs in its own venv (``bench/pipecat_venv.sh`` makes ``bench/.venv-pipecat``
from ``bench/pipecat-requirements.txt``; Pipecat's pins clash with the
project's), as a child process on the benchmark's PulseAudio server (run
under its env; PyAudio reaches it through ALSA's ``default`` device, as a
Pipecat user's program does with default devices)::

    bench/.venv-pipecat/bin/python bench/pipecat_baseline.py --speech SPEECH.wav \
        [--device-env ok] [--chunk-ms 20] [--serialize-stop]

Without ``--device-env ok`` it refuses to run (error line, exit 1) unless
``PULSE_SERVER`` is set, so that it never plays into some other device by
mistake; ``--device-env ok`` takes whatever default devices it finds.

It speaks the same line protocol as ``bench.sdk_baseline``. stdin, one
command a line; stdout, one JSON object a line (flushed), every time a
``time.monotonic()`` float (CLOCK_MONOTONIC, shared with the parent):

* ``{"event": "ready", "pid": P, "pipecat": V}`` once, imports done and the
  speech loaded;
* ``call`` → ``{"event": "started", "t": T, "built": B}``: T is taken just
  before the call's objects are built; B once they are built, the speech
  queued and the runner's task created (the pipeline starts after that);
* ``interrupt`` → ``{"event": "interrupted", "t": T}``: T just before
  Pipecat's ``InterruptionFrame`` is pushed;
* ``hangup`` → ``{"event": "hungup", "hangup": T0, "stop_returned": T1,
  "session_ended": T2}``: T0 when the line was read, T1 when
  ``await worker.cancel()`` returned, T2 when the runner's ``run()`` task
  finished (null if not within ``--session-timeout``, 5 s);
* ``quit`` (or end of stdin) → exits 0 at once (a call still running is
  not cancelled first: its audio ends with the process);
* ``{"event": "error", "message": M}`` then exit 1: a bad command or one out
  of turn, an exception, or an ``ErrorFrame`` reaching the pipeline's worker.

What a call is, and why
-----------------------
Per call, as a Pipecat bot does per session (its runner calls the bot's
function once per session), the child builds everything: a
``LocalAudioTransport`` (which creates its ``pyaudio.PyAudio()``), the
pipeline ``transport.input() → CallerTurn → transport.output()``, a
``PipelineWorker`` (Pipecat's defaults, so the RTVI processor and observer
are added as for any bot) and a ``WorkerRunner``. Nothing of it can be built
ahead and reused: a worker that has finished returns at once from ``run()``,
and the output transport shuts its write executor down at cleanup. So the
call starts (T) before construction, and call start includes it.

The transport's parameters are what a voice-agent developer writes: input
and output enabled, both at 16 kHz (``audio_in_sample_rate``,
``audio_out_sample_rate``), all else Pipecat's defaults (the output
transport writes 40 ms chunks with blocking ``stream.write`` in one executor
thread; the input stream's callback pushes 20 ms frames into the loop).
Pipecat's ``LocalAudioTransport`` has no echo canceller, so the CPU row has
none for this system.

The agent's speech (the ``--speech`` WAV: 16 kHz mono int16) is queued at
once, as a TTS service streaming faster than real time would, in
``OutputAudioRawFrame``\\ s of ``--chunk-ms`` (20 ms, 320 samples) each,
with ``worker.queue_frames()`` before the runner starts; the worker pushes
user frames only after its ``StartFrame`` reached the end of the pipeline.

``CallerTurn`` stands where a bot's user aggregator stands (after the input
transport). On user speech the aggregator calls
``FrameProcessor.broadcast_interruption()``, which pushes an
``InterruptionFrame`` downstream (to the output transport, which drops the
audio it has queued) and upstream; ``interrupt`` makes ``CallerTurn`` do the
same. Hangup is the pipeline's own cancel, ``await worker.cancel()`` (it
queues a ``CancelFrame``), as a bot does on a client's disconnect.

Known crash (Pipecat 1.14 as shipped)
-------------------------------------
On ``cancel`` the output transport stops and closes its PyAudio stream on
the loop's thread while its write thread is usually still blocked in
``stream.write()``; PortAudio is not thread-safe and the child often dies
(SIGABRT, ``malloc_consolidate(): unaligned fastbin chunk detected``) before
it can print ``hungup``. ``faulthandler`` leaves the threads' stacks on
stderr. The parent sees the child exit: count it, start a new child.
``--serialize-stop`` swaps in ``SerializedStopOutput``, which waits for the
write in flight before stopping the stream -- a fix, so not Pipecat as a
user gets it; for diagnosis and comparison only.

The child is one process (asyncio in the main thread, a thread reading
stdin, PyAudio's and Pipecat's threads): its CPU is the audio's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import sys
import threading
import time
import wave
from typing import Any

_print_lock = threading.Lock()

RATE = 16000
SESSION_TIMEOUT_S = 5.0


def say(**fields: Any) -> None:
    """One JSON line on stdout; any thread may call."""
    with _print_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def fail(message: str) -> None:
    """Report an error and exit 1 at once (Pipecat's and PyAudio's threads are not waited for)."""
    say(event="error", message=message)
    sys.stderr.flush()
    os._exit(1)


def load_speech(path: str, chunk_ms: float) -> list[bytes]:
    """The WAV's int16 mono 16 kHz PCM, cut into ``chunk_ms`` pieces (the last may be short)."""
    try:
        w = wave.open(path, "rb")
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a WAV file ({str(exc) or 'too short'})") from None
    with w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            raise ValueError(f"{path}: want 16 kHz mono int16, got {w.getframerate()} Hz, "
                             f"{w.getnchannels()} channel(s), {8 * w.getsampwidth()} bit")
        pcm = w.readframes(w.getnframes())
    if not pcm:
        raise ValueError(f"{path}: no samples")
    step = 2 * max(1, round(RATE * chunk_ms / 1000))
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


# Pipecat is imported after the helpers so that a missing venv still gets an error line.
try:
    import pipecat
    from pipecat.frames.frames import Frame, OutputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.transports.base_output import BaseOutputTransport
    from pipecat.transports.local.audio import (
        LocalAudioOutputTransport,
        LocalAudioTransport,
        LocalAudioTransportParams,
    )
    from pipecat.workers.runner import WorkerRunner
except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
    fail(f"cannot import pipecat: {type(exc).__name__}: {exc}")
    raise  # unreachable: fail() exits


class CallerTurn(FrameProcessor):
    """Passes every frame on; stands where a bot's user aggregator is, to interrupt as it does."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class SerializedStopOutput(LocalAudioOutputTransport):
    """``--serialize-stop`` only, NOT Pipecat as shipped: stop the stream after the write in flight.

    Pipecat 1.14's ``LocalAudioOutputTransport.cleanup()`` (run on cancel)
    calls ``stream.stop_stream()`` and ``close()`` on the event loop's thread
    while its executor thread is usually still inside a blocking
    ``stream.write()`` (cancelling the awaiting task does not stop the
    thread). PortAudio streams are not thread-safe, and the process often
    dies with ``malloc_consolidate(): unaligned fastbin chunk detected``
    (SIGABRT). This variant waits for that write to return first; the rest
    is Pipecat's own code, unchanged.
    """

    async def cleanup(self) -> None:
        try:
            await BaseOutputTransport.cleanup(self)  # stops the audio task: no new write
            await asyncio.get_running_loop().run_in_executor(self._executor, lambda: None)
            if self._out_stream:  # type: ignore[has-type]
                self._out_stream.stop_stream()  # type: ignore[has-type]
                self._out_stream.close()  # type: ignore[has-type]
                self._out_stream = None
        finally:
            self._executor.shutdown(wait=False)


class SerializedStopTransport(LocalAudioTransport):
    """``LocalAudioTransport`` whose output is a ``SerializedStopOutput`` (``--serialize-stop``)."""

    def output(self) -> FrameProcessor:
        if not self._output:  # type: ignore[has-type]
            self._output = SerializedStopOutput(self._pyaudio, self._params)
        return self._output


class Call:
    """One call: a transport, a pipeline, a worker and a runner, built and run as a bot does."""

    def __init__(self, speech: list[bytes], serialize_stop: bool = False) -> None:
        transport_cls = SerializedStopTransport if serialize_stop else LocalAudioTransport
        transport = transport_cls(LocalAudioTransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=RATE,
            audio_out_sample_rate=RATE,
        ))
        self.turn = CallerTurn()
        self.worker = PipelineWorker(Pipeline([transport.input(), self.turn, transport.output()]))
        self.runner = WorkerRunner(handle_sigint=False)
        self.frames = [OutputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1)
                       for chunk in speech]
        self.task: asyncio.Task[None] | None = None
        self.finished_at: float | None = None
        self.hanging_up = False

        @self.worker.event_handler("on_pipeline_error")
        async def on_pipeline_error(_worker: Any, frame: Any) -> None:
            fail(f"pipeline error: {frame}")

    async def start(self) -> None:
        await self.worker.queue_frames(self.frames)
        await self.runner.add_workers(self.worker)
        self.task = asyncio.create_task(self.runner.run())
        self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.finished_at = time.monotonic()
        if not self.hanging_up:
            why = "cancelled" if task.cancelled() else repr(task.exception())
            fail(f"the pipeline ended before the hangup ({why})")

    async def interrupt(self) -> float:
        t = time.monotonic()
        await self.turn.broadcast_interruption()
        return t

    async def hangup(self, timeout: float) -> tuple[float, float | None]:
        """Cancel; return (when cancel returned, when the runner's task finished or None)."""
        self.hanging_up = True
        await self.worker.cancel(reason="hangup")
        stop_returned = time.monotonic()
        assert self.task is not None
        await asyncio.wait([self.task], timeout=timeout)
        if not self.task.done():
            self.task.cancel()  # stuck: do not let it hold the next call's device
            return stop_returned, None
        # The done callback stamped it; let an exception surface in the log only.
        if not self.task.cancelled() and self.task.exception() is not None:
            print(f"pipecat_baseline: runner ended with {self.task.exception()!r}", file=sys.stderr)
        return stop_returned, self.finished_at


def read_commands(loop: asyncio.AbstractEventLoop,
                  commands: asyncio.Queue[tuple[str, float]]) -> None:
    """Thread: each stdin line with the time it was read; end of input is ``quit``."""
    for line in sys.stdin:
        t = time.monotonic()
        loop.call_soon_threadsafe(commands.put_nowait, (line.strip(), t))
    loop.call_soon_threadsafe(commands.put_nowait, ("quit", time.monotonic()))


async def serve(speech: list[bytes], session_timeout: float, serialize_stop: bool) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    threading.Thread(target=read_commands, args=(loop, commands), daemon=True,
                     name="stdin").start()
    say(event="ready", pid=os.getpid(), pipecat=pipecat.__version__)
    call: Call | None = None
    while True:
        cmd, t_read = await commands.get()
        if cmd == "call" and call is None:
            started = time.monotonic()
            call = Call(speech, serialize_stop)
            await call.start()
            say(event="started", t=started, built=time.monotonic())
        elif cmd == "interrupt" and call is not None:
            say(event="interrupted", t=await call.interrupt())
        elif cmd == "hangup" and call is not None:
            stop_returned, ended = await call.hangup(session_timeout)
            say(event="hungup", hangup=t_read, stop_returned=stop_returned, session_ended=ended)
            call = None
        elif cmd == "quit":
            # A call still running is not cancelled: Pipecat's cancel can crash the
            # process (see "Known crash"), and exiting ends its audio as well.
            return
        elif cmd == "":
            continue
        else:
            state = "in a call" if call is not None else "with no call"
            fail(f"unexpected command {cmd!r} {state}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/pipecat_baseline.py")
    p.add_argument("--speech", required=True, help="the agent's speech, 16 kHz mono int16 WAV")
    p.add_argument("--device-env", choices=["ok"], default=None,
                   help="'ok': use the default devices of whatever environment this runs in; "
                        "otherwise PULSE_SERVER must be set (the benchmark's private server)")
    p.add_argument("--chunk-ms", type=float, default=20.0,
                   help="duration of each OutputAudioRawFrame of the speech, ms")
    p.add_argument("--session-timeout", type=float, default=SESSION_TIMEOUT_S,
                   help="bound on waiting for the runner to finish after cancel, s")
    p.add_argument("--serialize-stop", action="store_true",
                   help="NOT Pipecat as shipped: wait for the output transport's write in flight "
                        "before stopping its stream on cancel (see SerializedStopOutput)")
    args = p.parse_args(argv)
    # A native crash (PortAudio) cannot print an error line: leave every thread's stack on stderr.
    faulthandler.enable()
    try:
        if args.device_env != "ok" and not os.environ.get("PULSE_SERVER"):
            raise RuntimeError("PULSE_SERVER is not set: run under the benchmark server's env "
                               "(or pass --device-env ok to use this machine's default devices)")
        speech = load_speech(args.speech, args.chunk_ms)
        asyncio.run(serve(speech, args.session_timeout, args.serialize_stop))
    except Exception as exc:  # noqa: BLE001 - every failure ends in one error line
        fail(f"{type(exc).__name__}: {exc}")
    # PyAudio's and the transport's executor threads may still be blocked in a
    # write to a stream that is gone; do not wait for them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
