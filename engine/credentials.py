"""Where the agent is and who we are: the API key, the agent id, the service URL.

``ELEVENLABS_API_KEY`` comes from the environment, else from the config file
(``$CALLCTL_CONFIG``, else ``<user config dir>/callctl/config.toml``)::

    api_key = "..."          # optional; never printed
    agent_id = "..."         # optional default for --agent
    base_url = "https://api.elevenlabs.io"   # optional; e.g. a regional endpoint

``$ELEVENLABS_BASE_URL`` overrides the file's base URL; ``--base-url``
overrides both. The key is never put in a message, an event, a log line or
a file: ``Credentials`` does not show it in ``repr``, and the agent process
reads it itself rather than receiving it over ZeroMQ.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

DEFAULT_BASE_URL = "https://api.elevenlabs.io"


class ConfigError(ValueError):
    """The config file cannot be used; ``str()`` names the file and the problem."""


def config_path() -> Path:
    env = os.environ.get("CALLCTL_CONFIG")
    return Path(env) if env else Path(platformdirs.user_config_dir("callctl")) / "config.toml"


@dataclass(frozen=True)
class Credentials:
    api_key: str | None = field(default=None, repr=False)
    agent_id: str | None = None
    base_url: str = DEFAULT_BASE_URL

    @property
    def has_key(self) -> bool:
        return bool(self.api_key)


def load_credentials(path: Path | None = None, base_url: str | None = None) -> Credentials:
    """Environment first, then the config file; ``base_url`` (from --base-url) wins."""
    path = path or config_path()
    values: dict[str, object] = {}
    if path.exists():
        try:
            values = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        for key in values:
            if key not in ("api_key", "agent_id", "base_url"):
                raise ConfigError(f"{path}: unknown setting {key!r} "
                                  "(known: api_key, agent_id, base_url)")
        for key, value in values.items():
            if not isinstance(value, str):
                raise ConfigError(f"{path}: {key} must be a string")
    api_key = os.environ.get("ELEVENLABS_API_KEY") or values.get("api_key") or None
    url = (base_url or os.environ.get("ELEVENLABS_BASE_URL")
           or values.get("base_url") or DEFAULT_BASE_URL)
    agent_id = values.get("agent_id")
    return Credentials(
        api_key=str(api_key) if api_key else None,
        agent_id=str(agent_id) if agent_id else None,
        base_url=str(url).rstrip("/"),
    )


SECRET_VARIABLES = ("ELEVENLABS_API_KEY",)
"""Environment variables a child must not inherit unless it needs the key."""


def without_secrets(env: dict[str, str]) -> dict[str, str]:
    """``env`` less ``SECRET_VARIABLES``: for children that never use the API key (the audio
    process and its resource tracker, the local agent server)."""
    return {k: v for k, v in env.items() if k not in SECRET_VARIABLES}

