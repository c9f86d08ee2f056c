"""The offline ElevenLabs-compatible agent server (``callctl agent-server``).

It speaks the Conversational AI websocket protocol as the ``elevenlabs`` SDK
uses it, on loopback: a scripted dialogue voiced with espeak-ng, turn-taking by
voice activity, barge-in ``interruption`` events, ``ping``, a signed-URL
endpoint, a voice-add endpoint, and fault modes (stall, slow close, drop) for tests.

Modules: :mod:`.protocol` (message shapes), :mod:`.script` (dialogue scripts),
:mod:`.voice` (espeak-ng → int16 16 kHz), :mod:`.vad` (energy VAD),
:mod:`.faults` (socket-level misbehaviour), :mod:`.session` (one conversation),
:mod:`.voices` (``POST /v1/voices/add``: Instant Voice Cloning), :mod:`.http`
(requests with a body, on the websocket port), :mod:`.server` (websocket +
HTTP), :mod:`.cli` (``main(argv)``).
"""

from .conversation import SessionConfig
from .server import AgentServer, ServerConfig

__all__ = ["AgentServer", "ServerConfig", "SessionConfig"]
