"""Bad input, fuzzed: control frames and messages to the agent server."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callctl.engine import protocol
from callctl.engine.agent_server import wire as agent_protocol

# `make test` runs 1,000 cases of each fuzz; `make soak` runs 10,000 or more.
EXAMPLES = int(os.environ.get("CALLCTL_FUZZ_EXAMPLES", "1000"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
    max_leaves=20)

control_frames = st.one_of(
    st.binary(max_size=500),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"cmd": st.sampled_from(sorted(protocol.PUBLIC_COMMANDS)) | st.text(max_size=10)},
        optional={k: json_values for k in ("agent", "base_url", "clone_voice", "x")},
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(frame=control_frames)
def test_decode_request_never_raises_anything_but_a_one_line_protocol_error(frame: bytes) -> None:
    try:
        request = protocol.decode_request(frame, protocol.PUBLIC_COMMANDS)
    except protocol.ProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert request["cmd"] in protocol.PUBLIC_COMMANDS
    for key, field in protocol.PUBLIC_COMMANDS[request["cmd"]].items():
        if key in request:
            assert isinstance(request[key], field.types)


agent_messages = st.one_of(
    st.text(max_size=300),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["pong", "user_activity", "contextual_update", "user_message",
                                  "conversation_initiation_client_data",
                                  "client_tool_result"]) | st.text(max_size=10)},
        optional={"event_id": json_values, "text": json_values,
                  "conversation_config_override": json_values},
    ).map(json.dumps),
    st.fixed_dictionaries({"user_audio_chunk": st.text(max_size=50) | json_values})
    .map(json.dumps),
)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(message=agent_messages)
def test_agent_server_parser_rejects_cleanly(message: str) -> None:
    try:
        agent_protocol.parse_client_message(message)
    except agent_protocol.MalformedMessage as exc:
        assert str(exc)
        return


def test_oversized_frames_are_refused_with_a_reply() -> None:
    big = json.dumps({"cmd": "status", "x": "a" * protocol.MAX_MESSAGE_BYTES}).encode()
    with pytest.raises(protocol.ProtocolError, match="too large"):
        protocol.decode_request(big, protocol.PUBLIC_COMMANDS)
