"""What the commands can fail with: one line with cause and fix, and the
exit codes of the Rust `dazai` (docs/usage.md, "Exit codes")."""

import enum
import sys


class Exit(enum.IntEnum):
    INTERNAL = 1
    USAGE = 2
    NO_DAEMON = 3
    REFUSED = 4
    HARDENING = 5
    SECRET = 6
    ENDPOINT = 7
    SPAWN = 8
    INTERRUPTED = 130


class Failure(Exception):
    """A failure: exit code plus one line saying the cause and the fix."""

    def __init__(self, exit_code, message):
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message

    def report(self):
        """Prints `dazai: error: …` on stderr and gives the exit code."""
        try:
            sys.stderr.write(f"dazai: error: {self.message}\n")
            sys.stderr.flush()
        except OSError:
            pass
        return int(self.exit_code)
