"""A private PipeWire server with its PulseAudio-protocol server, for tests.

``PipeWireServer`` offers what the tests use of ``testing.pulse.PulseServer``
(the private PulseAudio daemon) on PipeWire instead: the same two null sinks,
``callctl_speaker`` (default sink) and ``callctl_mic`` (its monitor is the
default source), 16 kHz mono, reached through PipeWire's pulse server on a
private socket. ``testing.observer.PlaybackObserver`` records the speaker's
monitor on it as on PulseAudio (pass the server, or ``source=server.monitor,
env=server.env``).

Debian packages (bookworm, PipeWire 0.3.65, WirePlumber 0.4.13), installed
with ``--no-install-recommends``: ``pipewire`` (with ``pipewire-bin``),
``pipewire-pulse``, ``wireplumber``; ``pactl`` / ``parec`` / ``pacat`` come
from ``pulseaudio-utils``. Nothing else is needed: no D-Bus, no systemd user
session, no sound card, no ``pipewire-alsa`` (so ALSA's ``default`` stays
untouched). Installing them starts nothing: their systemd *user* units only
run in a user session.

Three processes, all children of the spawning thread, in one temporary
directory (``tmpdir``), with their own config (``PIPEWIRE_CONFIG_DIR``:
nothing from ``/etc/pipewire`` or ``/usr/share/pipewire`` is read) and their
own ``XDG_RUNTIME_DIR``, ``HOME``, ``XDG_CONFIG_HOME`` and ``XDG_STATE_HOME``:

``pipewire -c pipewire.conf``
    The graph: 16000 Hz only (``default.clock.allowed-rates``), so nothing is
    resampled; the two null sinks are ``support.null-audio-sink`` adapter
    nodes declared in ``context.objects`` (``object.linger``), each able to
    drive the graph on its own timer. No ALSA, no D-Bus (``support.dbus =
    false``). The quantum (the graph's period) is what the clients ask for,
    between ``min_quantum`` and ``max_quantum`` frames: the observer's
    ``parec --latency-msec=5`` asks for 80, so with it attached the graph
    runs in 5 ms cycles, as the ``PulseServer`` null sinks render 5 ms blocks
    under their keepers.
``wireplumber``
    The session manager: PipeWire itself links nothing, so without it a pulse
    client's stream never reaches a sink. Its own config
    (``WIREPLUMBER_CONFIG_DIR``) loads only the default access policy, the
    default-node selection (not persisted) and the node linking policy: no
    ALSA, V4L2, libcamera or Bluetooth monitor, no suspend-on-idle, no D-Bus.
``pipewire -c pipewire-pulse.conf``
    The PulseAudio-protocol server (``libpipewire-module-protocol-pulse``) on
    ``<tmp>/runtime/pulse/native``. ``pulse.min.req`` / ``pulse.min.frag`` /
    ``pulse.min.quantum`` are 80/16000 (5 ms; PipeWire's default is 256/48000,
    5.3 ms).

PipeWire's null sinks run in float32 (``pactl list sinks`` says
``float32le 1ch 16000Hz``); int16 streams are converted to float and back,
which is exact for int16 samples. As root, ``libpipewire-module-rt`` gives
the data thread of ``pipewire`` and of the pulse server ``SCHED_FIFO`` 88
(their main threads nice -11); WirePlumber logs ``acquire_rt ... not
implemented`` (it loads no rt module), harmless.

Units: rates in Hz (mono: a frame is a sample), times in seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import IO

from testing.processes import child_argv
from testing.pulse_protocol import PACTL_TIMEOUT, PulseProtocolServer, PulseServerError

__all__ = ["PACKAGES", "PipeWireError", "PipeWireServer"]

PACKAGES = ("pipewire", "pipewire-pulse", "wireplumber", "pulseaudio-utils")
"""The Debian packages this rig needs (``apt-get install --no-install-recommends``)."""

_counter = itertools.count(1)

# The functions WirePlumber's stock ``00-functions.lua`` defines, which the
# component file below uses (each config/lua component has its own ``.d`` dir).
_WP_FUNCTIONS = """\
components = {}
function load_module(m, a)
  if not components[m] then
    components[m] = { "libwireplumber-module-" .. m, type = "module", args = a }
  end
end
function load_script(s, a)
  if not components[s] then
    components[s] = { s, type = "script/lua", args = a }
  end
end
"""

_WP_POLICY = """\
load_module("metadata")
load_script("access/access-default.lua", { rules = {} })
load_module("default-nodes", { ["use-persistent-storage"] = false,
                               ["auto-echo-cancel"] = false })
load_module("si-node")
load_module("si-audio-adapter")
load_module("si-standard-link")
load_module("si-audio-endpoint")
load_module("default-nodes-api")
local policy = { ["move"] = true, ["follow"] = true, ["filter.forward-format"] = false,
                 ["audio.no-dsp"] = false, ["duck.level"] = 0.3 }
load_script("create-item.lua", policy)
load_script("policy-node.lua", policy)
"""


class PipeWireError(PulseServerError):
    """The private PipeWire server could not be started or queried."""


class PipeWireServer(PulseProtocolServer):
    """PipeWire, WirePlumber and PipeWire's pulse server, private, with two null sinks.

    Use as a context manager (or ``start()`` / ``stop()``)::

        with PipeWireServer() as server, PlaybackObserver(server) as observer:
            subprocess.run([...], env=server.child_env(), timeout=30)

    A server is single use: ``start()`` once, ``stop()``. ``pactl``, ``play``,
    ``feed_mic`` and ``child_env`` are ``testing.pulse_protocol.PulseProtocolServer``'s.

    Attributes:
        name: unique name (the temp directory's prefix).
        rate: the graph's only sample rate, Hz.
        sink / monitor: the speaker null sink and the source recording it.
        mic_sink / source: the microphone null sink and its monitor, the
            default source.
        env: environment variables for child processes: ``PULSE_SERVER``
            (``unix:<tmp>/runtime/pulse/native``), ``PULSE_CLIENTCONFIG``
            (autospawn off), ``PULSE_COOKIE``, ``PULSE_RUNTIME_PATH``,
            ``PULSE_STATE_PATH``, ``PULSE_SINK`` / ``PULSE_SOURCE``,
            ``JACK_NO_START_SERVER=1``.
        pw_env: ``env`` plus what PipeWire's own tools (``pw-cli``,
            ``pw-dump``) need to reach this server.
        tmpdir: the private directory, removed by ``stop()``.
    """

    error = PipeWireError
    packages = ", ".join(PACKAGES)

    def __init__(
        self,
        *,
        rate: int = 16000,
        quantum: int = 320,
        min_quantum: int = 16,
        max_quantum: int = 640,
        name: str | None = None,
        start_timeout: float = 10.0,
        die_with_parent: bool = True,
    ) -> None:
        """Configure (not start) a server.

        Args:
            rate: sample rate of the graph and both null sinks, Hz.
            quantum: the graph's period in frames when no client asks for one.
            min_quantum / max_quantum: bounds on what clients may ask for, frames.
            name: unique name; default ``callctl-pw-<pid>-<n>``.
            start_timeout: bound on the whole startup, seconds.
            die_with_parent: have the kernel SIGKILL the daemons when the
                spawning thread dies (``setpriv --pdeathsig``).
        """
        if rate <= 0 or not 0 < min_quantum <= quantum <= max_quantum:
            raise ValueError(f"bad rate/quantum: {rate} {min_quantum} {quantum} {max_quantum}")
        super().__init__(rate, name or f"callctl-pw-{os.getpid()}-{next(_counter)}",
                         start_timeout, die_with_parent)
        self.quantum = int(quantum)
        self.min_quantum = int(min_quantum)
        self.max_quantum = int(max_quantum)
        self.pw_env: dict[str, str] = {}
        self._names: list[str] = []
        self._logs: list[IO[bytes]] = []

    # -- lifecycle ---------------------------------------------------------

    @property
    def alive(self) -> bool:
        """True while all three daemons run (they may still be starting)."""
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    @property
    def pids(self) -> dict[str, int]:
        """Process ids by role: ``pipewire``, ``wireplumber``, ``pipewire-pulse``."""
        return {name: proc.pid for name, proc in zip(self._names, self._procs, strict=False)}

    def start(self) -> PipeWireServer:
        """Start the three daemons; return self once the pulse server answers with our
        sinks and defaults. Bounded by ``start_timeout`` s; on failure everything is
        stopped and ``PipeWireError`` (with the daemons' logs) raised."""
        if self._procs:
            raise PipeWireError(f"server {self.name} already started")
        pipewire = self._which("pipewire")
        wireplumber = self._which("wireplumber")
        self._which("pactl")
        deadline = time.monotonic() + self.start_timeout

        def bring_up() -> None:
            assert self.tmpdir is not None
            self._write_config()
            self._spawn("pipewire", [pipewire, "-c", "pipewire.conf"])
            core_socket = self.tmpdir / "runtime" / "pipewire-0"
            self._wait_for(core_socket.exists,
                           "the PipeWire socket", deadline)
            self._spawn("wireplumber", [wireplumber])
            self._spawn("pipewire-pulse", [pipewire, "-c", "pipewire-pulse.conf"])
            # WirePlumber picks the default sink by priority.session (the speaker);
            # the default source is set through the pulse server, once WirePlumber's
            # default metadata exists, i.e. once the default sink shows.
            self._wait_for(lambda: self._defaults()[0] == self.sink,
                           "the default sink", deadline)
            # "Not supported" while WirePlumber has not yet published the monitor as a
            # node it may choose: asked again until it is taken.
            def source_taken() -> bool:
                try:
                    self.pactl("set-default-source", self.source)
                except PipeWireError:
                    return False
                return self._defaults() == (self.sink, self.source)

            self._wait_for(source_taken, "the default source", deadline)

        self._start_in_tmpdir(bring_up)
        return self

    def stop(self) -> None:
        """Stop the daemons (SIGTERM, then SIGKILL; pulse server first) and remove the
        temp dir. Idempotent; every wait is bounded."""
        self._stop_processes()
        for log in self._logs:
            log.close()
        self._logs.clear()

    # -- queries and helpers -------------------------------------------------

    def log(self) -> str:
        """The daemons' logs so far (warnings and errors), each under a heading."""
        if self.tmpdir is None:
            return ""
        parts = []
        for name in self._names:
            path = self.tmpdir / f"{name}.log"
            with contextlib.suppress(OSError):
                parts.append(f"--- {name}:\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def nodes(self, timeout: float = PACTL_TIMEOUT) -> list[dict[str, str | None]]:
        """The graph's nodes from ``pw-dump``: ``name``, ``media_class``, ``latency`` (the
        ``node.latency`` a client asked for, e.g. ``"80/16000"``; the graph runs at the
        smallest, within the quantum bounds) and ``state``. For diagnostics."""
        import json

        try:
            result = subprocess.run([self._which("pw-dump")], env={**os.environ, **self.pw_env},
                                    stdin=subprocess.DEVNULL, capture_output=True,
                                    timeout=timeout, check=True)
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
            raise PipeWireError(f"pw-dump failed: {exc}") from exc
        nodes = []
        for obj in json.loads(result.stdout):
            if obj.get("type") == "PipeWire:Interface:Node" and obj.get("info"):
                props = obj["info"].get("props", {})
                nodes.append({"name": props.get("node.name"),
                              "media_class": props.get("media.class"),
                              "latency": props.get("node.latency"),
                              "state": obj["info"].get("state")})
        return nodes

    # -- internals -------------------------------------------------------------

    def _defaults(self) -> tuple[str | None, str | None]:
        try:
            info = self.info(timeout=1.0)
        except PipeWireError:
            return None, None
        return info.get("Default Sink"), info.get("Default Source")

    def _wait_for(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        while not ready():
            for name, proc in zip(self._names, self._procs, strict=False):
                if proc.poll() is not None:
                    raise PipeWireError(
                        f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                        + self.log())
            if time.monotonic() > deadline:
                raise PipeWireError(
                    f"{what} not ready within {self.start_timeout} s:\n" + self.log())
            time.sleep(0.02)

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        assert self.tmpdir is not None
        tmp = self.tmpdir
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp / "home"),
            "XDG_RUNTIME_DIR": str(tmp / "runtime"),
            "PIPEWIRE_RUNTIME_DIR": str(tmp / "runtime"),
            "PIPEWIRE_CONFIG_DIR": str(tmp / "conf"),
            "WIREPLUMBER_CONFIG_DIR": str(tmp / "wireplumber"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "XDG_STATE_HOME": str(tmp / "state"),
            "LANG": "C",
        }
        log = open(tmp / f"{name}.log", "wb")  # closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen(
            child_argv(argv, self.die_with_parent), env=env, cwd=tmp,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self._procs.append(proc)
        self._names.append(name)

    def _write_config(self) -> None:
        assert self.tmpdir is not None
        tmp = self.tmpdir
        for sub in ("conf", "wireplumber/callctl.lua.d", "home", "config", "state"):
            (tmp / sub).mkdir(mode=0o700, parents=True)
        (tmp / "runtime" / "pulse").mkdir(mode=0o700, parents=True)
        self.socket_path = tmp / "runtime" / "pulse" / "native"
        if len(str(self.socket_path)) >= 100:
            raise PipeWireError(f"socket path too long for AF_UNIX: {self.socket_path}")
        rate = self.rate
        libs = ("context.spa-libs = {\n"
                "    audio.convert.* = audioconvert/libspa-audioconvert\n"
                "    support.* = support/libspa-support\n}\n")
        rt = ("    { name = libpipewire-module-rt args = { nice.level = -11 }"
              " flags = [ ifexists nofail ] }\n")

        def null_sink(name: str, description: str, priority: int) -> str:
            return (
                "    { factory = adapter args = {\n"
                f"        factory.name = support.null-audio-sink node.name = {name}\n"
                f"        node.description = {description} media.class = Audio/Sink\n"
                f"        audio.position = [ MONO ] audio.channels = 1 audio.rate = {rate}\n"
                "        monitor.channel-volumes = true object.linger = true\n"
                f"        priority.session = {priority} priority.driver = {priority} }} }}\n")

        (tmp / "conf" / "pipewire.conf").write_text(
            "context.properties = {\n"
            "    core.daemon = true\n    core.name = pipewire-0\n"
            "    support.dbus = false\n    log.level = 2\n"
            f"    default.clock.rate = {rate}\n"
            f"    default.clock.allowed-rates = [ {rate} ]\n"
            f"    default.clock.quantum = {self.quantum}\n"
            f"    default.clock.min-quantum = {self.min_quantum}\n"
            f"    default.clock.max-quantum = {self.max_quantum}\n}}\n"
            + libs
            + "context.modules = [\n" + rt
            + "".join(f"    {{ name = libpipewire-module-{m} }}\n" for m in (
                "protocol-native", "metadata", "spa-node-factory", "client-node",
                "client-device", "access", "adapter", "link-factory", "session-manager"))
            + "]\n"
            "context.objects = [\n"
            "    { factory = spa-node-factory args = { factory.name = support.node.driver\n"
            "        node.name = Dummy-Driver node.group = pipewire.dummy"
            " priority.driver = 20000 } }\n"
            "    { factory = spa-node-factory args = { factory.name = support.node.driver\n"
            "        node.name = Freewheel-Driver node.group = pipewire.freewheel\n"
            "        priority.driver = 19000 node.freewheel = true } }\n"
            + null_sink(self.sink, "callctl-speaker", 2000)
            + null_sink(self.mic_sink, "callctl-mic", 1000)
            + "]\n")
        min_5ms = f"{round(rate * 0.005)}/{rate}"
        (tmp / "conf" / "pipewire-pulse.conf").write_text(
            "context.properties = {\n    support.dbus = false\n    log.level = 2\n}\n"
            + libs
            + "context.modules = [\n" + rt
            + "".join(f"    {{ name = libpipewire-module-{m} }}\n" for m in (
                "protocol-native", "client-node", "adapter", "metadata"))
            + "    { name = libpipewire-module-protocol-pulse args = {\n"
            f"        pulse.min.req = {min_5ms} pulse.min.frag = {min_5ms}\n"
            f"        pulse.min.quantum = {min_5ms}\n"
            f'        server.address = [ "unix:{self.socket_path}" ] }} }}\n'
            "]\n")
        # For pw-cli / pw-dump (pw_env): a client config in the private config dir.
        (tmp / "conf" / "client.conf").write_text(
            "context.properties = { log.level = 0 }\n" + libs
            + "context.modules = [\n"
            + "".join(f"    {{ name = libpipewire-module-{m} }}\n" for m in (
                "protocol-native", "client-node", "client-device", "adapter", "metadata",
                "session-manager"))
            + "]\n")
        (tmp / "wireplumber" / "wireplumber.conf").write_text(
            "context.properties = {\n    log.level = 2\n"
            "    wireplumber.script-engine = lua-scripting\n    support.dbus = false\n}\n"
            + libs
            + "context.modules = [\n"
            + "".join(f"    {{ name = libpipewire-module-{m} }}\n" for m in (
                "protocol-native", "client-node", "client-device", "adapter", "metadata",
                "session-manager"))
            + "]\n"
            "wireplumber.components = [\n"
            "    { name = libwireplumber-module-lua-scripting, type = module }\n"
            "    { name = callctl.lua, type = config/lua }\n]\n")
        (tmp / "wireplumber" / "callctl.lua.d" / "50-callctl.lua").write_text(
            _WP_FUNCTIONS + _WP_POLICY)
        (tmp / "client.conf").write_text(
            f"autospawn = no\ndefault-server = unix:{self.socket_path}\nenable-shm = no\n")
        self.env = {
            "PULSE_SERVER": f"unix:{self.socket_path}",
            "PULSE_RUNTIME_PATH": str(tmp / "runtime" / "pulse"),
            "PULSE_STATE_PATH": str(tmp / "state"),
            "PULSE_CLIENTCONFIG": str(tmp / "client.conf"),
            "PULSE_COOKIE": str(tmp / "cookie"),
            "PULSE_SINK": self.sink,
            "PULSE_SOURCE": self.source,
            "JACK_NO_START_SERVER": "1",
        }
        self.pw_env = dict(self.env, PIPEWIRE_RUNTIME_DIR=str(tmp / "runtime"),
                           PIPEWIRE_CONFIG_DIR=str(tmp / "conf"))
