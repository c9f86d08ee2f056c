"""CurveZMQ for a controller reachable from other machines: who may hang up.

A controller binds ``tcp://`` on a non-loopback address only with CurveZMQ:
every connection is encrypted and only clients whose public key lies in the
authorised directory may talk to it at all (ZAP, ``zmq.auth``). The key
directory (``--curve-dir`` or ``$CALLCTL_CURVE_DIR``), made by
``callctl keys DIR`` (``callctl.cli.keys_command``)::

    DIR/server.key            the controller's public key (give it to clients)
    DIR/server.key_secret     the controller's key pair (keep it on the server)
    DIR/client.key_secret     a client's key pair (give it to that client)
    DIR/authorized/*.key      public keys of the clients allowed in

Clients (``callctl hangup`` and friends) use ``client.key_secret`` and
``server.key`` from the same kind of directory.

As ssh does with its keys, a key directory or a ``*.key_secret`` that group or
others may access, or that another user owns, is refused (``CurveError``);
secret files are created 0600 (``O_EXCL``), never written wider and narrowed.
"""

from __future__ import annotations

import datetime
import os
import stat
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


def check_private(path: Path, what: str) -> None:
    """Refuse (``CurveError``, one line) ``path`` if another user owns it or if group or
    others have any access to it (mode & 077), as ssh refuses an unprotected key."""
    try:
        info = path.stat()
    except OSError as exc:
        raise CurveError(f"{path}: {exc.strerror}") from None
    if info.st_uid != os.getuid():
        raise CurveError(f"{path} ({what}) belongs to uid {info.st_uid}, not you; refused")
    loose = stat.S_IMODE(info.st_mode)
    if loose & 0o077:
        fix = "700" if path.is_dir() else "600"
        raise CurveError(f"{path} ({what}) has mode {loose:o}: others may read it; "
                         f"`chmod {fix} {path}` first")


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
        check_private(directory, "the key directory")
        check_private(secret_file, "the server's secret key")
        public, secret = zmq.auth.load_certificate(secret_file)
        if secret is None:
            raise CurveError(f"{secret_file} holds no secret key")
        authorized = directory / "authorized"
        if not authorized.is_dir() or not any(authorized.glob("*.key")):
            raise CurveError(f"{authorized} holds no client keys: nobody could connect")
        info = authorized.stat()
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o022:
            raise CurveError(f"{authorized} may be written by others (mode "
                             f"{stat.S_IMODE(info.st_mode):o}): anyone could authorise "
                             f"themselves; `chmod 700 {authorized}` first")
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
        check_private(directory, "the key directory")
        check_private(mine, "the client's secret key")
        public, secret = zmq.auth.load_certificate(mine)
        server_public, _ = zmq.auth.load_certificate(server)
        if secret is None:
            raise CurveError(f"{mine} holds no secret key")
        return cls(public, secret, server_public)

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server


def _write_key(path: Path, public: bytes, secret: bytes | None) -> None:
    """A ZPL certificate as ``zmq.auth`` writes it; a secret one is created 0600 (O_EXCL)."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    text = ("#   ****  Generated on {} by callctl  ****\n"
            "#   ZeroMQ CURVE {} Certificate\n"
            "#   Exchange securely, or use a secure mechanism to verify the contents\n"
            "#   of this file after exchange. Store public certificates in your home\n"
            "#   directory, in the .curve subdirectory.\n\n"
            "metadata\ncurve\n    public-key = \"{}\"\n").format(
        now, "**Secret**" if secret else "Public", public.decode("ascii"))
    if secret is not None:
        text += f'    secret-key = "{secret.decode("ascii")}"\n'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o600 if secret is not None else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def generate(directory: Path) -> None:
    """A server key pair, one client key pair, and that client authorised.

    ``directory`` is created 0700 if missing, and refused (``CurveError``) if
    others may access it. The ``*.key_secret`` files are created 0600 and
    never exist with a wider mode; existing files are not overwritten.
    """
    if directory.exists():
        check_private(directory, "the key directory")
    else:
        directory.mkdir(mode=0o700, parents=True)
        os.chmod(directory, 0o700)  # mkdir's mode is cut by the umask, never widened: exact
    authorized = directory / "authorized"
    authorized.mkdir(mode=0o700, exist_ok=True)
    for name in ("server", "client"):
        public, secret = zmq.curve_keypair()
        _write_key(directory / f"{name}.key", public, None)
        _write_key(directory / f"{name}.key_secret", public, secret)
        if name == "client":
            _write_key(authorized / "client.key", public, None)
