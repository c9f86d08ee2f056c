"""The one procedure every system is measured by (``bench.systems.System``).

Per call, for every system alike:

0. One call per system heard whole, not counted (``hear_greeting``): a warm-up,
   and the moments where the greeting pauses by itself.
1. Wait until the observer has heard at least ``QUIET_S`` (0.5 s) of silence,
   so no call overlaps the next.
2. Ask for a call; the observer's first sound after the request is the call
   start figure.
3. At a fixed offset after that first sound (the same offsets, in the same
   order, for every system), wait (at most ``SPEECH_WAIT_S``) until the
   observer hears the agent speaking, then hang up (or make the agent be
   interrupted).
4. From the recording: the last sound before the first 0.4 s gap
   (``testing.measure.ending``), the click figure, and whether the agent
   was speaking in the 10 ms before the hangup. An event that fell into a
   pause is redone, never counted: no speech in the 10 ms before it, no sound
   at all after it (silence 0 ms: the voice had stopped already, where the
   warm-up heard no pause or heard it a little earlier), or the greeting
   pausing by itself (``PAUSE_S`` or more) from 10 ms before it to
   ``NATURAL_END_S`` after it, where the voice stops with no system acting.

Every figure is in milliseconds unless its name says otherwise.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.systems import HangupStamps, System
from testing.measure import (
    BEFORE_S,
    GAP_S,
    SOUND_DBFS,
    Ending,
    ObserverRecording,
    amplitude,
    ending,
    speaking_at,
    wait_quiet,
)
from testing.stalls import MachineStalls

CLICK_BOUND_DB = -20.0
"""A hangup whose click figure is above this clicks (issue 13's bound); such hangups are
listed one by one (``Results.loud_hangups``)."""
QUIET_S = 0.5
"""Silence heard before each call starts, seconds."""
SPEECH_WAIT_S = 1.0
"""How long past its offset a hangup may wait for the agent to be heard speaking, seconds."""
MAX_REDOS = 5
"""Tries per offset before the offset is given up (and reported as such)."""
PAUSE_S = 0.02
"""The shortest pause of the greeting's own that counts (seconds under -60 dBFS): a system
that hangs up just before it finds nothing left to silence, and the recording's last sound
is the voice's own."""
NATURAL_END_S = 0.025
"""A hangup or barge-in this soon (seconds) before the greeting pauses by itself is redone:
the voice would stop there whatever the system did (sooner than callctl's 25 ms p99 bound),
and its own ending would be measured as the system's."""
REDO_SHIFT_S = 0.13
"""A redone event moves by this much each try, later then earlier, further each time
(+0.13, −0.13, +0.26, −0.26 s): the greeting is the same every call, so the same moment
would fall into the same pause again."""


def redo_shift(attempt: int) -> float:
    """Seconds the ``attempt``-th try (0 first) of an offset moves from it."""
    step = (attempt + 1) // 2
    return REDO_SHIFT_S * step * (1 if attempt % 2 else -1)


def offsets(n: int, lo: float, hi: float) -> list[float]:
    """``n`` moments in ``[lo, hi]`` seconds, spread evenly (golden-ratio sequence), the same
    for every system."""
    return [round(lo + (hi - lo) * ((0.5 + i * 0.6180339887) % 1.0), 3) for i in range(n)]


@dataclass
class Results:
    """Raw per-event figures of one system."""

    hangup_silence: list[float] = field(default_factory=list)
    hangup_click_db: list[float] = field(default_factory=list)
    hangup_crashed: list[bool] = field(default_factory=list)
    """Per counted hangup, in the order of ``hangup_silence``: the process died of it."""
    loud_hangups: list[dict[str, Any]] = field(default_factory=list)
    """Each counted hangup whose click figure was above ``CLICK_BOUND_DB``: its figures,
    and the system's own account of its fade where it gives one (callctl's
    ``device_fade``), so that a reader can tell a late write from a fade that ended loud."""
    hangup_machine_stalls: list[str | None] = field(default_factory=list)
    """Per counted hangup, in the order of ``hangup_silence``: the machine's stalls of
    ``testing.stalls.MACHINE_STALL_S`` or more from 0.1 s before the hangup to 0.3 s after
    it (``MachineStalls.during``), or None. Reported for every system alike, to read the
    slow and loud hangups by; never a reason to drop one."""
    late_device_fades: int = 0
    """Counted hangups whose fade the system itself said may have landed late (callctl's
    ``fade["late"]``, ``PulseDevice._applied_after``)."""
    tail_step_ratio: list[float] = field(default_factory=list)
    agent_done: list[float] = field(default_factory=list)
    agent_killed: int = 0
    crashed_on_hangup: int = 0
    hangups_sent: int = 0
    """Hangups (of all calls, barge-in calls too) that killed the system's own process."""
    start: list[float] = field(default_factory=list)
    bargein_silence: list[float] = field(default_factory=list)
    bargein_click_db: list[float] = field(default_factory=list)
    redone_in_pause: int = 0
    """Events redone: no speech in the 10 ms before them, or the greeting's own pause."""
    greeting_pauses_s: list[float] = field(default_factory=list)
    """Where the greeting paused by itself, seconds after its first sound (``hear_greeting``)."""
    given_up: int = 0
    cpu_percent: float | None = None
    cpu_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_sound(system: System, asked: float, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        system.observer.wait_until(time.monotonic() - 0.01, timeout=1)
        first = system.observer.first_sound_after(asked)
        if first is not None:
            return first
        time.sleep(0.005)
    raise RuntimeError(f"{system.label}: the agent's greeting never reached the device")


def _wait_speaking(system: System, rec: ObserverRecording, at: float) -> None:
    """Sleep until ``at``, then until the observer's latest 10 ms hold speech (bounded)."""
    time.sleep(max(0.0, at - time.monotonic()))
    give_up = time.monotonic() + SPEECH_WAIT_S
    while time.monotonic() < give_up:
        until = rec.recorded_until()
        if until is not None and speaking_at(rec, until):
            return
        time.sleep(0.002)


def _hang_up(system: System, out: Results) -> HangupStamps:
    stamps = system.hangup()
    out.hangups_sent += 1
    out.crashed_on_hangup += int(stamps.crashed)
    return stamps


def _quiet(system: System, rec: ObserverRecording) -> None:
    if not wait_quiet(rec, QUIET_S, timeout=30):
        raise RuntimeError(f"{system.label}: the speaker never went quiet between calls")


def hear_greeting(system: System, seconds: float) -> list[float]:
    """One call, not counted, heard for ``seconds`` after its first sound: a warm-up (every
    system's first call pays for things a user pays once: connections, caches, the first
    stream), and where the greeting pauses by itself. Returns the start of each pause of
    ``PAUSE_S`` or more (its last sound before the gap), seconds after the first sound."""
    rec = ObserverRecording(system.observer)
    _quiet(system, rec)
    asked = system.start_call()
    first = _first_sound(system, asked)
    until = first + seconds + GAP_S
    time.sleep(max(0.0, until + 0.05 - time.monotonic()))
    system.hangup()
    samples, times = rec.window(first, until)
    loud = times[np.abs(samples.astype(np.int32)) > amplitude(SOUND_DBFS)]
    if loud.size < 2:
        return []
    gaps = np.flatnonzero(np.diff(loud) >= PAUSE_S)
    return [round(float(loud[i]) - first, 4) for i in gaps]


def pauses_by_itself(pauses: list[float], at: float) -> bool:
    """Whether the greeting pauses by itself from 10 ms before ``at`` (seconds after the
    first sound) to ``NATURAL_END_S`` after it."""
    return any(-BEFORE_S <= p - at <= NATURAL_END_S for p in pauses)


def fell_into_pause(end: Ending, pauses: list[float], at: float) -> bool:
    """Whether an event ``at`` s after the first sound, which ended as ``end``, fell into a
    pause of the voice (step 4 of the procedure) and is redone."""
    return not end.speaking or end.silence_ms == 0 or pauses_by_itself(pauses, at)


def hangups(system: System, moments: list[float], out: Results,
            machine: MachineStalls | None = None) -> None:
    """One call per moment: hang up that long after the first sound heard. The first call,
    heard whole and not counted, finds the greeting's own pauses (``hear_greeting``).
    With ``machine``, each counted hangup notes the machine's stalls around it."""
    rec = ObserverRecording(system.observer)
    out.greeting_pauses_s = hear_greeting(system, max(moments) + 1.0)
    for offset in moments:
        for attempt in range(MAX_REDOS):
            _quiet(system, rec)
            asked = system.start_call()
            first = _first_sound(system, asked)
            _wait_speaking(system, rec, first + offset + redo_shift(attempt))
            stamps = _hang_up(system, out)
            end = ending(rec, stamps.sent)
            if fell_into_pause(end, out.greeting_pauses_s, stamps.sent - first):
                out.redone_in_pause += 1
                continue
            out.start.append(round((first - asked) * 1000, 2))
            assert end.silence_ms is not None
            out.hangup_silence.append(end.silence_ms)
            out.hangup_crashed.append(stamps.crashed)
            stalled = (machine.during(stamps.sent - 0.1, stamps.sent + 0.3)
                       if machine is not None else None)
            out.hangup_machine_stalls.append(stalled)
            if end.click_db is not None:
                out.hangup_click_db.append(round(end.click_db, 2))
                if end.click_db > CLICK_BOUND_DB:
                    out.loud_hangups.append({
                        "click_db": round(end.click_db, 2), "silence_ms": end.silence_ms,
                        "tail_step": end.tail_step, "before_step": end.before_step,
                        "device_fade": stamps.device_fade, "machine_stalls": stalled})
            out.late_device_fades += int(bool((stamps.device_fade or {}).get("late")))
            if end.before_step:
                out.tail_step_ratio.append(round(end.tail_step / end.before_step, 3))
            if stamps.agent_done_ms is not None:
                out.agent_done.append(stamps.agent_done_ms)
            out.agent_killed += int(stamps.killed)
            break
        else:
            out.given_up += 1


def bargeins(system: System, moments: list[float], out: Results) -> None:
    """One call per moment: the agent is interrupted that long after the first sound heard.
    Run after ``hangups``, whose greeting pauses (``out.greeting_pauses_s``) it uses."""
    rec = ObserverRecording(system.observer)
    for offset in moments:
        for attempt in range(MAX_REDOS):
            _quiet(system, rec)
            asked = system.start_call()
            first = _first_sound(system, asked)
            t_int = system.interrupt(first + offset + redo_shift(attempt))
            end = ending(rec, t_int)
            _hang_up(system, out)
            if fell_into_pause(end, out.greeting_pauses_s, t_int - first):
                out.redone_in_pause += 1
                continue
            assert end.silence_ms is not None
            out.bargein_silence.append(end.silence_ms)
            if end.click_db is not None:
                out.bargein_click_db.append(round(end.click_db, 2))
            break
        else:
            out.given_up += 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, seconds (/proc/PID/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_during_call(system: System, seconds: float, out: Results) -> None:
    """The audio process's CPU over ``seconds`` of one call, from its first sound, % of a core."""
    rec = ObserverRecording(system.observer)
    _quiet(system, rec)
    asked = system.start_call()
    _first_sound(system, asked)
    pid = system.audio_pid()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    _hang_up(system, out)
    out.cpu_percent = round((cpu1 - cpu0) / (t1 - t0) * 100, 2)
    out.cpu_seconds = round(t1 - t0, 1)


def frozen_service(system: System, calls: int) -> list[float | None]:
    """Hang up 1 s into the greeting while the service is frozen (``--fault stall`` from
    0.5 s): ``sent`` → the agent side finished, None when it did not within the system's
    bound. No speech check: a frozen service sends no audio."""
    done: list[float | None] = []
    rec = ObserverRecording(system.observer)
    for _ in range(calls):
        _quiet(system, rec)
        asked = system.start_call()
        first = _first_sound(system, asked)
        time.sleep(max(0.0, first + 1.0 - time.monotonic()))
        done.append(system.hangup().agent_done_ms)
    return done
