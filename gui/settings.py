"""What the window remembers between runs: the agent, recent agent ids, the clone name.

Stored as JSON in ``<user config dir>/callctl/gui.json`` (``platformdirs``;
``$XDG_CONFIG_HOME`` moves it, which is how the tests keep theirs apart).
A missing, unreadable or malformed file gives the defaults: the window must
always open. Writes go to a temporary file renamed into place, so a crash
never leaves half a file. Small local file I/O only; called from the GUI
thread at exit (``save``) and, through a writer thread, at a call's start
(``save_later``: a rename can take milliseconds on some file systems, and the
GUI thread must not stall while a call starts).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import platformdirs

LOCAL_AGENT = "local"
MAX_RECENT = 8


def settings_path() -> Path:
    return Path(platformdirs.user_config_dir("callctl")) / "gui.json"


@dataclass
class GuiSettings:
    agent: str = LOCAL_AGENT
    """The agent of the last call: ``local`` or an ElevenLabs agent id."""
    recent_agents: list[str] = field(default_factory=list)
    """ElevenLabs agent ids used before, most recent first (never ``local``)."""
    clone_name: str = ""
    """The last name typed for "Clone my voice as…" (the checkbox itself is not remembered)."""

    def remember_agent(self, agent: str) -> None:
        """Make ``agent`` the current one and the first of the recent ids."""
        agent = agent.strip() or LOCAL_AGENT
        self.agent = agent
        if agent != LOCAL_AGENT:
            self.recent_agents = [agent] + [a for a in self.recent_agents if a != agent]
            del self.recent_agents[MAX_RECENT:]


def load(path: Path | None = None) -> GuiSettings:
    """The remembered settings, or the defaults if there are none or they are unreadable."""
    path = path or settings_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return GuiSettings()
    if not isinstance(data, dict):
        return GuiSettings()
    settings = GuiSettings()
    if isinstance(data.get("agent"), str) and data["agent"].strip():
        settings.agent = data["agent"].strip()
    recent = data.get("recent_agents")
    if isinstance(recent, list):
        settings.recent_agents = [a for a in recent if isinstance(a, str) and a
                                  and a != LOCAL_AGENT][:MAX_RECENT]
    if isinstance(data.get("clone_name"), str):
        settings.clone_name = data["clone_name"]
    return settings


def save(settings: GuiSettings, path: Path | None = None) -> None:
    """Write atomically; an error (read-only home, full disk) is ignored: it is only a memory."""
    path = path or settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".gui-", suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(settings), handle, indent=2)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass


_writer: ThreadPoolExecutor | None = None


def start_writer() -> ThreadPoolExecutor:
    """The writer thread, started now if it is not running (starting one takes a moment)."""
    global _writer
    if _writer is None:
        _writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callctl-settings")
        _writer.submit(lambda: None)
    return _writer


def save_later(settings: GuiSettings, path: Path | None = None) -> Future[None]:
    """``save`` a snapshot of ``settings`` on the writer thread (in order); returns at once."""
    return start_writer().submit(save, copy.deepcopy(settings), path)
