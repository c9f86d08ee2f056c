"""What a call's audio costs at the least on this machine, part by part, % of one core.

``python -m bench.audio_floor [--seconds S]`` measures, each alone, the parts the
audio process's device thread is made of (``bench.audio_threads`` measures the
whole process, thread by thread, during a real call):

* ``wake``: a Python thread woken 100 times a second by a timed wait (the device
  thread's one wake-up a period), and the same in C (``nanosleep``, compiled here
  with the system's ``cc``): what the machine charges for a timer wake-up at all;
* ``device_loop``: the native PulseAudio backend (``PulseDevice``) on a private
  PulseAudio server (``testing.pulse``), with a handler that only writes silence,
  at 10 ms and 20 ms periods: the libpulse protocol and the loop without the call's
  work (rings, echo canceller, recorder);
* ``echo_canceller``: ``engine.echo.EchoCanceller`` on 10 ms frames, with and without
  noise suppression, as thread CPU per frame and as % of a core at 100 frames a second.

Every figure is thread CPU time (``/proc`` or ``time.thread_time``), not wall time, so
another process's load changes it little. Prints one line per part.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.audio_threads import thread_cpu_seconds

WAKES = 500
"""Wake-ups measured per timed-wait figure (5 s at 100 a second)."""

C_WAKE = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec a, b, d = {0, 10000000};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (int i = 0; i < %d; i++) nanosleep(&d, 0);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    printf("%%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / %d / 1e3);
    return 0;
}
"""


def python_wake_us() -> float:
    """Thread CPU per wake-up of a Python thread in a 10 ms timed lock wait, µs."""
    lock = threading.Lock()
    lock.acquire()
    result: list[float] = []

    def run() -> None:
        t0, due = time.thread_time(), time.monotonic()
        for _ in range(WAKES):
            due += 0.01
            lock.acquire(True, max(0.0, due - time.monotonic()))
        result.append((time.thread_time() - t0) / WAKES * 1e6)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(WAKES * 0.01 + 10)
    return result[0]


def c_wake_us() -> float | None:
    """The same for a C thread in ``nanosleep`` (None without a C compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp, "wake.c"), Path(tmp, "wake")
        source.write_text(C_WAKE % (WAKES, WAKES))
        subprocess.run([cc, "-O2", "-o", str(binary), str(source)], check=True, timeout=60)
        out = subprocess.run([str(binary)], capture_output=True, text=True, check=True,
                             timeout=WAKES * 0.01 + 30)
    return float(out.stdout)


def device_loop_percent(period_s: float, seconds: float) -> float:
    """The native backend's audio thread with a silence-only handler, % of a core."""
    from callctl.engine.devices.pulse import PulseDevice

    device = PulseDevice(period_seconds=period_s,
                         queue_seconds=max(0.02, period_s + 0.01))

    def silence(mic: np.ndarray, out: np.ndarray, status: int) -> None:
        out[:] = 0

    device.set_handler(silence)
    device.start()
    try:
        time.sleep(1.0)
        pid = os.getpid()
        tid = next(t for t, (name, _) in thread_cpu_seconds(pid).items()
                   if name == "pulse-device")
        before, t0 = thread_cpu_seconds(pid)[tid][1], time.monotonic()
        time.sleep(seconds)
        used = thread_cpu_seconds(pid)[tid][1] - before
        return 100 * used / (time.monotonic() - t0)
    finally:
        device.stop()
        device.close()


def echo_us_per_frame(noise_suppression: bool, frames: int = 3000) -> float:
    """Thread CPU of one ``EchoCanceller.process`` on a 10 ms frame of noise, µs."""
    from callctl.engine.echo import EchoCanceller

    canceller = EchoCanceller(noise_suppression=noise_suppression)
    rng = np.random.default_rng(0)
    mic = (rng.standard_normal(160) * 3000).astype(np.int16)
    ref = (rng.standard_normal(160) * 3000).astype(np.int16)
    for _ in range(200):  # past the canceller's start-up
        canceller.process(mic.copy(), ref.copy())
    t0 = time.thread_time()
    for _ in range(frames):
        canceller.process(mic.copy(), ref.copy())
    return (time.thread_time() - t0) / frames * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audio_floor",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long each device loop is measured, s (default 10)")
    args = parser.parse_args(argv)
    py, c = python_wake_us(), c_wake_us()
    print(f"wake, Python timed wait:  {py:6.1f} µs each, {py / 100:5.2f} % at 100 a second")
    if c is not None:
        print(f"wake, C nanosleep:        {c:6.1f} µs each, {c / 100:5.2f} % at 100 a second")
    from testing.pulse import PulseServer

    server = PulseServer().start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)  # libpulse reads them at connect: this process only
    try:
        for period in (0.010, 0.020):
            percent = device_loop_percent(period, args.seconds)
            print(f"device loop, silence only, {period * 1000:.0f} ms period: {percent:5.2f} %")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
    for ns in (True, False):
        us = echo_us_per_frame(ns)
        print(f"echo canceller, noise suppression {'on ' if ns else 'off'}: {us:6.1f} µs a "
              f"frame, {us / 100:5.2f} % at 100 frames a second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
