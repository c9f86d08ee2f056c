"""Window tests: Qt offscreen, the window built exactly as `callctl gui` builds it.

``QT_QPA_PLATFORM=offscreen`` is set here, before anything imports Qt. Each
test gets its own config directory (the remembered agent) and, through the
``window`` factory, a window that spawns its own `callctl serve` on the
virtual device with a caller's voice in the microphone, recording into
``tmp_path``. Teardown stops that controller (bounded) and checks it is gone.
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ.pop("QT_SCALE_FACTOR", None)

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from testing.sounds import write_caller_wav  # noqa: E402


@pytest.fixture(autouse=True)
def private_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The window's remembered settings go to this test's own directory."""
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.delenv("CALLCTL_ENDPOINT", raising=False)
    return config


@pytest.fixture
def app(qapp: Any) -> Any:
    from callctl.gui.app import prepare_application

    prepare_application(qapp)
    return qapp


@pytest.fixture
def window(app: Any, qtbot: Any, tmp_path: Path,
           caller_speech: np.ndarray) -> Iterator[Callable[..., Any]]:
    """Factory ``window(*extra, speech_at=[...], virtual=True) -> Gui`` (``gui.app.Gui``)."""
    from callctl.gui.app import build

    built: list[Any] = []

    def make(*extra: str, speech_at: list[float] | None = None, virtual: bool = True,
             total: float = 30.0) -> Any:
        args = ["--endpoint", f"ipc://{tmp_path}/gui-{len(built)}",
                "--record-dir", str(tmp_path / "calls")]
        if virtual:
            mic = write_caller_wav(tmp_path / "mic.wav", caller_speech,
                                   speech_at if speech_at is not None else [1.0], total)
            args += ["--device", "virtual", "--mic", str(mic),
                     "--speaker", str(tmp_path / "speaker.wav")]
        gui = build([*args, *extra])
        built.append(gui)
        gui.window.show()
        return gui

    yield make
    for gui in built:
        gui.shutdown()
        process = gui.session.process
        assert process is None or not process.running, "the spawned controller outlived the window"
