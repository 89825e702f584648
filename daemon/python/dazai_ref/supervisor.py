"""The --exec child: started under a shim (dazai_ref.shim) in its own process
group, and in a cgroup where one can be made, that the panic kills whole.

The shim is spawned with posix_spawn(3), which copies none of the daemon's
memory, and carries PR_SET_PDEATHSIG(SIGKILL) as the program does: a daemon
killed hard takes the shim with it, and the shim the program. A clean
shutdown asks the shim to withdraw its death signal, so the program runs on.
"""

import os
import select
import signal
import sys

from .failure import Exit, Failure
from .signals import HANDLED

GO = b"G"
RELEASE = b"R"
RELEASED = b"A"
RELEASE_TIMEOUT_MS = 2000

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHIM = f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); from dazai_ref.shim import main; main()"


class Cgroup:
    """A cgroup v2 directory of the daemon's own, with its cgroup.kill open."""

    def __init__(self):
        root = _cgroup2_mount()
        if root is None:
            raise OSError("no cgroup v2 hierarchy is mounted")
        own = None
        with open("/proc/self/cgroup") as lines:
            for line in lines:
                if line.startswith("0::"):
                    own = line[3:].strip()
        if own is None:
            raise OSError("this process has no cgroup v2 path")
        self.dir = os.path.join(root, own.lstrip("/"), f"dazai-{os.getpid()}")
        try:
            os.mkdir(self.dir)
        except OSError as error:
            raise OSError(f"cannot create {self.dir} ({error.strerror}): no delegated cgroup") from None
        try:
            self.kill_fd = os.open(os.path.join(self.dir, "cgroup.kill"), os.O_WRONLY | os.O_CLOEXEC)
        except OSError as error:
            os.rmdir(self.dir)
            raise OSError(f"no cgroup.kill in {self.dir} ({error.strerror}): kernel older than 5.14") from None

    def adopt(self, pid):
        with open(os.path.join(self.dir, "cgroup.procs"), "w") as procs:
            procs.write(str(pid))

    def kill(self):
        try:
            return os.write(self.kill_fd, b"1") == 1
        except OSError:
            return False

    def remove(self):
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


def _cgroup2_mount():
    with open("/proc/self/mountinfo") as lines:
        for line in lines:
            left, _, right = line.partition(" - ")
            if right.split(" ")[0] == "cgroup2":
                return left.split(" ")[4]
    return None


class Supervised:
    """A supervised program and the means to kill everything it started."""

    def __init__(self, argv, socket_path, capability_fd):
        try:
            self.cgroup, self.cgroup_unavailable = Cgroup(), None
        except OSError as error:
            self.cgroup, self.cgroup_unavailable = None, str(error)
        control_read, self._control = os.pipe2(os.O_CLOEXEC)
        self._report, report_write = os.pipe2(os.O_CLOEXEC)
        handed = (control_read, report_write, capability_fd)
        for fd in handed:
            os.set_inheritable(fd, True)
        try:
            self.shim = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-c", _SHIM, str(os.getpid()), *map(str, handed), socket_path, "--", *argv],
                os.environ,
                setpgroup=0,
                setsigdef=HANDLED,
                setsigmask=(),
            )
        except OSError as error:
            raise _spawn_error(argv, "spawn", error.strerror) from None
        finally:
            for fd in (control_read, report_write):
                os.close(fd)
            os.set_inheritable(capability_fd, False)
        if self.cgroup is not None:
            try:
                self.cgroup.adopt(self.shim)
            except OSError:
                self.cgroup.remove()
                self.cgroup, self.cgroup_unavailable = None, "cannot move the child into the cgroup"
        os.write(self._control, GO)
        kind, _, text = _read_report(self._report).partition(" ")
        if kind != "S" or not text.isdigit():
            os.waitpid(self.shim, 0)
            raise _spawn_error(argv, "exec", text if kind == "E" else "the shim ended before starting the program")
        self.program = int(text)

    @property
    def pgid(self):
        return self.shim

    def kill_mechanism(self):
        return "cgroup.kill + process group" if self.cgroup else "process group"

    def describe_kill(self, cgroup_killed):
        """What a kill of the tree reached, for the log."""
        return f"process group {self.pgid}" + (" and its cgroup" if cgroup_killed else "")

    def kill_all(self):
        """SIGKILLs the whole tree; returns whether cgroup.kill was written."""
        cgroup_killed = self.cgroup is not None and self.cgroup.kill()
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except OSError:
            pass
        return cgroup_killed

    def release(self):
        """Lets the program outlive the daemon: True once the shim withdrew its death signal."""
        try:
            os.write(self._control, RELEASE)
        except OSError:
            return False
        poller = select.poll()
        poller.register(self._report, select.POLLIN)
        if not poller.poll(RELEASE_TIMEOUT_MS):
            return False
        return os.read(self._report, 1) == RELEASED

    def ended(self):
        """How the shim ended, ("exited", code) or ("signal", number), or None.

        The shim is left a zombie, so its pid, which is also the tree's
        process group id, cannot go to a new process before end() signals
        that group.
        """
        try:
            info = os.waitid(os.P_PID, self.shim, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return None
        if info is None:
            return None
        return ("exited" if info.si_code == os.CLD_EXITED else "signal", info.si_status)

    def end(self):
        """The program has ended: SIGKILLs what it left running (it could hold a
        secret it fetched), reaps the shim and removes the cgroup; returns
        whether cgroup.kill was written."""
        cgroup_killed = self.kill_all()
        os.waitpid(self.shim, 0)
        if self.cgroup is not None:
            self.cgroup.remove()
        return cgroup_killed


def _read_report(fd):
    line = b""
    while len(line) < 512 and not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line.decode(errors="replace").strip()


def _spawn_error(argv, what, cause):
    return Failure(
        Exit.SPAWN,
        f'cannot start "{argv[0]}": {what} failed ({cause}); fix: check that the program exists and is executable',
    )
