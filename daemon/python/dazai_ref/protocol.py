"""The dazai/1 wire protocol (docs/protocol.md): request lines, their errors
and the reply lines, word for word as the Rust daemon speaks them."""

import re

VERSION_TOKEN = "dazai/1"
#: Longest line either side may send, newline included.
MAX_LINE = 256
#: Longest secret name.
MAX_NAME = 64
PING = b"PING"
CAPABILITY_ENV = "DAZAI_CAPABILITY_FD"
SOCKET_ENV = "DAZAI_SOCKET"
STANDING_BY = "standing by"

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,%d}\Z" % MAX_NAME)


class ProtocolError(Exception):
    """Why a line is not a valid request; str() is what follows `ERR `, and
    never echoes more than a short word of the input."""


def is_valid_name(name):
    return bool(_NAME.match(name))


def _truncated(word):
    return word[:32]


def check_line(line):
    """The line (bytes, without newline) as text, if short printable ASCII."""
    if len(line) >= MAX_LINE:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes")
    if any(byte < 0x20 or byte > 0x7E for byte in line):
        raise ProtocolError("line holds bytes outside printable ASCII")
    return line.decode("ascii")


def _bad(usage):
    return ProtocolError(f"bad arguments; usage: {usage}")


def _positive(word):
    return word.isascii() and word.isdigit() and 0 < int(word) < 2**31


def parse_request(line):
    """Parses a request line into a tuple: (verb, argument...)."""
    text = check_line(line)
    words = text.split(" ")
    version, verb, args = words[0], (words[1] if len(words) > 1 else ""), words[2:]
    if version != VERSION_TOKEN:
        if version.startswith("dazai/"):
            raise ProtocolError(
                f"unsupported protocol version {_truncated(version)}; this daemon speaks {VERSION_TOKEN}"
            )
        raise ProtocolError(f"request does not start with the version token {VERSION_TOKEN}")
    if verb == "HEARTBEAT":
        if args == []:
            return ("HEARTBEAT",)
        if args == ["STANDBY"]:
            return ("HEARTBEAT STANDBY",)
        raise _bad("HEARTBEAT [STANDBY]")
    if verb == "REGISTER":
        if args == []:
            return ("REGISTER", None, False)
        if len(args) == 1 and _positive(args[0]):
            return ("REGISTER", int(args[0]), False)
        if len(args) == 2 and args[1] == "GROUP" and _positive(args[0]):
            return ("REGISTER", int(args[0]), True)
        raise _bad("REGISTER [PID [GROUP]]")
    if verb == "GET":
        if len(args) == 1 and is_valid_name(args[0]):
            return ("GET", args[0])
        raise _bad("GET NAME (1-64 of A-Z a-z 0-9 _ . -)")
    if verb == "PANIC":
        if args == []:
            return ("PANIC", False)
        if args == ["HARD"]:
            return ("PANIC", True)
        raise _bad("PANIC [HARD]")
    if verb in ("STATUS", "WATCH", "STOP"):
        if args:
            raise _bad(verb)
        return (verb,)
    raise ProtocolError(f"unknown command {_truncated(verb)}")


class LineBuffer:
    """Bytes received on a connection, split into lines no longer than MAX_LINE."""

    __slots__ = ("data",)

    def __init__(self):
        self.data = bytearray()

    def next_line(self):
        """The next complete line without its newline, or None; raises ProtocolError if too long."""
        end = self.data.find(b"\n")
        if end >= MAX_LINE or (end < 0 and len(self.data) >= MAX_LINE):
            raise ProtocolError(f"line longer than {MAX_LINE} bytes")
        if end < 0:
            return None
        line = bytes(self.data[:end])
        del self.data[: end + 1]
        return line
