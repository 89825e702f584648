"""dazai_ref: the Python reference implementation of dazai/1.

A second implementation of the protocol (docs/protocol.md) and of the
daemon's lifecycle, and a client for Python programs. It does the best
CPython can do for a secret (locked, no-dump bytearrays wiped with
explicit_bzero, a non-dumpable process) and no more: CPython copies bytes
freely, so a secret may live in unlocked heap. A reference, not a guarantee;
docs/python.md says what it lacks beside the Rust daemon.
"""

from .client import Secret, get

__all__ = ["Secret", "get"]
