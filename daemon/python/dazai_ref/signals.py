"""The signals the daemon acts on, shared by the daemon and its shim."""

import signal

#: Python names it from 3.11 on; Linux numbers it 16 on x86_64 and aarch64,
#: so the reference runs on Debian 11's Python 3.9 too.
SIGSTKFLT = getattr(signal, "SIGSTKFLT", 16)

#: Signals whose default ends a process and which the daemon never uses:
#: one that arrives is somebody ending it, so it panics rather than die unwiped.
UNEXPECTED_ENDINGS = (
    signal.SIGQUIT,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGIO,
    signal.SIGPWR,
    signal.SIGXCPU,
    signal.SIGXFSZ,
    SIGSTKFLT,
)

#: Everything the daemon reads from its wake-up pipe.
HANDLED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
) + UNEXPECTED_ENDINGS

#: A supervised program that died by one of these crashed or was killed
#: outright (SIGKILL is the OOM killer's), rather than asked to stop: the panic.
CRASH_OR_KILL = (
    signal.SIGKILL,
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGILL,
    signal.SIGFPE,
    signal.SIGABRT,
    signal.SIGSYS,
    signal.SIGTRAP,
)


def name(number):
    """SIGUSR1 for 10, as the Rust daemon names signals."""
    if number == SIGSTKFLT:
        return "SIGSTKFLT"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
