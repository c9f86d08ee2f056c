"""The one compiled part: the native PulseAudio backend's once-a-period loop in C
(``engine/devices/pulse_period.c``; why in its header). Everything else is in setup.cfg."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("callctl.engine.devices._pulse_period",
                             ["engine/devices/pulse_period.c"],
                             extra_compile_args=["-O2", "-Wall"])])
