"""The state the native PulseAudio backend's C period loop shares with Python.

``engine/devices/pulse_period.c`` (the extension module ``_pulse_period``, built
with the package) runs a call's ordinary periods for ``PulseDevice``: the timed
wait, the mainloop's dispatch, the microphone's copy, the handler's call and
the write with its history. Its functions take the address of a
``PeriodState``, a C struct that Python owns as the ``ctypes.Structure`` below.
The two declarations must agree field by field: ``period_module`` checks them
against the module's own ``LAYOUT`` (``offsetof`` of every field) and ``SIZE``
before first use. ``StateField`` lets the device keep its own attribute names
(``_active``, ``_due``, ``late_max``...) for the fields both sides use.

Ownership: the device owns the structure and every buffer it points at (numpy
arrays that live as long as the device). Only the device's audio thread calls
the module's functions and touches the fields, except before that thread starts.
Units: frames (int16 samples, mono); seconds of ``time.monotonic()``.
"""

from __future__ import annotations

import ctypes
from types import ModuleType
from typing import Any

import numpy as np

from callctl.engine.devices import DeviceError

_vp, _i64, _i32, _f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_double


class PeriodState(ctypes.Structure):
    """``PeriodState`` of ``pulse_period.c``; the comments there say what each field is."""

    _fields_ = [
        ("iterate", _vp), ("peek", _vp), ("drop", _vp), ("write", _vp),
        ("mainloop", _vp), ("record", _vp), ("playback", _vp),
        ("capture", _vp), ("history", _vp),
        ("capture_frames", _i64), ("history_frames", _i64), ("period_frames", _i64),
        ("capture_fill", _i64), ("written", _i64),
        ("due", _f64), ("woke", _f64), ("wake_slack", _f64), ("wake_creep", _f64),
        ("period_s", _f64), ("last_ok", _f64), ("late_max", _f64), ("gap_max", _f64),
        ("session", _i64), ("deepen", _i64),
        ("kick_fd", _i32), ("overrun", _i32), ("active", _i32), ("need_prime", _i32),
        ("await_write", _i32), ("underflowed", _i32), ("status", _i32), ("pending", _i32),
        ("sounded", _i32),
    ]

    @classmethod
    def for_device(cls, fast_lib: Any, capture: np.ndarray, history: np.ndarray,
                   period_frames: int, rate: int, kick_fd: int, wake_slack: float,
                   wake_creep: float) -> PeriodState:
        """A state for one device: libpulse's entry points from ``fast_lib`` (its
        ctypes library), the device's buffers (int16, contiguous; ``history``'s length
        a power of two), the schedule's constants (seconds), no stream linked yet
        (``link``)."""
        if len(history) & (len(history) - 1):
            raise ValueError("the history's length must be a power of two")
        state = cls()
        for field, name in (("iterate", "pa_mainloop_iterate"), ("peek", "pa_stream_peek"),
                            ("drop", "pa_stream_drop"), ("write", "pa_stream_write")):
            setattr(state, field, ctypes.cast(getattr(fast_lib, name), _vp).value)
        state.capture, state.capture_frames = capture.ctypes.data, len(capture)
        state.history, state.history_frames = history.ctypes.data, len(history)
        state.period_frames = period_frames
        state.period_s = period_frames / rate
        state.kick_fd = kick_fd
        state.wake_slack, state.wake_creep = wake_slack, wake_creep
        state.due = -1.0
        return state

    def link(self, mainloop: int | None, record: int | None, playback: int | None) -> None:
        """The mainloop and the streams the functions use (None: none, after a close)."""
        self.mainloop, self.record, self.playback = mainloop, record, playback


class StateField:
    """A device attribute kept in its ``_state`` (a ``PeriodState``) field ``name``:
    ``bool`` or ``int`` or ``float`` as ``kind`` says; with ``none_below_zero``, a
    float field whose negative values read as None (and None writes -1)."""

    def __init__(self, name: str, kind: type = int, none_below_zero: bool = False) -> None:
        self.name, self.kind, self.none_below_zero = name, kind, none_below_zero

    def __get__(self, device: Any, owner: type | None = None) -> Any:
        if device is None:
            return self
        value = getattr(device._state, self.name)
        if self.none_below_zero and value < 0:
            return None
        return self.kind(value)

    def __set__(self, device: Any, value: Any) -> None:
        setattr(device._state, self.name, -1.0 if value is None else value)


_module: ModuleType | None = None


def period_module() -> ModuleType:
    """The C module, checked against ``PeriodState``; DeviceError when it is not built
    or does not match (a stale build)."""
    global _module
    if _module is not None:
        return _module
    try:
        from callctl.engine.devices import _pulse_period as module
    except ImportError as exc:
        raise DeviceError(f"the native PulseAudio backend is not built ({exc}); "
                          "reinstall callctl (make setup, or pip install -e .)") from None
    ours = {name: getattr(PeriodState, name).offset for name, *_ in PeriodState._fields_}
    if module.LAYOUT != ours or module.SIZE != ctypes.sizeof(PeriodState):
        raise DeviceError("the native PulseAudio backend's build is stale (its PeriodState "
                          "differs); reinstall callctl (make setup, or pip install -e .)")
    _module = module
    return module
