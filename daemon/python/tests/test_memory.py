"""LockedBuffer: what the kernel reports about its pages, and what its memory holds."""

import ctypes
import os
import pickle
import subprocess
import sys

import pytest
from conftest import as_user, python_env, smaps_of, status_field, unprivileged_uid

from dazai_ref.memory import PAGE, LockedBuffer


def mapping_of(address):
    for start, end, header, fields in smaps_of(os.getpid()):
        if start <= address < end:
            return start, end, header, fields
    raise AssertionError(f"no mapping holds {address:#x}")


def fill(buffer, data):
    with buffer.free_space() as room:
        room[: len(data)] = data
    buffer.length = len(data)


def test_a_buffers_pages_are_locked_kept_out_of_cores_and_out_of_children():
    with LockedBuffer(100) as buffer:
        start, end, header, fields = mapping_of(buffer.address)
        flags = fields["VmFlags"].split()
        assert {"lo", "dd", "dc"} <= set(flags), header + " " + fields["VmFlags"]
        assert fields["Locked"] == fields["Size"], fields
        # The secret's pages are a mapping of their own: nothing else shares the lock.
        assert (start, end) == (buffer.address, buffer.address + PAGE), header


def test_wipe_zeroes_the_bytes_where_they_lie():
    with LockedBuffer(32) as buffer:
        fill(buffer, b"canary-wipe-in-place")
        assert ctypes.string_at(buffer.address, 20) == b"canary-wipe-in-place"
        buffer.wipe()
        assert ctypes.string_at(buffer.address, 32) == bytes(32)
        assert buffer.length == 0


def test_close_wipes_and_gives_the_locked_pages_back():
    before = int(status_field(os.getpid(), "VmLck").split()[0])
    buffer = LockedBuffer(3 * PAGE)
    held = int(status_field(os.getpid(), "VmLck").split()[0])
    fill(buffer, b"canary-close")
    address = buffer.address
    buffer.close()
    after = int(status_field(os.getpid(), "VmLck").split()[0])
    assert held - before == 3 * PAGE // 1024
    assert after == before
    assert ctypes.string_at(address, 12) == bytes(12)
    assert "dd" not in mapping_of(address)[3]["VmFlags"].split()


def test_a_buffers_repr_and_pickle_never_show_the_bytes():
    with LockedBuffer(64) as buffer:
        fill(buffer, b"canary-repr")
        for shown in (repr(buffer), str(buffer), f"{buffer}"):
            assert "canary" not in shown and "11 bytes" in shown, shown
        with pytest.raises(TypeError):
            pickle.dumps(buffer)


def test_the_newline_an_editor_adds_is_dropped_and_zeroed():
    with LockedBuffer(16) as buffer:
        fill(buffer, b"canary\n")
        buffer.trim_trailing_newline()
        assert bytes(buffer.view()) == b"canary"
        assert ctypes.string_at(buffer.address, 8) == b"canary\0\0"


def test_a_lock_beyond_rlimit_memlock_is_refused_for_an_unprivileged_user():
    # Root may lock past the limit (CAP_IPC_LOCK): the refusal is a property
    # of an ordinary user, so a real one runs it.
    script = (
        "import resource\n"
        "from dazai_ref.memory import LockedBuffer, MemoryError_\n"
        "resource.setrlimit(resource.RLIMIT_MEMLOCK, (8192, 8192))\n"
        "LockedBuffer(4096).close()\n"
        "try:\n"
        "    LockedBuffer(64 * 1024)\n"
        "except MemoryError_ as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=python_env(),
        capture_output=True,
        text=True,
        **as_user(unprivileged_uid()),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cannot lock 65536 bytes of secret memory: RLIMIT_MEMLOCK is 8192 bytes"), result.stdout
    assert "fix:" in result.stdout
