"""Helpers: start the reference daemon in a private directory, speak the raw
protocol, observe processes from outside (/proc, wait statuses, files)."""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: How long a wait for an effect may take before the test fails: bounds a wait, measures nothing.
PATIENCE = 20.0
NOBODY = 65534


def eventually(what, condition, patience=PATIENCE):
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for: {what}")
        time.sleep(0.01)


def is_alive(pid):
    """A live process, not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"


def python_env(**extra):
    env = dict(os.environ)
    env.pop("DAZAI_SOCKET", None)
    env.pop("DAZAI_CAPABILITY_FD", None)
    env["PYTHONPATH"] = PACKAGE_DIR
    env.update(extra)
    return env


def as_user(uid):
    """Popen arguments that run a process as `uid` (needs root), or as this
    process's own uid when that is the one asked for."""
    if uid == os.getuid():
        return {}
    if os.getuid() != 0:
        pytest.fail(f"acting as uid {uid} needs root (this runs as uid {os.getuid()}); CI runs as root")
    return {"user": uid, "group": uid, "extra_groups": []}


def unprivileged_uid():
    """A real non-root user: nobody under root, else this process's own uid."""
    return NOBODY if os.getuid() == 0 else os.getuid()


class Daemon:
    def __init__(self, args=(), secrets=None, exec_=None, uid=None, preexec_fn=None, extra_env=None, pass_fds=()):
        uid = os.getuid() if uid is None else uid
        self.dir = tempfile.mkdtemp(prefix="dazai-ref-test-")
        os.chmod(self.dir, 0o711)
        if uid != os.getuid():
            os.chown(self.dir, uid, uid)
        self.socket = os.path.join(self.dir, "dazai.sock")
        env = python_env(DIR=self.dir, DAZAI_SOCKET=self.socket, **(extra_env or {}))
        argv = [sys.executable, "-m", "dazai_ref", "daemon", "--socket", self.socket, *args]
        for name, value in (secrets or {}).items():
            var = "DAZAI_TEST_SECRET_" + name.upper().replace(".", "_").replace("-", "_")
            env[var] = value
            argv += ["--secret", f"{name}=env:{var}"]
        if exec_:
            argv += ["--exec", *exec_]
        self.log_file = open(os.path.join(self.dir, "daemon.log"), "wb")
        if uid != os.getuid():
            os.chown(self.log_file.name, uid, uid)
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            preexec_fn=preexec_fn,
            pass_fds=pass_fds,
            **as_user(uid),
        )
        self.pid = self.process.pid
        self.ready_line = self._read_ready_line()

    def _read_ready_line(self):
        poller = select.poll()
        poller.register(self.process.stdout, select.POLLIN)
        if not poller.poll(PATIENCE * 1000):
            pytest.fail(f"no ready line; log: {self.log()}")
        line = self.process.stdout.readline().decode()
        if not line.startswith("dazai daemon ready:"):
            pytest.fail(f"daemon did not get ready: {line!r}; log: {self.log()}")
        return line

    def path(self, name):
        return os.path.join(self.dir, name)

    def log(self):
        with open(os.path.join(self.dir, "daemon.log"), errors="replace") as log:
            return log.read()

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket)
        sock.settimeout(PATIENCE)
        return sock

    def exchange(self, request):
        """Sends raw bytes on a new connection; everything answered until close."""
        with self.connect() as sock:
            sock.sendall(request)
            reply = b""
            try:
                while chunk := sock.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                # The daemon closed with part of an overlong request unread:
                # its reply came before the reset.
                pass
        return reply.decode(errors="replace")

    def status(self):
        reply = self.exchange(b"dazai/1 STATUS\n")
        assert reply.startswith("STATUS "), reply
        return json.loads(reply[len("STATUS ") :])

    def heartbeat(self):
        """A raw heartbeat connection, attached."""
        sock = self.connect()
        sock.sendall(b"dazai/1 HEARTBEAT\n")
        reply = recv_line(sock)
        assert reply.startswith("OK heartbeat attached"), reply
        return sock

    def wait_exit(self):
        """The wait status, as subprocess gives it (-N for signal N)."""
        try:
            return self.process.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon {self.pid} did not exit; log: {self.log()}")

    def read_pid_file(self, name):
        path = self.path(name)

        def written():
            try:
                with open(path) as file:
                    return file.read().endswith("\n")
            except OSError:
                return False

        eventually(f"{path} to be written", written)
        with open(path) as file:
            return int(file.read())

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.log_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def recv_line(sock):
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line.decode(errors="replace").rstrip("\n")


@pytest.fixture
def start_daemon():
    started = []
    helpers = []

    def start(*args, **kwargs):
        daemon = Daemon(*args, **kwargs)
        started.append(daemon)
        return daemon

    start.helpers = helpers
    yield start
    for process in helpers:
        if process.poll() is None:
            process.kill()
            process.wait()
    for daemon in started:
        program = None
        try:
            with open(daemon.path("program.pid")) as file:
                program = int(file.read())
        except (OSError, ValueError):
            pass
        daemon.stop()
        if program and is_alive(program):
            os.kill(program, signal.SIGKILL)


def spawn_helper(start_daemon, argv, **kwargs):
    """A helper process the test starts; killed at the test's end."""
    process = subprocess.Popen(argv, **kwargs)
    start_daemon.helpers.append(process)
    return process


def smaps_of(pid):
    """The mappings of /proc/PID/smaps: (start, end, header line, {field: value})."""
    mappings = []
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            first = line.split()[0]
            if "-" in first and ":" not in first:
                start, end = (int(part, 16) for part in first.split("-"))
                mappings.append((start, end, line.strip(), {}))
            else:
                key, _, value = line.partition(":")
                mappings[-1][3][key] = value.strip()
    return mappings


def status_field(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(field)


def scan_memory(pid, needle):
    """Every readable mapping of `pid` (read through /proc/PID/mem) that holds `needle`."""
    hits = []
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end, header, fields in smaps_of(pid):
            if header.split()[1][0] != "r" or "[vvar]" in header or "[vsyscall]" in header:
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except OSError:
                continue
            at = data.find(needle)
            while at >= 0:
                hits.append((start + at, header, fields))
                at = data.find(needle, at + 1)
    return hits
