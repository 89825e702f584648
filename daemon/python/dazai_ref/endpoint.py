"""The daemon's socket and pidfile, made so that nobody else can use or
replace them (the same checks and messages as the Rust daemon)."""

import errno
import os
import socket
import stat

from .failure import Exit, Failure

_FIX = "fix: use a directory only you can write, e.g. `mkdir -m 700 DIR`, or --socket in $XDG_RUNTIME_DIR"


def default_socket_path():
    """$DAZAI_SOCKET, else $XDG_RUNTIME_DIR/dazai/dazai.sock, else /run/user/UID/dazai/dazai.sock."""
    if os.environ.get("DAZAI_SOCKET"):
        return os.environ["DAZAI_SOCKET"]
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return os.path.join(runtime, "dazai", "dazai.sock")


def _parent(path):
    return os.path.dirname(path) or "."


def _error(message):
    return Failure(Exit.ENDPOINT, message)


def _io_error(doing, error, option):
    return _error(
        f"{doing} ({error.strerror}); fix: check the path's owner, permissions and file system, or choose another {option}"
    )


class Endpoint:
    """The bound socket (non-blocking, 0600) and the written pidfile (0600)."""

    def __init__(self, socket_path, pidfile_path):
        self.socket_path = socket_path
        self.pidfile_path = pidfile_path or os.path.join(_parent(socket_path), "dazai.pid")
        self.replaced = []
        for path in (self.socket_path, self.pidfile_path):
            _ensure_private_directory(_parent(path))
        if _remove_stale_socket(self.socket_path):
            self.replaced.append(f"stale socket {self.socket_path}")
        self.listener = _bind_private(self.socket_path)
        try:
            if _write_pidfile(self.pidfile_path):
                self.replaced.append(f"stale pidfile {self.pidfile_path}")
        except Failure:
            os.unlink(self.socket_path)
            self.listener.close()
            raise

    def remove(self):
        for path in (self.socket_path, self.pidfile_path):
            try:
                os.unlink(path)
            except OSError:
                pass


def _ensure_private_directory(directory):
    if not os.path.lexists(directory):
        try:
            os.makedirs(directory, mode=0o700)
        except OSError as error:
            runtime = "set" if "XDG_RUNTIME_DIR" in os.environ else "not set: no login session made one"
            raise _error(
                f"cannot create socket directory {directory} ({error.strerror}); fix: create it with mode 0700, "
                f"or pass --socket / set DAZAI_SOCKET to a path in a directory only you can write "
                f"(XDG_RUNTIME_DIR is {runtime})"
            ) from None
    try:
        meta = os.lstat(directory)
    except OSError as error:
        raise _io_error(f"cannot inspect {directory}", error, "--socket") from None
    if not stat.S_ISDIR(meta.st_mode):
        raise _error(f"socket directory {directory} is a symlink or not a directory; {_FIX}")
    if meta.st_uid != os.getuid():
        raise _error(
            f"socket directory {directory} is owned by uid {meta.st_uid}, not by you (uid {os.getuid()}); {_FIX}"
        )
    if meta.st_mode & 0o022:
        raise _error(f"socket directory {directory} is writable by others (mode {meta.st_mode & 0o777:o}); {_FIX}")
    _ensure_safe_ancestors(directory)


def _ensure_safe_ancestors(directory):
    """Whoever may rename an ancestor may swap in a directory of their own."""
    current = os.path.realpath(directory)
    while current != "/":
        current = os.path.dirname(current)
        meta = os.stat(current)
        trusted = meta.st_uid in (0, os.getuid())
        others_may_write = meta.st_mode & 0o022 and not meta.st_mode & 0o1000
        if not trusted or others_may_write:
            what = "writable by others and not sticky" if trusted else "owned by another user"
            raise _error(
                f"{current} above the socket directory is {what} (uid {meta.st_uid}, "
                f"mode {meta.st_mode & 0o7777:o}); {_FIX}"
            )


def _remove_stale_socket(path):
    try:
        meta = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise _io_error(f"cannot inspect {path}", error, "--socket") from None
    if stat.S_ISLNK(meta.st_mode):
        raise _error(f"{path} is a symlink; refusing to follow it; fix: remove it or choose another --socket")
    if not stat.S_ISSOCK(meta.st_mode):
        raise _error(f"{path} exists and is not a socket; fix: remove it or choose another --socket")
    if meta.st_uid != os.getuid():
        raise _error(f"{path} is owned by uid {meta.st_uid}, not by you; fix: choose another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return True
    except OSError as error:
        raise _error(
            f"cannot tell whether a daemon answers on {path} ({error.strerror}); fix: remove it if no daemon runs"
        ) from None
    finally:
        probe.close()
    raise _error(
        f"a daemon already answers on {path}; fix: `dazai status --socket {path}`, or choose another --socket"
    )


def _bind_private(path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        listener.bind(path)
    except OSError as error:
        listener.close()
        raise _error(f"cannot bind {path} ({error.strerror}); fix: check the directory or choose another --socket") from None
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    listener.listen(128)
    listener.setblocking(False)
    return listener


def _write_pidfile(path):
    replaced = False
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            if replaced:
                raise _error(f"cannot create pidfile {path} (File exists); fix: choose another --pidfile") from None
            _remove_stale_pidfile(path)
            replaced = True
        except OSError as error:
            raise _error(f"cannot create pidfile {path} ({error.strerror}); fix: choose another --pidfile") from None
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return replaced


def _remove_stale_pidfile(path):
    meta = os.lstat(path)
    if not stat.S_ISREG(meta.st_mode):
        raise _error(
            f"pidfile {path} is a symlink or not a regular file; refusing it; fix: remove it or choose another --pidfile"
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        text = os.read(fd, 32).decode(errors="replace")
        os.close(fd)
    except OSError as error:
        raise _io_error(f"cannot read pidfile {path}", error, "--pidfile") from None
    text = text.strip()
    if text.isdigit() and int(text) > 0 and os.path.exists(f"/proc/{int(text)}"):
        raise _error(
            f"pidfile {path} names pid {int(text)}, which is running; fix: stop that daemon or choose another --pidfile"
        )
    try:
        os.unlink(path)
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise _io_error(f"cannot remove stale pidfile {path}", error, "--pidfile") from None
