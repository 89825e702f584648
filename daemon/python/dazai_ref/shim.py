"""The shim between the daemon and its supervised program (see supervisor.py).

argv: DAEMON_PID CONTROL_FD REPORT_FD CAPABILITY_FD SOCKET -- PROGRAM [ARGS...]
It reports `S PID` once the program runs (or `E CAUSE`), relays a release
request from the daemon, and ends the way the program ended.
"""

import os
import select
import signal
import sys

from .memory import set_parent_death_signal
from .protocol import CAPABILITY_ENV, SOCKET_ENV
from .signals import HANDLED
from .supervisor import GO, RELEASE, RELEASED


def main():
    daemon, control, report, capability = (int(arg) for arg in sys.argv[1:5])
    socket_path, program_argv = sys.argv[5], sys.argv[7:]
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != daemon:
        os._exit(1)
    # As the Rust shim, which inherits the daemon's blocked signals: a signal
    # for the daemon's process group is not the shim's to act on.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    for fd in (control, report):
        os.set_inheritable(fd, False)
    _take_the_terminal_foreground(daemon)
    if os.read(control, 1) != GO:
        os._exit(1)
    errors_read, errors_write = os.pipe2(os.O_CLOEXEC)
    program = os.fork()
    if program == 0:
        try:
            set_parent_death_signal(signal.SIGKILL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.set_inheritable(capability, True)
            environment = dict(os.environ)
            environment[SOCKET_ENV] = socket_path
            environment[CAPABILITY_ENV] = str(capability)
            os.execvpe(program_argv[0], program_argv, environment)
        except OSError as error:
            os.write(errors_write, f"{error.strerror} (os error {error.errno})".encode())
        os._exit(127)
    os.close(errors_write)
    failed = os.read(errors_read, 512).decode(errors="replace")
    if failed:
        os.waitpid(program, 0)
        os.write(report, f"E {failed}\n".encode())
        os._exit(127)
    os.write(report, f"S {program}\n".encode())
    _relay_exit(program, control, report)


def _take_the_terminal_foreground(daemon):
    """An interactive program must own the terminal when the daemon's group did."""
    try:
        if os.tcgetpgrp(0) != os.getpgid(daemon):
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTTOU,))
        os.tcsetpgrp(0, os.getpid())
    except OSError:
        pass


def _relay_exit(program, control, report):
    program_fd = os.pidfd_open(program)
    poller = select.poll()
    poller.register(program_fd, select.POLLIN)
    poller.register(control, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == control:
                if os.read(control, 1) == RELEASE:
                    set_parent_death_signal(0)
                    os.write(report, RELEASED)
                else:
                    poller.unregister(control)
            elif fd == program_fd:
                _, status = os.waitpid(program, 0)
                if os.WIFSIGNALED(status):
                    _die_by(os.WTERMSIG(status))
                os._exit(os.waitstatus_to_exitcode(status))


def _die_by(number):
    """Ends the shim by the program's own signal, so the daemon sees the same status."""
    if number != signal.SIGKILL:
        signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (number,))
    os.kill(os.getpid(), number)
    os._exit(128 + number)


if __name__ == "__main__":
    main()
