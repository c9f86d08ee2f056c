"""CurveZMQ for a controller reachable from other machines: who may hang up.

A controller binds ``tcp://`` on a non-loopback address only with CurveZMQ:
every connection is encrypted and only clients whose public key lies in the
authorised directory may talk to it at all (ZAP, ``zmq.auth``). The key
directory (``--curve-dir`` or ``$CALLCTL_CURVE_DIR``), made by
``callctl keys DIR``::

    DIR/server.key            the controller's public key (give it to clients)
    DIR/server.key_secret     the controller's key pair (keep it on the server)
    DIR/client.key_secret     a client's key pair (give it to that client)
    DIR/authorized/*.key      public keys of the clients allowed in

Clients (``callctl hangup`` and friends) use ``client.key_secret`` and
``server.key`` from the same kind of directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class CurveError(ValueError):
    """The key directory cannot be used; ``str()`` says what is missing."""


def curve_dir(explicit: str | None = None) -> Path | None:
    value = explicit or os.environ.get("CALLCTL_CURVE_DIR")
    return Path(value) if value else None


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized: Path

    @classmethod
    def load(cls, directory: Path) -> ServerKeys:
        secret_file = directory / "server.key_secret"
        if not secret_file.exists():
            raise CurveError(f"{secret_file} is missing (make keys with `callctl keys DIR`)")
        public, secret = zmq.auth.load_certificate(secret_file)
        if secret is None:
            raise CurveError(f"{secret_file} holds no secret key")
        authorized = directory / "authorized"
        if not authorized.is_dir() or not any(authorized.glob("*.key")):
            raise CurveError(f"{authorized} holds no client keys: nobody could connect")
        return cls(public, secret, authorized)

    def start_authenticator(self, ctx: zmq.Context) -> ThreadAuthenticator:
        """ZAP handler: only the authorised client keys get in. Stop it before ``ctx.term``."""
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(self.authorized))
        return auth

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(cls, directory: Path) -> ClientKeys:
        mine, server = directory / "client.key_secret", directory / "server.key"
        for path in (mine, server):
            if not path.exists():
                raise CurveError(f"{path} is missing")
        public, secret = zmq.auth.load_certificate(mine)
        server_public, _ = zmq.auth.load_certificate(server)
        if secret is None:
            raise CurveError(f"{mine} holds no secret key")
        return cls(public, secret, server_public)

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server


def generate(directory: Path) -> None:
    """A server key pair, one client key pair, and that client authorised."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(directory), "server")
    zmq.auth.create_certificates(str(directory), "client")
    authorized = directory / "authorized"
    authorized.mkdir(mode=0o700, exist_ok=True)
    shutil.copy(directory / "client.key", authorized / "client.key")
    for secret in directory.glob("*.key_secret"):
        secret.chmod(0o600)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="callctl keys",
        description="Make CurveZMQ keys so a controller can listen beyond loopback: "
        "`callctl serve --endpoint tcp://0.0.0.0:5555 --curve-dir DIR`; clients use "
        "`--curve-dir DIR` (or $CALLCTL_CURVE_DIR) with client.key_secret and server.key.")
    p.add_argument("directory", type=Path)
    args = p.parse_args(argv)
    if (args.directory / "server.key_secret").exists():
        print(f"callctl keys: {args.directory} already holds keys", file=sys.stderr)
        return 2
    generate(args.directory)
    print(f"keys written to {args.directory} (authorized: {args.directory / 'authorized'})")
    return 0
