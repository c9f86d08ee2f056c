"""The state the C period loop shares with Python (``engine.devices.pulse_state``).

The loop itself runs against a real PulseAudio server in ``test_device_pulse.py``;
here, the parts that can fail on their own: the two declarations of ``PeriodState``
agreeing, a stale build being refused, and the device attributes kept in the state.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from callctl.engine.devices import DeviceError, pulse_state
from callctl.engine.devices.pulse import _fast_lib
from callctl.engine.devices.pulse_state import PeriodState, StateField, period_module


def test_the_c_module_and_the_ctypes_mirror_agree() -> None:
    module = period_module()
    assert module.SIZE == ctypes.sizeof(PeriodState)
    assert set(module.LAYOUT) == {name for name, *_ in PeriodState._fields_}


def test_a_stale_build_is_refused_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    module = period_module()
    monkeypatch.setattr(pulse_state, "_module", None)
    monkeypatch.setattr(module, "LAYOUT", {**module.LAYOUT, "due": 0})
    with pytest.raises(DeviceError, match="stale.*make setup"):
        period_module()


def test_the_state_points_at_the_device_buffers() -> None:
    capture = np.zeros(1000, np.int16)
    history = np.zeros(1 << 10, np.int16)
    state = PeriodState.for_device(_fast_lib(), capture, history, 160, 16000, 7, 0.0005,
                                   0.00005)
    assert (state.capture, state.capture_frames) == (capture.ctypes.data, 1000)
    assert (state.history, state.history_frames) == (history.ctypes.data, 1 << 10)
    assert state.period_s == pytest.approx(0.01)
    assert state.iterate and state.peek and state.drop and state.write
    assert state.due < 0 and state.kick_fd == 7
    with pytest.raises(ValueError, match="power of two"):
        PeriodState.for_device(_fast_lib(), capture, np.zeros(1000, np.int16), 160, 16000, 7,
                               0.0005, 0.00005)


class _Holder:
    due = StateField("due", float, none_below_zero=True)
    active = StateField("active", bool)
    written = StateField("written")

    def __init__(self) -> None:
        self._state = PeriodState()


def test_state_fields_read_and_write_the_struct() -> None:
    holder = _Holder()
    holder.due = None
    assert holder.due is None and holder._state.due == -1.0
    holder.due = 12.5
    assert holder.due == 12.5 and holder._state.due == 12.5
    holder.active = True
    assert holder.active is True and holder._state.active == 1
    holder.written += 160
    assert holder.written == 160 and holder._state.written == 160
