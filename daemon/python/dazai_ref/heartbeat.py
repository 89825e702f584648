"""The heartbeat client: holds `dazai/1 HEARTBEAT` for this session and pings
at a third of the daemon's ping timeout. The session ends on SIGHUP, SIGTERM
or SIGINT, when stdin or stdout hangs up, or when the parent dies."""

import os
import select
import signal
import stat
import sys
import time

from .client import DaemonGone, DazaiError, Refused, _read_line, connect
from .failure import Exit
from .memory import set_parent_death_signal
from .protocol import STANDING_BY, VERSION_TOKEN

ENDING = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def _hangup_capable(fd):
    """Only pipes, sockets and terminals hang up; a file or /dev/null cannot."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


def _interval(asked, reply):
    timeout = next((word.split("=", 1)[1] for word in reply.split() if word.startswith("ping-timeout=")), "none")
    third = int(timeout) / 3 if timeout.isdigit() else None
    if asked and third is not None and asked >= int(timeout):
        return third
    return asked or third


def hold(path, ping_interval=None, standby=False):
    """Holds the heartbeat until the session ends; returns why it ended."""
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, ENDING)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    for number in ENDING:
        signal.signal(number, lambda *_: None)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    set_parent_death_signal(signal.SIGHUP)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ENDING)
    if os.getppid() != parent:
        return "parent process gone"
    sock = connect(path)
    sock.sendall(f"{VERSION_TOKEN} HEARTBEAT{' STANDBY' if standby else ''}\n".encode())
    reply = _read_line(sock)
    word, _, text = reply.partition(" ")
    if word == "BUSY":
        raise Refused(
            f"the daemon refused the heartbeat: {text}; fix: one session holds the heartbeat at a time, end the "
            "other `dazai client` first"
        )
    if word != "OK":
        raise Refused(f"the daemon refused: {text}")
    standing_by = text.startswith(STANDING_BY)
    if standing_by:
        sys.stderr.write(f"dazai: {text}\n")
        sys.stderr.flush()
    every = None if standing_by else _interval(ping_interval, text)
    next_ping = time.monotonic() + every if every else None
    sock.setblocking(False)
    watched = {fd: name for fd, name in ((0, "stdin"), (1, "stdout")) if _hangup_capable(fd)}
    poller = select.poll()
    poller.register(wake_read, select.POLLIN)
    poller.register(sock, select.POLLIN)
    for fd in watched:
        poller.register(fd, 0)
    while True:
        timeout = None if next_ping is None else max(0, int((next_ping - time.monotonic()) * 1000) + 1)
        for fd, events in poller.poll(timeout):
            if fd == wake_read:
                numbers = os.read(wake_read, 64)
                if os.getppid() != parent:
                    return "parent process gone"
                return signal.Signals(numbers[0]).name
            if fd in watched and events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return f"{watched[fd]} hung up"
            if fd == sock.fileno():
                sock.setblocking(True)
                if standing_by:
                    line = _read_line(sock)
                    if not line.startswith("OK"):
                        raise Refused(f"the daemon refused: {line}")
                    sys.stderr.write("dazai: the other session ended; this one holds the heartbeat now\n")
                    standing_by = False
                    every = _interval(ping_interval, line)
                    next_ping = time.monotonic() + every if every else None
                else:
                    data = sock.recv(64)
                    if not data:
                        raise DaemonGone()
                    if data.startswith(b"ERR"):
                        raise Refused(f"the daemon refused: {data[4:].decode(errors='replace').strip()}")
                sock.setblocking(False)
        if next_ping is not None and time.monotonic() >= next_ping:
            sock.sendall(b"PING\n")
            next_ping = time.monotonic() + every


def main(args):
    try:
        why = hold(args.socket, args.ping_interval, args.standby)
    except (DazaiError, OSError) as error:
        code = getattr(error, "exit_code", Exit.NO_DAEMON)
        sys.stderr.write(f"dazai: error: {error}\n")
        return int(code)
    try:
        sys.stderr.write(f"dazai: session ended ({why}); heartbeat released\n")
        sys.stderr.flush()
    except OSError:
        pass
    return 0
