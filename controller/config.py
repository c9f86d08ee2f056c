"""What a controller is started with: ``ControllerConfig``, filled from the command line
(``controller.options``), the GUI or ``callctl.serve``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ControllerConfig:
    """Everything a controller needs to know, from the command line."""

    endpoint: str
    record_dir: Path
    device: str | None = None
    input_device: str | None = None
    output_device: str | None = None
    aec: bool = True
    period_ms: float | None = None
    """The audio period (``--period-ms``); None: the backend's default."""
    mic: str | None = None
    speaker: str | None = None
    echo: str | None = None
    agent: str = "local"
    base_url: str | None = None
    kill_after: float = 2.0
    agent_server_args: list[str] = field(default_factory=list)
    config_path: str | None = None
    verbose: bool = False
    clone_voice: str | None = None
    """Default voice-clone name for calls (``call`` may name one itself)."""
    curve_dir: Path | None = None
    """CurveZMQ keys (``controller.curve``) for the public sockets, or None."""
    standby: bool = True
    """Start the next call's agent process ahead of time (off only to measure a cold start)."""

    def audio_args(self) -> list[str]:
        args = []
        if self.device is not None:
            args += ["--device", self.device]
        if self.input_device is not None:
            args += ["--input-device", self.input_device]
        if self.output_device is not None:
            args += ["--output-device", self.output_device]
        if self.period_ms is not None:
            args += ["--period-ms", f"{self.period_ms:g}"]
        if not self.aec:
            args += ["--no-aec"]
        if self.mic:
            args += ["--mic", self.mic]
        if self.speaker:
            args += ["--speaker", self.speaker]
        if self.echo:
            args += ["--echo", self.echo]
        if self.verbose:
            args += ["--verbose"]
        return args
