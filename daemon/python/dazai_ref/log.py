"""The daemon's log on stderr: one write per line, never waiting for room (a
line that does not fit is dropped and counted), never a secret's value."""

import os
import stat
import time


def utc_timestamp(seconds):
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


class Log:
    LIMITED_LINES = 5
    LIMITED_WINDOW = 1.0

    def __init__(self, quiet):
        self.quiet = quiet
        self.dropped = 0
        self.windows = {}
        mode = os.fstat(2).st_mode
        try:
            # A description of the log's own: O_NONBLOCK on stderr's shared
            # one would make the terminal's and the program's writes fail too.
            if stat.S_ISREG(mode):
                raise OSError("a regular file never waits for a reader")
            self.fd = os.open("/proc/self/fd/2", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.fd = os.dup(2)

    def line(self, message):
        if not self.quiet:
            self.always(message)

    def always(self, message):
        """A line even under --quiet: the PANIC line."""
        text = ""
        if self.dropped:
            text += self._stamp(f"log: {self.dropped} lines dropped (stderr was full)")
        text += self._stamp(message)
        try:
            written = os.write(self.fd, text.encode())
            self.dropped = 0 if written == len(text) else self.dropped + 1
        except OSError:
            self.dropped += 1

    def limited(self, kind, message):
        """At most five lines of one kind a second; the rest are counted."""
        now = time.monotonic()
        started, passed, suppressed = self.windows.get(kind, (now, 0, 0))
        if now - started >= self.LIMITED_WINDOW:
            started, passed = now, 0
        if passed >= self.LIMITED_LINES:
            self.windows[kind] = (started, passed, suppressed + 1)
            return
        self.windows[kind] = (started, passed + 1, 0)
        if suppressed:
            message += f" ({suppressed} more like it suppressed)"
        self.line(message)

    @staticmethod
    def _stamp(message):
        return f"dazai[{os.getpid()}] {utc_timestamp(time.time())} {message}\n"
