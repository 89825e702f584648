"""The reference daemon: start-up in the Rust daemon's order, then one poll(2)
loop over the signals' wake-up pipe, the listening socket, the capability,
the heartbeat and the control connections (docs/design.md)."""

import array
import errno
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

from . import memory
from .endpoint import Endpoint
from .failure import Exit, Failure
from .log import Log, utc_timestamp
from .protocol import MAX_LINE, PING, STANDING_BY, VERSION_TOKEN, LineBuffer, ProtocolError, parse_request
from .secrets import BACKEND, Vault, choose_memory
from .signals import CRASH_OR_KILL, HANDLED, UNEXPECTED_ENDINGS, name
from .supervisor import Supervised

CONTROL_DEADLINE = 3.0
MAX_CONTROLS = 64
MAX_WATCHERS = 64
MAX_STANDBYS = 8
ACCEPT_BACKOFF = 0.25
UNARMED_GET_WAIT = 10.0
MAX_PENDING_GETS = 64
DOOR_BATCH = 16
WRITE_TIMEOUT = 1.0
MAX_REGISTERED = 1024
SO_PEERPIDFD = 77
IMPLEMENTATION = "python-reference"

#: What the reference does not do that the Rust daemon does; STATUS lists it.
REFERENCE_LACKS = [
    "seccomp: no syscall allowlist confines the daemon",
    "secretmem: no memfd_secret(2) backend; root reads the secrets through /proc/PID/mem",
    "copies: CPython may copy a secret into unlocked, dumpable heap that is never wiped",
    "guard pages: a secret's pages lie in the heap, with no guard pages around them",
    "last resort: a crash of the interpreter (SIGSEGV, SIGABRT) runs no wipe",
    "dazai run: no --under-run; the reference runs only as a daemon",
]

_PEERCRED = struct.Struct("3i")


def peer_credentials(sock):
    """(pid, uid) of the peer, from SO_PEERCRED."""
    pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid


def send(sock, reply, payload=None):
    """Writes a reply line (and a secret's bytes) within WRITE_TIMEOUT; False if it could not."""
    try:
        sock.settimeout(WRITE_TIMEOUT)
        sock.sendall(f"{reply}\n".encode())
        if payload is not None:
            sock.sendall(payload)
        sock.setblocking(False)
        return True
    except OSError:
        return False


class Reason:
    """Why the panic runs (the text the PANIC line gives)."""

    def __init__(self, text, heartbeat_ended=False):
        self.text = text
        self.heartbeat_ended = heartbeat_ended

    def __str__(self):
        return self.text


class Connection:
    __slots__ = ("sock", "lines", "pid", "pidfd", "deadline", "since", "last_ping")

    def __init__(self, sock, pid, pidfd=None, deadline=None):
        self.sock, self.pid, self.pidfd, self.deadline = sock, pid, pidfd, deadline
        self.lines = LineBuffer()

    def close(self):
        self.sock.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Registry:
    """Registered processes, each held by a pidfd; the panic SIGKILLs them."""

    def __init__(self):
        self.entries = []  # [pid, pidfd, group]

    def register(self, pid, pidfd, group):
        self.entries = [entry for entry in self.entries if _alive(entry[1]) or os.close(entry[1])]
        for entry in self.entries:
            if entry[0] == pid:
                entry[2] |= group
                if pidfd is not None:
                    os.close(pidfd)
                return
        if len(self.entries) >= MAX_REGISTERED:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.entries.append([pid, pidfd if pidfd is not None else os.pidfd_open(pid), group])

    def live_pids(self):
        return [pid for pid, pidfd, _ in self.entries if _alive(pidfd)]

    def kill_all(self):
        killed = []
        for pid, pidfd, group in self.entries:
            if not _alive(pidfd):
                continue
            if group:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        return killed


def _alive(pidfd):
    try:
        signal.pidfd_send_signal(pidfd, 0)
        return True
    except OSError:
        return False


def _errno_text(error):
    return f"{errno.errorcode.get(error.errno, 'E?')}: {error.strerror}"


class Daemon:
    def __init__(self, args):
        self.args = args
        self.steps = []
        self.insecure = args.insecure_allow_unlocked
        self.vault = Vault()
        self.registry = Registry()
        self.liveness = "waiting"
        self.arm_deadline = time.monotonic() + args.arm_timeout if args.arm_timeout else None
        self.grace_deadline = None
        self.grace_reason = None
        self.armed = False
        self.heartbeat = None
        self.controls = []
        self.watchers = []
        self.standbys = []
        self.pending_gets = []  # (reply socket, name, pid, deadline)
        self.accept_paused_until = None
        self.supervised = None
        self.door = None

    # Start-up, in the Rust daemon's order.

    def start(self):
        # 1. Signals held back until the loop reads them, so none is lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        # 2. Hardening.
        self._harden("RLIMIT_MEMLOCK", lambda: f"RLIMIT_MEMLOCK raised to its hard limit ({_limit(memory.raise_memlock_limit())})")
        self._harden(
            "PR_SET_DUMPABLE",
            lambda: memory.make_non_dumpable() or "PR_SET_DUMPABLE 0: no core, no same-uid ptrace, no /proc/PID/mem; core size limit 0",
        )
        # 3. The secrets, read before the daemon opens a descriptor of its own,
        #    so an fd:N source names only what the caller handed down.
        self.memory_note = choose_memory(self.args.memory)
        self.vault.load(self.args.secrets, self.insecure)
        # 4. The signals' wake-up pipe and the log.
        self.wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for number in HANDLED:
            signal.signal(number, _note_signal)
        signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        self.log = Log(self.args.quiet)
        # 5. The socket (0600) and the pidfile.
        self.endpoint = Endpoint(self.args.socket, self.args.pidfile)
        # 6. The capability and the supervised program.
        if self.args.exec:
            self.door, tree_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.door.setblocking(False)
            try:
                self.supervised = Supervised(self.args.exec, self.endpoint.socket_path, tree_end.fileno())
            except Failure:
                self.endpoint.remove()
                raise
            finally:
                tree_end.close()
        # 7. No seccomp filter: the reference has none (REFERENCE_LACKS).
        self._announce_ready()

    def _harden(self, what, step):
        try:
            self.steps.append(step())
        except (OSError, ValueError) as error:
            if not self.insecure:
                raise Failure(
                    Exit.HARDENING,
                    f"{what} failed ({error}); or pass --insecure-allow-unlocked to run without this protection",
                ) from None
            self.steps.append(f"INSECURE: {what} failed ({error})")

    def _memory(self):
        if any(not secret.locked for secret in self.vault.secrets.values()):
            return "UNLOCKED (insecure)"
        return BACKEND

    def _announce_ready(self):
        for step in self.steps:
            self.log.line(f"hardening: {step}")
        for replaced in self.endpoint.replaced:
            self.log.line(f"replaced {replaced}")
        for secret_name, secret in self.vault.secrets.items():
            self.log.line(f"holding secret {secret_name} ({secret.length} bytes, {self._memory()})")
        program = ""
        if self.supervised:
            s = self.supervised
            no_cgroup = f"; no cgroup: {s.cgroup_unavailable}" if s.cgroup_unavailable else ""
            self.log.line(
                f"supervising pid {s.program} in process group {s.pgid} (panic kills it by {s.kill_mechanism()}{no_cgroup})"
            )
            program = f" program={s.program}"
        self.log.line(f"memory: {self._memory()} ({self.memory_note})")
        line = (
            f"dazai daemon ready: pid={os.getpid()} socket={self.endpoint.socket_path} state=waiting-for-heartbeat "
            f"secrets={len(self.vault.secrets)} memory={self._memory()} seccomp=off{program} implementation={IMPLEMENTATION}\n"
        )
        try:
            os.write(1, line.encode())
        except OSError:
            pass

    # The loop.

    def run(self):
        while True:
            handlers = {self.wakeup_read: self._on_signals}
            if self.accept_paused_until is None:
                handlers[self.endpoint.listener.fileno()] = self._accept
            if self.door is not None:
                handlers[self.door.fileno()] = self._on_door
            if self.heartbeat is not None:
                handlers[self.heartbeat.sock.fileno()] = self._on_heartbeat_input
            for control in self.controls:
                handlers[control.sock.fileno()] = lambda events, c=control: self._on_control_input(c)
            for watcher in self.watchers:
                handlers[watcher.sock.fileno()] = lambda events, w=watcher: self._on_held(w, self.watchers, "a watch connection", "watch")
            for standby in self.standbys:
                handlers[standby.sock.fileno()] = lambda events, s=standby: self._on_held(s, self.standbys, "a standby heartbeat", "standby heartbeat")
            poller = select.poll()
            for fd in handlers:
                poller.register(fd, select.POLLIN)
            ready = dict(poller.poll(self._poll_timeout()))
            # Signals first: they may end everything.
            for fd in sorted(ready, key=lambda fd: fd != self.wakeup_read):
                code = handlers[fd](ready[fd])
                if code is not None:
                    return code
            self._expire_deadlines()

    def _deadlines(self):
        if self.liveness == "waiting" and self.arm_deadline is not None:
            yield self.arm_deadline
        if self.liveness == "grace":
            yield self.grace_deadline
        if self.heartbeat is not None and self.args.ping_timeout:
            yield self.heartbeat.last_ping + self.args.ping_timeout
        if self.accept_paused_until is not None:
            yield self.accept_paused_until
        yield from (control.deadline for control in self.controls)
        yield from (get[3] for get in self.pending_gets)

    def _poll_timeout(self):
        soonest = min(self._deadlines(), default=None)
        if soonest is None:
            return None
        return max(0, int((soonest - time.monotonic()) * 1000) + 1)

    def _on_signals(self, _events):
        try:
            numbers = os.read(self.wakeup_read, 512)
        except BlockingIOError:
            return None
        for number in numbers:
            if number in (signal.SIGTERM, signal.SIGINT):
                return self._clean_shutdown(name(number))
            if number == signal.SIGUSR2 or number in UNEXPECTED_ENDINGS:
                self._panic(Reason(name(number)))
            elif number in (signal.SIGUSR1, signal.SIGHUP):
                self._session_lost(Reason(name(number)))
            elif number == signal.SIGCHLD:
                code = self._on_child_status()
                if code is not None:
                    return code
        return None

    def _accept(self, _events):
        while True:
            try:
                sock, _ = self.endpoint.listener.accept()
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError as error:
                self.log.line(f"accept failed ({error.strerror}); retrying in {int(ACCEPT_BACKOFF * 1000)}ms")
                self.accept_paused_until = time.monotonic() + ACCEPT_BACKOFF
                return None
            try:
                pid, uid = peer_credentials(sock)
            except OSError:
                sock.close()
                continue
            if uid != os.getuid():
                send(sock, f"ERR refused: peer uid {uid} is not the daemon's uid {os.getuid()}")
                sock.close()
                self.log.limited("foreign peer", f"refused a connection from uid {uid} (pid {pid})")
                continue
            if len(self.controls) >= MAX_CONTROLS:
                send(sock, "ERR busy: too many open connections; retry")
                sock.close()
                continue
            sock.setblocking(False)
            try:
                pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
            except OSError:
                pidfd = None
            self.controls.append(Connection(sock, pid, pidfd, time.monotonic() + CONTROL_DEADLINE))

    @staticmethod
    def _receive(connection):
        """Reads what is available; False when the peer closed the connection."""
        try:
            data = connection.sock.recv(MAX_LINE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        connection.lines.data += data
        return bool(data)

    def _on_heartbeat_input(self, _events=None):
        heartbeat = self.heartbeat
        if not self._receive(heartbeat):
            return self._session_lost(Reason("heartbeat connection closed", heartbeat_ended=True))
        while True:
            try:
                line = heartbeat.lines.next_line()
            except ProtocolError:
                line = b""
            if line is None:
                return None
            if line == PING:
                heartbeat.last_ping = time.monotonic()
                if not send(heartbeat.sock, "PONG"):
                    return self._session_lost(Reason("heartbeat connection closed", heartbeat_ended=True))
                continue
            send(heartbeat.sock, "ERR only PING is allowed on the heartbeat; treating the session as lost")
            return self._session_lost(Reason("heartbeat connection sent garbage"))

    def _on_control_input(self, control):
        if control not in self.controls:
            return None
        open_ = self._receive(control)
        try:
            line = control.lines.next_line()
        except ProtocolError as error:
            self.controls.remove(control)
            self._refuse(control, error)
            control.close()
            return None
        if line is not None:
            self.controls.remove(control)
            return self._serve(control, line)
        if not open_:
            self.controls.remove(control)
            control.close()
        return None

    def _refuse(self, control, error):
        send(control.sock, f"ERR {error}")
        self.log.limited("bad request", f"refused a request from pid {control.pid}: {error}")

    def _serve(self, control, line):
        """Answers one request; the connection is closed after unless it is kept."""
        try:
            request = parse_request(line)
        except ProtocolError as error:
            self._refuse(control, error)
            control.close()
            return None
        verb = request[0]
        kept = False
        if verb == "HEARTBEAT":
            kept = self._attach_heartbeat(control)
        elif verb == "HEARTBEAT STANDBY":
            kept = self._attach_standby(control)
        elif verb == "STATUS":
            send(control.sock, "STATUS " + json.dumps(self._status(), separators=(",", ":")))
        elif verb == "REGISTER":
            _, pid, group = request
            held = None
            if pid is None:
                pid, held, control.pidfd = control.pid, control.pidfd, None
            self._register(control, pid, held, group)
        elif verb == "WATCH":
            kept = self._attach_watcher(control)
        elif verb == "GET":
            self._refuse_get_without_capability(control, request[1])
        elif verb == "STOP":
            send(control.sock, "OK stopping: secrets wiped, nothing killed")
            control.close()
            return self._clean_shutdown(f"STOP request from pid {control.pid}")
        elif verb == "PANIC":
            hard = request[1]
            send(control.sock, "OK panic requested")
            reason = Reason(f"PANIC{' HARD' if hard else ''} request from pid {control.pid}")
            if hard:
                self._panic(reason)
            self._session_lost(reason)
        if not kept:
            control.close()
        return None

    def _attach_heartbeat(self, control):
        if self.heartbeat is not None:
            send(control.sock, f"BUSY heartbeat already held by pid {self.heartbeat.pid}")
            self.log.limited("second heartbeat", f"refused a second heartbeat from pid {control.pid} (BUSY)")
            return False
        ping = self.args.ping_timeout or "none"
        if not send(control.sock, f"OK heartbeat attached ping-timeout={ping}"):
            return False
        rescued = " within the grace window: panic cancelled" if self.liveness == "grace" else ""
        self.log.line(f"heartbeat attached by pid {control.pid}{rescued}")
        control.since, control.last_ping = time.time(), time.monotonic()
        self.heartbeat = control
        self.liveness, self.grace_deadline, self.grace_reason = "attached", None, None
        self.armed = True
        self._serve_pending_gets()
        # A PING sent right behind the request is already buffered.
        if control.lines.data:
            self._on_heartbeat_input()
        return True

    def _attach_standby(self, control):
        if self.heartbeat is None:
            return self._attach_heartbeat(control)
        holder = self.heartbeat.pid
        if not self.args.grace:
            send(
                control.sock,
                f"ERR refused: the heartbeat is held by pid {holder} and this daemon has no grace window, so the end "
                "of that session panics whoever else is logged in; fix: start the daemon with --grace SECS to let "
                "this session take over",
            )
            return False
        if len(self.standbys) >= MAX_STANDBYS:
            send(control.sock, "ERR busy: too many standby heartbeats; retry")
            return False
        reply = f"OK {STANDING_BY}: the heartbeat is held by pid {holder}; this session takes it over if that one ends"
        if not send(control.sock, reply):
            return False
        self.log.line(f"standby heartbeat from pid {control.pid} (held by pid {holder})")
        self.standbys.append(control)
        return True

    def _hand_over_to_standby(self):
        while self.heartbeat is None and self.standbys:
            standby = self.standbys.pop(0)
            self.log.line(f"handing the heartbeat over to standby pid {standby.pid}")
            standby.lines = LineBuffer()
            if not self._attach_heartbeat(standby):
                standby.close()

    def _attach_watcher(self, control):
        if len(self.watchers) >= MAX_WATCHERS:
            send(control.sock, "ERR busy: too many watch connections; retry")
            return False
        if not send(control.sock, "OK watching: this connection closes when the daemon ends; send nothing on it"):
            return False
        self.log.line(f"watch attached by pid {control.pid}")
        self.watchers.append(control)
        return True

    def _on_held(self, held, holders, what, kind):
        """A held connection ends when its peer closes it or breaks its silence."""
        if held not in holders:
            return None
        try:
            data = held.sock.recv(1)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if data:
            send(held.sock, f"ERR {what} carries nothing; closing it")
        holders.remove(held)
        held.close()
        self.log.line(f"{kind} by pid {held.pid} ended")
        return None

    def _register(self, control, pid, held, group):
        what = " and its process group" if group else ""
        why = None
        if pid <= 1:
            why = "pid 1 and pids below it cannot be registered"
        elif pid == os.getpid():
            why = "it is the daemon itself"
        elif group and os.getpgid(0) == pid:
            why = "its process group holds the daemon"
        if why:
            send(
                control.sock,
                f"ERR cannot register pid {pid}{what}: {why}; fix: register the process that is to die with the session",
            )
            if held is not None:
                os.close(held)
            return
        try:
            os.kill(pid, 0)
            if group and os.getpgid(pid) != pid:
                send(
                    control.sock,
                    f"ERR cannot register pid {pid} with its group: it does not lead a process group; fix: start it "
                    "in its own group (setpgid(0, 0))",
                )
                return
            self.registry.register(pid, held, group)
            held = None
        except OSError as error:
            send(control.sock, f"ERR cannot register pid {pid}: {_errno_text(error)}")
            return
        finally:
            if held is not None:
                os.close(held)
        self.log.line(f"registered pid {pid}{what} (requested by pid {control.pid})")
        send(control.sock, f"OK registered pid {pid}{what}")

    def _refuse_get_without_capability(self, control, secret_name):
        send(
            control.sock,
            "ERR refused: a connection to the socket grants no secret; only the supervised program and its "
            "descendants, which hold the capability (DAZAI_CAPABILITY_FD), may GET; fix: run the program under "
            "`dazai run` or `dazai daemon --exec` and call `dazai get` there",
        )
        self.log.limited("get without capability", f"secret {secret_name} refused to pid {control.pid}: no capability")

    # The capability.

    def _on_door(self, events):
        for _ in range(DOOR_BATCH):
            if self.door is None:
                return None
            try:
                line, ancillary, flags, _ = self.door.recvmsg(
                    MAX_LINE, socket.CMSG_SPACE(array.array("i").itemsize), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
                )
            except OSError:
                break
            received = array.array("i")
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received.frombytes(data[: len(data) - len(data) % received.itemsize])
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(received) != 1:
                for fd in received:
                    os.close(fd)
                # No one to answer: dropped. A message of neither kind is the
                # tree's end closing, which the poll flags report below.
                if not line and not received:
                    break
                continue
            reply = socket.socket(fileno=received[0])
            self._serve_capable(line.removesuffix(b"\n"), reply)
        if events & (select.POLLHUP | select.POLLERR):
            # Nobody holds the tree's end any more: nothing more can arrive.
            self.door.close()
            self.door = None
        return None

    def _serve_capable(self, line, reply):
        try:
            pid, _ = peer_credentials(reply)
        except OSError:
            pid = 0
        try:
            request = parse_request(line)
        except ProtocolError as error:
            send(reply, f"ERR {error}")
            reply.close()
            return
        if request[0] != "GET":
            send(reply, "ERR the capability carries GET only; fix: send other requests on the socket")
            reply.close()
            return
        secret_name = request[1]
        if self.liveness == "attached":
            self._hand_out_secret(reply, secret_name, pid)
        elif self.liveness == "waiting":
            deadline = time.monotonic() + UNARMED_GET_WAIT
            if self.arm_deadline is not None:
                deadline = min(deadline, self.arm_deadline)
            if len(self.pending_gets) >= MAX_PENDING_GETS:
                send(reply, "ERR busy: too many GETs wait for the heartbeat; retry")
                reply.close()
            else:
                self.pending_gets.append((reply, secret_name, pid, deadline))
        else:
            send(
                reply,
                "ERR refused: the session was lost; no secret is handed out during the grace window; fix: re-attach "
                "the heartbeat (`dazai client`)",
            )
            reply.close()
            self.log.line(f"secret {secret_name} refused to pid {pid}: grace window")

    def _hand_out_secret(self, reply, secret_name, pid):
        secret = self.vault.secrets.get(secret_name)
        if secret is None:
            send(reply, f"ERR no secret named {secret_name}")
            outcome = "refused (no such secret)"
        else:
            with secret.view() as value:
                send(reply, f"SECRET {secret.length}", value)
            outcome = "handed out"
        reply.close()
        self.log.line(f"secret {secret_name} {outcome} to pid {pid}")

    def _serve_pending_gets(self):
        pending, self.pending_gets = self.pending_gets, []
        for reply, secret_name, pid, _ in pending:
            self._hand_out_secret(reply, secret_name, pid)

    # Deadlines, the session and the endings.

    def _expire_deadlines(self):
        now = time.monotonic()
        if self.accept_paused_until is not None and now >= self.accept_paused_until:
            self.accept_paused_until = None
        if self.liveness == "waiting" and self.arm_deadline is not None and now >= self.arm_deadline:
            self._panic(Reason(f"no heartbeat within {self.args.arm_timeout}s (--arm-timeout)"))
        if self.liveness == "grace" and now >= self.grace_deadline:
            self._panic(Reason(f"grace window expired after: {self.grace_reason}"))
        timeout = self.args.ping_timeout
        if self.heartbeat is not None and timeout and now >= self.heartbeat.last_ping + timeout:
            self._session_lost(Reason(f"no PING for {timeout}s (--ping-timeout)", heartbeat_ended=True))
        unarmed = [get for get in self.pending_gets if now >= get[3]]
        self.pending_gets = [get for get in self.pending_gets if now < get[3]]
        for reply, secret_name, pid, _ in unarmed:
            send(
                reply,
                "ERR refused: the switch is not armed (no heartbeat attached in time); fix: start `dazai client` in "
                "this session first",
            )
            reply.close()
            self.log.line(f"secret {secret_name} refused to pid {pid}: not armed")
        stalled = [control for control in self.controls if now >= control.deadline]
        self.controls = [control for control in self.controls if now < control.deadline]
        for control in stalled:
            send(control.sock, f"ERR timeout: no complete request within {int(CONTROL_DEADLINE)}s")
            control.close()

    def _session_lost(self, reason):
        """Panic, unless a grace window lets a heartbeat re-attach first."""
        if self.liveness == "grace":
            left = max(0.0, self.grace_deadline - time.monotonic())
            self.log.line(f"{reason} during the grace window: the panic stays due in {left:.1f}s")
        elif self.liveness == "attached" and self.args.grace:
            if self.heartbeat is not None:
                self.heartbeat.close()
                self.heartbeat = None
            self.log.line(
                f"session lost ({reason}); grace window of {self.args.grace}s for a heartbeat to re-attach"
            )
            self.liveness = "grace"
            self.grace_deadline = time.monotonic() + self.args.grace
            self.grace_reason = reason
            # A panic asked for (a signal, PANIC) is never handed over.
            if reason.heartbeat_ended:
                self._hand_over_to_standby()
        else:
            self._panic(reason)
        return None

    def _panic(self, reason):
        """Wipe, kill the registered processes and the tree, log one line, SIGKILL self."""
        wiped = self.vault.wipe_all()
        killed = self.registry.kill_all()
        tree = "none"
        if self.supervised is not None:
            tree = self.supervised.describe_kill(self.supervised.kill_all())
        self.log.always(
            f"PANIC: {reason}; killed registered [{', '.join(map(str, killed))}] and supervised {tree}; "
            f"wiped {wiped} secrets; SIGKILL self"
        )
        os.kill(os.getpid(), signal.SIGKILL)
        os.abort()

    def _on_child_status(self):
        if self.supervised is None:
            return None
        ended = self.supervised.ended()
        if ended is None:
            return None
        how, number = ended
        if how == "exited":
            return self._end_one_shot(f"exited with status {number}", number)
        if number in CRASH_OR_KILL:
            self._panic(Reason(f"supervised program killed by {name(number)}"))
        return self._end_one_shot(f"was stopped by {name(number)}", 128 + number)

    def _end_one_shot(self, how, code):
        wiped = self.vault.wipe_all()
        tree = self.supervised.describe_kill(self.supervised.end())
        self.endpoint.remove()
        self.log.line(
            f"supervised program {how}; wiped {wiped} secrets; killed anything it left running in {tree}; "
            f"exiting with {code}"
        )
        return code

    def _clean_shutdown(self, why):
        wiped = self.vault.wipe_all()
        self.endpoint.remove()
        program = ""
        if self.supervised is not None:
            program = (
                "; the supervised program runs on"
                if self.supervised.release()
                else "; the supervised program could not be released and dies with the daemon"
            )
        self.log.line(
            f"{why}: clean shutdown; wiped {wiped} secrets; removed socket and pidfile; killed nothing{program}"
        )
        return 0

    def _status(self):
        grace_left = None
        if self.liveness == "grace":
            grace_left = max(0.0, self.grace_deadline - time.monotonic())
        supervised = None
        if self.supervised is not None:
            s = self.supervised
            supervised = {
                "pid": s.program,
                "pgid": s.pgid,
                "kill": s.kill_mechanism(),
                "cgroup_unavailable": s.cgroup_unavailable,
            }
        return {
            "protocol": VERSION_TOKEN,
            "pid": os.getpid(),
            "armed": self.armed,
            "liveness": self.liveness,
            "heartbeat": None
            if self.heartbeat is None
            else {"pid": self.heartbeat.pid, "since": utc_timestamp(self.heartbeat.since)},
            "standbys": [standby.pid for standby in self.standbys],
            "grace_left_secs": grace_left,
            "ping_timeout_secs": self.args.ping_timeout,
            "grace_secs": self.args.grace,
            "arm_timeout_secs": self.args.arm_timeout,
            "secrets": [
                {"name": secret_name, "bytes": secret.length, "backend": self._memory(), "locked": secret.locked}
                for secret_name, secret in self.vault.secrets.items()
            ],
            "memory": self._memory(),
            "memory_note": self.memory_note,
            "locked_bytes": self.vault.locked_bytes(),
            "registered": self.registry.live_pids(),
            "waiting_gets": len(self.pending_gets),
            "supervised": supervised,
            "seccomp": "off",
            "hardening": {"steps": self.steps, "insecure": self.insecure},
            "implementation": IMPLEMENTATION,
            "reference_lacks": REFERENCE_LACKS,
        }


def _note_signal(_number, _frame):
    """The wake-up pipe carries the signal; the loop acts on it."""


def _limit(value):
    return "unlimited" if value == resource.RLIM_INFINITY else f"{value} bytes"


def run(args):
    """Runs the daemon; returns its exit code (the panic never returns)."""
    daemon = Daemon(args)
    try:
        daemon.start()
    except Failure:
        daemon.vault.wipe_all()
        raise
    code = daemon.run()
    sys.stdout.flush()
    return code
