"""Secret memory as far as CPython allows: a `bytearray` whose pages are
pinned with mlock(2), left out of core dumps (MADV_DONTDUMP) and out of
forked children (MADV_DONTFORK), and wiped with explicit_bzero(3).

A reference, not a guarantee: CPython copies `bytes` and `str` freely (an
environment variable's value, a decoded line, a slice), and those copies
live in ordinary heap, unlocked, dumpable and never wiped. This module keeps
the copies it makes itself in locked pages; it cannot reach the others.
"""

import ctypes
import errno
import os
import resource

_libc = ctypes.CDLL(None, use_errno=True)
for _name, _args in {
    "mlock": (ctypes.c_void_p, ctypes.c_size_t),
    "munlock": (ctypes.c_void_p, ctypes.c_size_t),
    "madvise": (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int),
    "explicit_bzero": (ctypes.c_void_p, ctypes.c_size_t),
    "strlen": (ctypes.c_void_p,),
    "strncmp": (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t),
    "prctl": (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong),
}.items():
    getattr(_libc, _name).argtypes = _args
_libc.strlen.restype = ctypes.c_size_t
_libc.memmove.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_libc.memmove.restype = ctypes.c_void_p

PAGE = os.sysconf("SC_PAGE_SIZE")
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_DONTDUMP = 16
MADV_DODUMP = 17
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4

#: Largest secret a source may hold, as the Rust daemon: each costs its size in locked memory.
MAX_SECRET_BYTES = 64 * 1024


class MemoryError_(Exception):
    """Memory could not be locked or marked (exit 5)."""


def _check(result, doing):
    if result != 0:
        code = ctypes.get_errno()
        raise MemoryError_(f"{doing} failed ({os.strerror(code)})")


def prctl(option, value=0):
    """prctl(2) with one argument; raises OSError on failure."""
    if _libc.prctl(option, value, 0, 0, 0) == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def set_parent_death_signal(signal_number):
    """PR_SET_PDEATHSIG: `signal_number` when the parent dies (0 withdraws it)."""
    prctl(PR_SET_PDEATHSIG, signal_number)


def make_non_dumpable():
    """PR_SET_DUMPABLE 0: no core, no same-uid ptrace, no /proc/PID/mem; core size 0 too."""
    prctl(PR_SET_DUMPABLE, 0)
    if _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(errno.EPERM, "the process is still dumpable")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def raise_memlock_limit():
    """Raises RLIMIT_MEMLOCK's soft limit to its hard limit; returns the new limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
    return hard


def _describe_limit():
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


class LockedBuffer:
    """Up to `capacity` secret bytes in pages of a `bytearray` of its own.

    The pages hold nothing else (the bytearray is a page larger than the
    pages it locks, and the secret starts at the first page boundary inside
    it), so unlocking them on close cannot unlock anything else.
    """

    __slots__ = ("_raw", "_pin", "_start", "_offset", "_span", "capacity", "length", "locked")

    def __init__(self, capacity, lock=True):
        self._raw = None
        if capacity < 1:
            raise ValueError("a secret buffer holds at least one byte")
        self._span = -(-capacity // PAGE) * PAGE
        self._raw = bytearray(self._span + PAGE)
        # A ctypes view pins the bytearray: it cannot be resized (and so
        # moved, leaving an unwiped copy) while the view exists.
        self._pin = (ctypes.c_char * len(self._raw)).from_buffer(self._raw)
        address = ctypes.addressof(self._pin)
        self._offset = -address % PAGE
        self._start = address + self._offset
        self.capacity = capacity
        self.length = 0
        self.locked = False
        if lock:
            self._lock()

    def _lock(self):
        if _libc.mlock(self._start, self._span) != 0:
            code = ctypes.get_errno()
            self._release()
            raise MemoryError_(
                f"cannot lock {self._span} bytes of secret memory: RLIMIT_MEMLOCK is "
                f"{_describe_limit()} ({os.strerror(code)}); fix: raise it (`ulimit -l`, "
                "LimitMEMLOCK=), or hold fewer or smaller secrets"
            )
        self.locked = True
        try:
            _check(_libc.madvise(self._start, self._span, MADV_DONTDUMP), "madvise(MADV_DONTDUMP)")
            _check(_libc.madvise(self._start, self._span, MADV_DONTFORK), "madvise(MADV_DONTFORK)")
        except MemoryError_:
            self.close()
            raise

    @property
    def address(self):
        """Where the secret's first byte is (for tests that look it up in /proc)."""
        return self._start

    @property
    def locked_span(self):
        """Bytes of locked pages this buffer holds."""
        return self._span if self.locked else 0

    def view(self):
        """A memoryview of the bytes held; no copy is made."""
        return memoryview(self._raw)[self._offset : self._offset + self.length]

    def free_space(self):
        """A memoryview of the room left, for readv/recv_into."""
        return memoryview(self._raw)[self._offset + self.length : self._offset + self.capacity]

    def copy_from_address(self, address, count):
        """Copies `count` bytes at `address` (C memory) in after what is held."""
        if self.length + count > self.capacity:
            raise ValueError("more bytes than the buffer holds")
        _libc.memmove(self._start + self.length, address, count)
        self.length += count

    def copy_from(self, other):
        """Copies what `other` holds in after what is held, with no Python object between."""
        self.copy_from_address(other.address, other.length)

    def read_from(self, fd):
        """Reads `fd` to end of file straight into the buffer; returns False if it does not fit."""
        while self.length < self.capacity:
            with self.free_space() as room:
                count = os.readv(fd, [room])
            if count == 0:
                return True
            self.length += count
        spare = LockedBuffer(1)
        try:
            with spare.free_space() as room:
                return os.readv(fd, [room]) == 0
        finally:
            spare.close()

    def trim_trailing_newline(self):
        """Drops one trailing newline (the one `echo` and editors add), zeroing it."""
        if self.length and self._raw[self._offset + self.length - 1] == 0x0A:
            self.length -= 1
            self._raw[self._offset + self.length] = 0

    def unlock_unused(self):
        """Unlocks the pages past the bytes held, never written, and stops the
        buffer from growing into them: a buffer sized for the largest secret
        then keeps locked only the pages its secret needs (before Linux 5.16,
        RLIMIT_MEMLOCK allows 64 KiB by default, the largest secret's size)."""
        needed = max(1, -(-self.length // PAGE)) * PAGE
        if self.locked and needed < self._span:
            tail, size = self._start + needed, self._span - needed
            _libc.madvise(tail, size, MADV_DODUMP)
            _libc.madvise(tail, size, MADV_DOFORK)
            _check(_libc.munlock(tail, size), "munlock")
            self._span = needed
        self.capacity = min(self.capacity, max(1, self.length))

    def wipe(self):
        """Zeroes every byte with explicit_bzero, which the compiler may not remove."""
        if self._raw is not None:
            _libc.explicit_bzero(ctypes.addressof(self._pin), len(self._raw))
        self.length = 0

    def _release(self):
        self._pin = None
        self._raw = None

    def close(self):
        """Wipes, then gives the pages back to the heap as ordinary memory."""
        if self._raw is None:
            return
        self.wipe()
        if self.locked:
            _libc.madvise(self._start, self._span, MADV_DODUMP)
            _libc.madvise(self._start, self._span, MADV_DOFORK)
            _libc.munlock(self._start, self._span)
            self.locked = False
        self._release()

    @property
    def closed(self):
        return self._raw is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else ("locked" if self.locked else "UNLOCKED")
        return f"<{type(self).__name__} {self.length} bytes, {state}>"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a secret buffer is never pickled")


def take_environment_variable(name, buffer):
    """Moves the value of `name` from the C environment into `buffer` and zeroes
    it there in place (so /proc/PID/environ no longer shows it), then removes
    the variable. Returns False if it is not set.

    CPython made its own copy for `os.environ` at start-up: that `str` is
    dropped here but not wiped (it lives in ordinary heap).
    """
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(_libc, "environ")
    prefix = name.encode() + b"="
    found = False
    index = 0
    while environ[index]:
        entry = environ[index]
        if _libc.strncmp(entry, prefix, len(prefix)) == 0:
            value = entry + len(prefix)
            count = _libc.strlen(value)
            if count > buffer.capacity - buffer.length:
                raise ValueError(f"it holds more than {buffer.capacity - buffer.length} bytes")
            if not found:
                buffer.copy_from_address(value, count)
            _libc.explicit_bzero(value, count)
            found = True
        index += 1
    if name in os.environ:
        del os.environ[name]
    return found
