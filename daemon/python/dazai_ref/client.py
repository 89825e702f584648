"""For Python programs (agents) under either daemon: `get(name)` fetches a
secret through the inherited capability straight into a locked bytearray,
and wipes it when the `with` block ends.

    import dazai_ref
    with dazai_ref.get("api") as secret:
        connection.send(secret.view())      # no copy made here

What it cannot prevent: the copies the program makes itself (`bytes(...)`,
`.decode()`, a string handed to an HTTP library) live in ordinary heap,
unlocked and never wiped (docs/python.md).
"""

import os
import socket
import struct

from .endpoint import default_socket_path
from .failure import Exit
from .memory import LockedBuffer
from .protocol import CAPABILITY_ENV, VERSION_TOKEN, is_valid_name

#: Longest reply line the client reads (a STATUS JSON).
MAX_REPLY_LINE = 64 * 1024
#: A reply that does not come in this time is an error.
REPLY_DEADLINE = 15.0


class DazaiError(Exception):
    """A one-line error with the exit code the `dazai` commands use for it."""

    exit_code = Exit.INTERNAL


class NoCapability(DazaiError):
    exit_code = Exit.REFUSED

    def __init__(self, why):
        super().__init__(
            f"this process holds no capability to obtain a secret ({why}); fix: only the program the daemon "
            "supervises and its descendants may, so start it with `dazai run` or `dazai daemon --exec`"
        )


class Refused(DazaiError):
    exit_code = Exit.REFUSED


class DaemonGone(DazaiError):
    exit_code = Exit.NO_DAEMON

    def __init__(self, detail="it panicked or shut down"):
        super().__init__(f"the daemon closed the connection ({detail})")


class Secret(LockedBuffer):
    """A secret fetched from the daemon: locked, no-dump, wiped on close or at
    the end of its `with` block. Its repr shows a length, never the bytes."""

    __slots__ = ("name",)

    def __init__(self, name, length):
        super().__init__(max(length, 1))
        self.name = name

    def __repr__(self):
        state = "wiped" if self.closed else "locked" if self.locked else "UNLOCKED"
        return f"<Secret {self.name}: {self.length} bytes, {state}>"

    __str__ = __repr__


def capability():
    """The inherited capability's descriptor number, checked to be a SOCK_SEQPACKET socket."""
    number = os.environ.get(CAPABILITY_ENV)
    if number is None:
        raise NoCapability(f"{CAPABILITY_ENV} is not set")
    if not (number.isascii() and number.isdigit()):
        raise NoCapability(f"{CAPABILITY_ENV}={number!r} is not a descriptor number")
    fd = int(number)
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as error:
        raise NoCapability(
            f"descriptor {fd} is not an open socket ({error.strerror}): a program between the supervised one and "
            "this one closed it, as Python's subprocess does unless pass_fds lists it"
        ) from None
    with probe:
        if probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_SEQPACKET:
            raise NoCapability(f"descriptor {fd} is a socket of another kind")
    return fd


def get(name):
    """Fetches secret `name` through the capability into a new locked Secret."""
    if not is_valid_name(name):
        raise ValueError("a secret name is 1-64 of A-Z a-z 0-9 _ . -")
    fd = capability()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        with socket.socket(fileno=os.dup(fd)) as door, theirs:
            try:
                socket.send_fds(door, [f"{VERSION_TOKEN} GET {name}\n".encode()], [theirs.fileno()], socket.MSG_NOSIGNAL)
            except (BrokenPipeError, ConnectionRefusedError):
                raise DaemonGone() from None
        ours.settimeout(REPLY_DEADLINE)
        line = _read_line(ours)
        word, _, rest = line.partition(" ")
        if word == "ERR":
            raise Refused(f"the daemon refused: {rest}")
        if word != "SECRET" or not rest.isdigit():
            raise DazaiError(f"the daemon's reply is not understood ({line[:32]!r})")
        secret = Secret(name, int(rest))
        try:
            while secret.length < int(rest):
                with secret.free_space() as room:
                    count = ours.recv_into(room, int(rest) - secret.length)
                if count == 0:
                    raise DaemonGone("before the whole secret arrived")
                secret.length += count
        except BaseException:
            secret.close()
            raise
        return secret


def _read_line(sock):
    """One reply line, read a byte at a time so not one byte of a secret behind it is taken."""
    line = bytearray()
    while not line.endswith(b"\n"):
        try:
            byte = sock.recv(1)
        except TimeoutError:
            raise DazaiError(f"the daemon did not answer within {REPLY_DEADLINE:.0f}s; fix: check `dazai status`") from None
        if not byte:
            raise DaemonGone()
        line += byte
        if len(line) > MAX_REPLY_LINE:
            raise DazaiError("the daemon's reply line is too long")
    return line[:-1].decode("ascii", errors="replace")


def connect(path=None):
    """Connects to the daemon's socket, checked to be served by this user
    before a byte is sent (SO_PEERCRED)."""
    path = path or default_socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as error:
        sock.close()
        gone = DaemonGone()
        gone.args = (
            f"no daemon answers on {path} ({error.strerror}); fix: start `dazai daemon`, or pass --socket / set "
            "DAZAI_SOCKET to its socket",
        )
        raise gone from None
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.getuid():
        sock.close()
        foreign = DazaiError(
            f"{path} is served by uid {uid}, not by you; nothing was sent to it; fix: pass --socket / set "
            "DAZAI_SOCKET to your own daemon's socket"
        )
        foreign.exit_code = Exit.ENDPOINT
        raise foreign
    sock.settimeout(REPLY_DEADLINE)
    return sock

