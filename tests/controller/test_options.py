"""The controller's command line, parsed as ``callctl serve`` and ``callctl call`` parse it."""

from __future__ import annotations

import argparse

import pytest

from callctl.controller.options import add_controller_options, controller_config


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_controller_options(parser)
    return parser.parse_args(list(argv))


def test_the_audio_period_reaches_the_audio_process_and_bad_ones_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert controller_config(parse("--period-ms", "20")).audio_args() == ["--period-ms", "20"]
    assert "--period-ms" not in controller_config(parse()).audio_args()  # the backend's default
    for bad in ("2", "51", "fast"):
        with pytest.raises(SystemExit) as exit_:
            parse("--period-ms", bad)
        assert exit_.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--period-ms" in error and bad in error, error
