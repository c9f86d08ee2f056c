"""The compiled parts, each a small C file whose header says why: the native PulseAudio
backend's once-a-period loop (``engine/devices/pulse_period.c``) and the echo
canceller's frames (``engine/echo_batch.c``). Everything else is in setup.cfg."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("callctl.engine.devices._pulse_period",
                             ["engine/devices/pulse_period.c"],
                             extra_compile_args=["-O2", "-Wall"]),
                   Extension("callctl.engine._echo_batch", ["engine/echo_batch.c"],
                             extra_compile_args=["-O2", "-Wall"])])
