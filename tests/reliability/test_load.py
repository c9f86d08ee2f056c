"""Load: a flood of `status` requests from another process during a call."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any

FLOOD = textwrap.dedent("""
    import json, sys, time, zmq
    endpoint, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    s = zmq.Context().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 100000)
    s.connect(endpoint)
    frame = json.dumps({"cmd": "status"}).encode()
    sent = got = 0
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            s.send_multipart([b"", frame]); sent += 1
        while s.poll(0):
            s.recv_multipart(); got += 1
        time.sleep(0.0005)
    deadline = time.monotonic() + 5
    while got < sent and time.monotonic() < deadline:
        if s.poll(100):
            s.recv_multipart(); got += 1
    print(json.dumps({"sent": sent, "answered": got, "seconds": time.monotonic() - start}))
""")


def test_status_flood_causes_no_xrun_and_does_not_delay_a_hangup(serve: Any) -> None:
    served = serve(speech_at=[30.0])
    assert served.request({"cmd": "call"})["ok"]
    before = served.wait_state("in_call")["audio"]["xruns"]
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, served.endpoint, "6000", "4"],
                             stdout=subprocess.PIPE, text=True)
    time.sleep(3.0)
    sent = time.monotonic()
    reply = served.request({"cmd": "hangup"}, timeout=2)
    replied_ms = (time.monotonic() - sent) * 1000
    out, _ = flood.communicate(timeout=30)
    figures = json.loads(out)
    print(f"flood: {figures}, hangup reply {replied_ms:.1f} ms")
    assert figures["sent"] / figures["seconds"] >= 5000, figures
    assert figures["answered"] == figures["sent"], "every status was answered"
    assert reply["ok"]
    assert replied_ms < 200, f"hangup reply took {replied_ms:.0f} ms under the flood"
    event = served.collect(5, until="call.ended")
    assert event is not None and event["timings"]["audio_silent_ms"] <= 20
    after = served.request({"cmd": "status"})["audio"]["xruns"]
    assert after["device"] == before["device"], (before, after)
