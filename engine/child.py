"""One way to run a child process: spawn it, watch it, stop it, restart it.

Every child callctl starts (the audio process, the agent processes, the local
agent server, the post-call process, the window's ``serve`` process) goes
through here, so each gets the same guarantees:

``spawn``
    The child gets SIGTERM when the spawning *thread* dies (``PR_SET_PDEATHSIG``,
    set fork-safely by ``setpriv``; see ``spawn``), a pidfd to wait on or poll
    without racing a reused pid, and exactly the environment it is given.
``Child.stop``
    Ask (a ``shutdown`` request, say), wait; SIGTERM, wait; SIGKILL, wait:
    each step bounded, so the whole is bounded; reaped; returns which step
    ended it and how long it took (as circus's ``Watcher.kill_process``:
    the graceful signal, then SIGKILL after a timeout).
``Restarter``
    Keeps one child running: notices its death, starts another at most
    ``limit`` times in ``window_s`` seconds (as jupyter_client's
    ``KernelRestarter.restart_limit``), and checks readiness by a
    non-blocking test each turn of the owner's loop, never by waiting.

The child's own side (``die_with_parent``) is in ``engine.lifeline``.
Threads: a ``Child`` and a ``Restarter`` belong to the thread that spawned
them (the parent-death signal is tied to it); none of this is thread-safe.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import IO, Any, Generic, TypeVar

from callctl.engine.lifeline import PARENT_PID_ENV

KILL_WAIT_S = 5.0
"""How long ``stop`` waits for the kernel to reap after SIGKILL (a process in an
uninterruptible sleep dies only when it wakes)."""

Stdio = IO[Any] | int | None


@dataclass(frozen=True)
class Stopped:
    """What ``Child.stop`` took."""

    returncode: int | None
    """The exit status (negative: killed by that signal); None if the child was still
    not reaped after SIGKILL's wait."""
    step: str
    """Which step ended it: ``exited`` (it was gone already), ``asked``, ``terminated``
    (SIGTERM), ``killed`` (SIGKILL), or ``unreaped``."""
    seconds: float
    """Wall time ``stop`` spent, in seconds."""


class Child:
    """One spawned child process (see ``spawn``): its ``Popen``, its pidfd, bounded stops.

    ``pidfd`` is readable once the child has exited: put it in a poller or a
    ``QSocketNotifier`` to be woken by the exit. It stays open until ``close``
    (``stop`` closes it), so a watcher never holds a number reused for another file.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.spawned_at = time.monotonic()
        """``time.monotonic()`` at the spawn."""
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):  # not Linux ≥ 5.3: waits fall back to polling
            pass

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (by ``poll``, ``wait`` or ``stop``), else None."""
        return self.popen.returncode

    def poll(self) -> int | None:
        """The exit status if the child has exited (it is reaped then), else None. Never waits."""
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Wait at most ``timeout`` seconds for the exit; the status (reaped), or None."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            code = self.popen.poll()
            if code is not None:
                return code
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.pidfd is not None:
                select.select([self.pidfd], [], [], left)  # wakes at the exit, no pid race
            else:
                time.sleep(min(0.01, left))

    def send_signal(self, sig: int) -> bool:
        """Send ``sig`` (through the pidfd: never to a process that reused the pid).
        False if the child is gone already."""
        if self.popen.returncode is not None:
            return False
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.popen.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> bool:
        """SIGKILL now; waits for nothing. False if the child is gone already."""
        return self.send_signal(signal.SIGKILL)

    def stop(self, ask: Callable[[], object] | None = None, grace: float = 3.0, *,
             term_grace: float | None = None, kill_wait: float = KILL_WAIT_S) -> Stopped:
        """End the child, each step bounded; reaped; the pidfd closed.

        1. ``ask()`` (when given: a ``shutdown`` request, say; it must bound its
           own wait, and an exception from it counts as no answer), then wait
           up to ``grace`` s;
        2. SIGTERM, wait up to ``term_grace`` s (default ``grace``);
        3. SIGKILL, wait up to ``kill_wait`` s.

        At most the ask's own time + ``grace`` + ``term_grace`` + ``kill_wait``.
        Calling it again on a stopped child returns at once.
        """
        began = time.monotonic()

        def done(step: str) -> Stopped:
            self.close()
            return Stopped(self.popen.returncode, step, time.monotonic() - began)

        if self.popen.poll() is not None:
            return done("exited")
        if ask is not None:
            try:
                ask()
            except Exception:  # noqa: BLE001 - a child that cannot be asked gets SIGTERM
                pass
            if self.wait(grace) is not None:
                return done("asked")
        self.send_signal(signal.SIGTERM)
        if self.wait(grace if term_grace is None else term_grace) is not None:
            return done("terminated")
        self.kill()
        if self.wait(kill_wait) is not None:
            return done("killed")
        return done("unreaped")

    def close(self) -> None:
        """Release the pidfd (the owner stops watching it first). Idempotent."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def spawn(argv: list[str], *, env: Mapping[str, str], stdin: Stdio = subprocess.DEVNULL,
          stdout: Stdio = None, stderr: Stdio = None, pass_fds: Collection[int] = (),
          start_new_session: bool = False) -> Child:
    """Start ``argv`` as a child that gets SIGTERM when the spawning thread dies, fork-safely.

    ``env`` is the child's whole environment (plus ``PARENT_PID_ENV``): pass
    ``dict(os.environ)`` to inherit, ``credentials.without_secrets(...)`` to
    keep the API key out. ``stdin`` defaults to ``/dev/null``; ``stdout`` and
    ``stderr`` to ours. Only ``pass_fds`` are inherited (``close_fds``).

    ``preexec_fn`` runs Python between fork and exec, which can deadlock a
    process with threads (libzmq's, the ZAP authenticator's): a lock another
    thread held at the fork stays held in the child forever. Instead the
    parent-death signal is set by ``setpriv --pdeathsig TERM`` (util-linux),
    which execs the child with it; Python children also check, first thing,
    that their parent is still the one in ``PARENT_PID_ENV``
    (``lifeline.die_with_parent``), which closes the window before the signal
    was set. ``start_new_session`` and ``close_fds`` are Popen's own (done in C).
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    full = [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)
    child_env = dict(env)
    child_env[PARENT_PID_ENV] = str(os.getpid())
    popen = subprocess.Popen(full, env=child_env, stdin=stdin, stdout=stdout, stderr=stderr,
                             pass_fds=tuple(pass_fds), close_fds=True,
                             start_new_session=start_new_session)
    return Child(popen)


C = TypeVar("C")


@dataclass
class Turn(Generic[C]):
    """What one ``Restarter.poll`` saw."""

    died: C | None = None
    """The child that died (or never became ready) this turn, already discarded."""
    restarted: bool = False
    """A new child was started in its place."""
    became_ready: bool = False
    """The current child passed its readiness check this turn."""
    gave_up: str | None = None
    """Why no new child was started (the restart limit), once, on the turn it happened."""


class Restarter(Generic[C]):
    """Keeps one child of kind ``C`` running, restarting it at most ``limit`` times in
    ``window_s`` seconds.

    ``start()`` spawns a child (it must not wait for it); ``alive(c)`` and
    ``ready(c)`` must answer at once (``ready``: a non-blocking check, called
    each ``poll`` until it is true once); ``discard(c)`` releases a child that
    died or did not become ready within ``ready_timeout_s`` (it kills and reaps
    it, promptly: it runs in the owner's loop). ``poll`` is one turn of the
    owner's loop and never waits. After the limit, nothing is started until
    ``reset`` (an explicit new attempt, e.g. a user asking for a call).
    """

    def __init__(self, start: Callable[[], C], *, alive: Callable[[C], bool],
                 ready: Callable[[C], bool], discard: Callable[[C], object], limit: int = 5,
                 window_s: float = 60.0, ready_timeout_s: float = 15.0,
                 what: str = "the child process") -> None:
        self._start = start
        self._alive = alive
        self._ready = ready
        self._discard = discard
        self.limit = limit
        self.window_s = window_s
        self.ready_timeout_s = ready_timeout_s
        self.what = what
        self.current: C | None = None
        """The child being kept (ready or not yet), None when there is none."""
        self.is_ready = False
        self.gave_up: str | None = None
        """Why nothing is running (the limit was reached), until ``reset``."""
        self._started_at = 0.0
        self._restarts: deque[float] = deque()

    @property
    def ready_child(self) -> C | None:
        """The current child once it has passed its readiness check, else None."""
        return self.current if self.is_ready else None

    def begin(self) -> C:
        """Start a child now (not counted as a restart); the current one, if any, is
        discarded first."""
        if self.current is not None:
            self._discard(self.current)
        self.gave_up = None
        self.current, self.is_ready = self._start(), False
        self._started_at = time.monotonic()
        return self.current

    def take(self, start_next: bool = True) -> C:
        """Hand the current child over (the caller owns it now) and, with ``start_next``,
        start the next one (not counted as a restart)."""
        child = self.current
        assert child is not None, "nothing to take"
        self.current, self.is_ready = None, False
        if start_next:
            self.begin()
        return child

    def take_over(self, other: Restarter[C]) -> None:
        """Keep ``other``'s current child from now on, as this one's (its readiness and
        start time with it); ``other`` keeps nothing until it begins again. The current
        child, if any, is discarded first."""
        if self.current is not None:
            self._discard(self.current)
        self.current, self.is_ready, self._started_at = (
            other.current, other.is_ready, other._started_at)
        other.current, other.is_ready = None, False

    def reset(self, begin: bool = True) -> None:
        """Forget the restarts counted; with ``begin``, start a child if none is running."""
        self._restarts.clear()
        self.gave_up = None
        if begin and self.current is None:
            self.begin()

    def poll(self, restart: bool = True) -> Turn[C]:
        """One turn: notice a death or a readiness timeout (discard; restart or give up),
        else run the readiness check. Never waits (but for ``discard``). ``restart``
        False: a child that died is discarded and not replaced (the owner is stopping)."""
        turn: Turn[C] = Turn()
        child = self.current
        if child is None:
            return turn
        if self._alive(child):
            if self.is_ready:
                return turn
            if self._ready(child):
                self.is_ready = turn.became_ready = True
                return turn
            if time.monotonic() - self._started_at <= self.ready_timeout_s:
                return turn
        self._discard(child)
        turn.died, self.current, self.is_ready = child, None, False
        if not restart:
            return turn
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self.window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.limit:
            self.gave_up = turn.gave_up = (
                f"{self.what} failed {len(self._restarts) + 1} times within "
                f"{self.window_s:g} s; not restarted")
            return turn
        self._restarts.append(now)
        self.begin()
        turn.restarted = True
        return turn

    def stop(self, how: Callable[[C], object] | None = None) -> None:
        """Stop keeping a child: the current one (if any) is ended by ``how`` (default
        ``discard``) and forgotten."""
        child, self.current, self.is_ready = self.current, None, False
        if child is not None:
            (how or self._discard)(child)
