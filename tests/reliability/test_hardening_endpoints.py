"""Issue 14, items 3 and 4: endpoints bind exactly what was checked; tcp without CURVE is opt-in.

Real ZeroMQ sockets throughout: what libzmq binds is read back from the
socket (``LAST_ENDPOINT``) and, for the ``;`` form, from the kernel.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from callctl.controller import endpoints
from callctl.controller.endpoints import EndpointError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def rep(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    if "[" in endpoint:
        sock.ipv6 = True
    sock.bind(endpoint)
    return sock


def rebind(ctx: zmq.Context, endpoint: str, within: float = 3.0) -> zmq.Socket:
    """Bind ``endpoint`` once a socket just closed has let go of it (libzmq closes
    listeners in its I/O thread, a moment after ``close``); bounded."""
    deadline = time.monotonic() + within
    while True:
        try:
            return rep(ctx, endpoint)
        except zmq.ZMQError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def ping(ctx: zmq.Context, server: zmq.Socket, endpoint: str) -> bytes:
    """One request over a real connection to ``endpoint``, answered by ``server``."""
    client = ctx.socket(zmq.REQ)
    client.setsockopt(zmq.LINGER, 0)
    if "[" in endpoint:
        client.ipv6 = True
    client.connect(endpoint)
    try:
        client.send(b"ping")
        assert server.poll(5000), f"nothing arrived at {endpoint}"
        server.send(server.recv())
        assert client.poll(5000)
        return bytes(client.recv())
    finally:
        client.close(0)


def test_the_semicolon_form_is_refused_though_libzmq_would_bind_all_interfaces(
        ctx: zmq.Context) -> None:
    checked, bound = free_port(), free_port()
    sneaky = f"tcp://127.0.0.1:{checked}/;0.0.0.0:{bound}"
    # What libzmq does with it: the part after ';' is bound, on every interface.
    sock = rep(ctx, sneaky)
    assert sock.get(zmq.LAST_ENDPOINT) == f"tcp://0.0.0.0:{bound}".encode()
    sock.close(0)
    for curve, insecure in ((False, True), (True, False), (False, False)):
        with pytest.raises(EndpointError) as refused:
            endpoints.check(sneaky, curve=curve, insecure=insecure)
        assert "\n" not in str(refused.value) and ";" in str(refused.value)
    for other in (f"tcp://127.0.0.1;127.0.0.1:{bound}", f"tcp://lo;127.0.0.1:{bound}"):
        with pytest.raises(EndpointError):
            endpoints.check(other, insecure=True)


@pytest.mark.parametrize("endpoint", [
    "tcp://lo:{p}",                 # an interface name: libzmq binds its address
    "tcp://eth0:{p}",
    "tcp://*:{p}",                  # every interface
    "tcp://0.0.0.0:{p}",
    "tcp://[::]:{p}",
    "tcp://127.1:{p}",              # libzmq reads it as 127.0.0.1; too clever to accept
    "tcp://2130706433:{p}",
    "tcp://example.invalid:{p}",    # a host name: not loopback by its spelling
    "tcp://127.0.0.1:{p} ",         # libzmq ignores the space; we do not guess
    "tcp://127.0.0.1:0{p}",
    "tcp://127.0.0.1:*",            # a random port: the events port cannot follow it
    "tcp://127.0.0.1:0",
    "tcp://127.0.0.1:65535",        # no room for the events port (+1)
    "tcp://127.0.0.1:{p}/",
    "tcp://127.0.0.1",
    "tcp://user@127.0.0.1:{p}",
    "ipc://@callctl-abstract",      # abstract socket: no file, no permissions, any uid
    "ipc://*",
    "ipc:///tmp/x\x00y",
    "inproc://x",
    "udp://127.0.0.1:{p}",
])
def test_anything_not_plainly_loopback_is_refused_without_curve(endpoint: str) -> None:
    text = endpoint.format(p=free_port())
    with pytest.raises(EndpointError) as refused:
        endpoints.check(text, curve=False, insecure=True)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("endpoint", [
    "tcp://127.0.0.1:{p}", "tcp://localhost:{p}", "tcp://[::1]:{p}", "ipc://{tmp}/ctl"])
def test_accepted_endpoints_bind_exactly_what_was_checked(
        ctx: zmq.Context, tmp_path: Path, endpoint: str) -> None:
    text = endpoint.format(p=free_port(), tmp=tmp_path)
    endpoints.check(text, curve=False, insecure=True)
    sock = rep(ctx, text)
    try:
        last = endpoints.verify_bound(sock, text, curve=False)
        assert not sock.closed
        assert last == sock.get(zmq.LAST_ENDPOINT).decode()
        assert ping(ctx, sock, text) == b"ping"
    finally:
        sock.close(0)


def test_verify_bound_refuses_and_closes_a_socket_that_listens_elsewhere(
        ctx: zmq.Context) -> None:
    port = free_port()
    wide = rep(ctx, f"tcp://0.0.0.0:{port}")
    with pytest.raises(EndpointError) as refused:
        endpoints.verify_bound(wide, f"tcp://127.0.0.1:{port}", curve=False)
    assert "\n" not in str(refused.value) and "0.0.0.0" in str(refused.value)
    assert wide.closed
    again = rebind(ctx, f"tcp://127.0.0.1:{port}")  # the port is released with the socket
    other = free_port()
    with pytest.raises(EndpointError):
        endpoints.verify_bound(again, f"tcp://127.0.0.1:{other}", curve=False)
    assert again.closed
    # With CURVE any interface is allowed, but still only the port that was asked for.
    curve_sock = rebind(ctx, f"tcp://0.0.0.0:{port}")
    assert endpoints.verify_bound(curve_sock, f"tcp://0.0.0.0:{port}", curve=True)
    with pytest.raises(EndpointError):
        endpoints.verify_bound(curve_sock, f"tcp://0.0.0.0:{other}", curve=True)
    assert curve_sock.closed


def test_tcp_without_curve_needs_insecure_and_says_how_to_get_keys(tmp_path: Path) -> None:
    port = free_port()
    loopback = f"tcp://127.0.0.1:{port}"
    with pytest.raises(EndpointError) as refused:
        endpoints.check(loopback)
    message = str(refused.value)
    assert "\n" not in message
    assert "--insecure" in message and "callctl keys" in message
    endpoints.check(loopback, insecure=True)
    endpoints.check(loopback, curve=True)
    endpoints.check(f"tcp://0.0.0.0:{port}", curve=True)
    endpoints.check(f"ipc://{tmp_path}/ctl")   # the private default needs no flag
    with pytest.raises(EndpointError) as wide:  # --insecure never opens beyond loopback
        endpoints.check(f"tcp://0.0.0.0:{port}", insecure=True)
    assert "CurveZMQ" in str(wide.value)
    with pytest.raises(EndpointError):
        endpoints.control_endpoint(loopback)
    assert endpoints.control_endpoint(loopback, insecure=True) == loopback

    warning = endpoints.insecure_warning(loopback, curve=False)
    assert warning is not None and "\n" not in warning and "every local user" in warning
    assert endpoints.insecure_warning(loopback, curve=True) is None
    assert endpoints.insecure_warning(f"ipc://{tmp_path}/ctl", curve=False) is None


def test_events_endpoint_follows_the_checked_control_endpoint() -> None:
    assert endpoints.events_endpoint("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5556"
    assert endpoints.events_endpoint("tcp://[::1]:5555") == "tcp://[::1]:5556"
    assert endpoints.events_endpoint("ipc:///run/c/control") == "ipc:///run/c/control.events"
