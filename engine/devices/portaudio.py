"""The real device: one full-duplex PortAudio callback stream through PyAudio.

Blocking streams crash PortAudio 19.6 on JACK, so only callback streams are
used. The stream is opened once (the audio process stays warm across calls)
and started/stopped per call. ``stop`` uses ``Pa_StopStream``; by then the
callback has been writing silence, so what it drains is silence.

PortAudio's ALSA/JACK probing chatter on stderr is hidden unless ``verbose``.

ALSA's sound-server plugin devices (``pulse``, ``pipewire``, and ``default``
when a PulseAudio-protocol server answers) are refused: PortAudio 19.6 full
duplex through them spins a core and its stop throws the server's queue away
(README.md, "The sound device"); ``--device pulse`` is the way there.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from callctl.engine.bridge import PeriodHandler
from callctl.engine.devices import DeviceError
from callctl.engine.quiet import quiet_stderr
from callctl.engine.ring import SAMPLE_RATE

# Never let PortAudio's JACK backend try to launch a JACK server of its own.
os.environ.setdefault("JACK_NO_START_SERVER", "1")


PLUGIN_DEVICES = ("pulse", "pipewire")
"""ALSA plugin devices that route to a sound server: never opened full duplex."""


def plugin_refusal(name: str, server_up: bool | None = None) -> str | None:
    """The one-line refusal for PortAudio device ``name``, or None if it may be opened.

    ``default`` counts as a plugin when a PulseAudio-protocol server answers
    (``server_up``; probed when None), as ALSA then routes it to that server.
    """
    low = name.strip().lower()
    if low not in PLUGIN_DEVICES and low != "default":
        return None
    if low == "default":
        if server_up is None:
            from callctl.engine.devices.pulse import server_answers

            server_up = server_answers()
        if not server_up:
            return None
    return (f"PortAudio device {name!r} is ALSA's sound-server plugin (full duplex there "
            "spins a core and cuts the hangup's fade); use --device pulse")


def list_devices(verbose: bool = False) -> list[dict[str, Any]]:
    """Every PortAudio device: index, name, input/output channels, default rate,
    ``device`` (the ``--device`` value) and ``refused`` (why it cannot be opened, or None)."""
    import pyaudio

    with quiet_stderr(not verbose):
        pa = pyaudio.PyAudio()
    try:
        devices = []
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            devices.append({
                "backend": "portaudio",
                "device": f"portaudio:{i}",
                "index": i,
                "name": str(info["name"]),
                "inputs": int(info["maxInputChannels"]),
                "outputs": int(info["maxOutputChannels"]),
                "default_rate": float(info["defaultSampleRate"]),
            })
        server_up: bool | None = None
        for d in devices:
            name = str(d["name"])
            if name.lower() == "default" and server_up is None:
                from callctl.engine.devices.pulse import server_answers

                server_up = server_answers()
            d["refused"] = plugin_refusal(name, bool(server_up))
        return devices
    finally:
        pa.terminate()


class PortAudioDevice:
    """A full-duplex mono int16 callback stream (one stream, one callback).

    ``device``: an index, a (case-insensitive, substring) name, or None for
    the system defaults; ``input_device``/``output_device`` override one side.
    Opens at 16 kHz when the devices accept it, else at the output's default
    rate (``RateBridge`` resamples). Raises ``DeviceError`` for an ALSA
    sound-server plugin device (see the module docstring).
    """

    backend = "portaudio"
    cuts_at_device = False
    handler_may_wait = False

    def __init__(
        self,
        device: int | str | None = None,
        period_seconds: float = 0.010,
        verbose: bool = False,
        input_device: int | str | None = None,
        output_device: int | str | None = None,
    ) -> None:
        import pyaudio

        self._pyaudio = pyaudio
        with quiet_stderr(not verbose):
            self._pa = pyaudio.PyAudio()
        try:
            in_idx, in_name = self._resolve(input_device or device, "input")
            out_idx, out_name = self._resolve(output_device or device, "output")
            for side in dict.fromkeys((in_name, out_name)):
                refusal = plugin_refusal(side)
                if refusal:
                    raise DeviceError(refusal)
            self.name = out_name if in_name == out_name else f"{in_name} → {out_name}"
            self.rate = self._pick_rate(in_idx, out_idx)
            self.period_frames = max(16, round(period_seconds * self.rate))
            self._out = np.zeros(self.period_frames * 4, np.int16)
            self._handler: PeriodHandler | None = None
            with quiet_stderr(not verbose):
                self._stream = self._pa.open(
                    format=pyaudio.paInt16, channels=1, rate=self.rate,
                    input=True, output=True,
                    input_device_index=in_idx, output_device_index=out_idx,
                    frames_per_buffer=self.period_frames,
                    stream_callback=self._callback, start=False,
                )
            self.output_latency = float(self._stream.get_output_latency())
            self.input_latency = float(self._stream.get_input_latency())
        except OSError as exc:
            self._pa.terminate()
            which = device or input_device or output_device or "default"
            raise DeviceError(f"cannot open audio device {which!r}: {exc}") from None
        except DeviceError:
            self._pa.terminate()
            raise

    def _resolve(self, spec: int | str | None, direction: str) -> tuple[int | None, str]:
        """One side of the stream: (index or None for the default, name)."""
        pa = self._pa
        key = "maxInputChannels" if direction == "input" else "maxOutputChannels"
        count = pa.get_device_count()
        if count == 0:
            raise DeviceError("no audio devices found (is a sound server running?)")
        if spec is None:
            try:
                info = (pa.get_default_input_device_info() if direction == "input"
                        else pa.get_default_output_device_info())
            except OSError:
                raise DeviceError(f"no default audio {direction} device") from None
            return None, str(info["name"])
        if isinstance(spec, int) or spec.isdigit():
            idx = int(spec)
            if not 0 <= idx < count:
                raise DeviceError(f"no audio device with index {idx} (there are {count})")
            candidates = [idx]
        else:
            wanted = spec.lower()
            names = [str(pa.get_device_info_by_index(i)["name"]) for i in range(count)]
            exact = [i for i, n in enumerate(names) if n.lower() == wanted]
            candidates = exact or [i for i, n in enumerate(names) if wanted in n.lower()]
            if not candidates:
                raise DeviceError(f"no audio device named {spec!r}; see `callctl devices`")
        for idx in candidates:
            info = pa.get_device_info_by_index(idx)
            if int(info[key]) >= 1:
                return idx, str(info["name"])
        raise DeviceError(f"audio device {spec!r} has no {direction}")

    def _pick_rate(self, in_idx: int | None, out_idx: int | None) -> int:
        pa = self._pa
        fmt = self._pyaudio.paInt16
        try:
            pa.is_format_supported(SAMPLE_RATE, input_device=in_idx, input_channels=1,
                                   input_format=fmt, output_device=out_idx,
                                   output_channels=1, output_format=fmt)
            return SAMPLE_RATE
        except ValueError:
            idx = out_idx if out_idx is not None else pa.get_default_output_device_info()["index"]
            return int(pa.get_device_info_by_index(int(idx))["defaultSampleRate"])

    def _callback(self, in_data: bytes | None, frame_count: int, time_info: Any, status: int
                  ) -> tuple[bytes, int]:
        out = self._out[:frame_count]
        handler = self._handler
        if handler is None or in_data is None:
            out[:] = 0
        else:
            handler(np.frombuffer(in_data, np.int16), out, status)
        # Always a full buffer: a short one would count as paComplete.
        return out.tobytes(), self._pyaudio.paContinue

    @property
    def running(self) -> bool:
        return bool(self._stream.is_active())

    def set_handler(self, handler: PeriodHandler) -> None:
        self._handler = handler

    def start(self) -> None:
        if not self._stream.is_active():
            self._stream.start_stream()

    def stop(self) -> None:
        if not self._stream.is_stopped():
            self._stream.stop_stream()

    def fade_stop(self, timeout: float) -> float | None:
        """Not a cutting device: the callback fades; this only stops."""
        self.stop()
        return None

    def status(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._pa.terminate()
