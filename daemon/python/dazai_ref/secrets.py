"""Secrets: where each comes from (NAME=SOURCE) and the vault that holds them."""

import os
import termios

from .failure import Exit, Failure
from .memory import MAX_SECRET_BYTES, LockedBuffer, MemoryError_, take_environment_variable
from .protocol import is_valid_name

SOURCES = "use fd:N, env:VAR, file:PATH, credential:NAME or prompt"

#: What the status says about the memory the reference holds secrets in.
BACKEND = "python-reference"
MEMORY_NOTE = (
    "bytearrays pinned with mlock(2), marked MADV_DONTDUMP and MADV_DONTFORK, wiped with "
    "explicit_bzero(3); CPython may copy a secret into unlocked heap: a reference, not a guarantee"
)


class SecretSpec:
    """NAME=SOURCE from the command line."""

    __slots__ = ("name", "kind", "value")

    def __init__(self, text):
        name, equals, source = text.partition("=")
        if not equals:
            raise ValueError("expected NAME=SOURCE, e.g. api=env:API_KEY")
        if not is_valid_name(name):
            raise ValueError(f'secret name "{name}" must be 1-64 of A-Z a-z 0-9 _ . -')
        kind, colon, value = source.partition(":")
        if kind == "fd" and colon:
            if not (value.isascii() and value.isdigit()):
                raise ValueError("fd:N needs a file descriptor number")
            value = int(value)
        elif (kind in ("env", "file") and value) or (kind == "credential" and is_valid_name(value)):
            pass
        elif source == "prompt":
            kind, value = "prompt", None
        else:
            raise ValueError(f'unknown secret source "{source}"; {SOURCES}')
        self.name, self.kind, self.value = name, kind, value

    def source(self):
        return self.kind if self.value is None else f"{self.kind}:{self.value}"


class Cancelled(Exception):
    """Ctrl-C at the prompt: what was typed is wiped."""


def choose_memory(flag):
    """The --memory choice (else DAZAI_MEMORY, else auto); returns the status note.
    The reference has one kind of memory: secretmem is refused with the reason."""
    source = "--memory "
    if flag is None:
        flag, source = os.environ.get("DAZAI_MEMORY") or None, "DAZAI_MEMORY="
    if flag is None or flag == "auto":
        return MEMORY_NOTE
    if flag == "locked":
        return f"{MEMORY_NOTE}; set by {source}locked"
    if flag == "secretmem":
        raise Failure(
            Exit.HARDENING,
            "secretmem unavailable: the Python reference has no memfd_secret(2) backend; "
            "fix: run the Rust daemon (`dazai daemon`) for secretmem, or choose --memory locked",
        )
    raise Failure(Exit.USAGE, f"DAZAI_MEMORY={flag!r} is not auto, locked or secretmem; fix: unset it or pick one")


class Vault:
    """The named secrets the daemon holds, each in a LockedBuffer whose locked pages are those it needs."""

    def __init__(self):
        self.secrets = {}

    def load(self, specs, insecure=False):
        """Reads every secret straight into locked memory, in command-line order;
        `insecure` (--insecure-allow-unlocked) keeps a secret that cannot be locked."""
        for spec in specs:
            if spec.name in self.secrets:
                raise Failure(
                    Exit.USAGE, f"secret {spec.name} is given twice; fix: give each --secret a distinct NAME"
                )
            try:
                self.secrets[spec.name] = read_secret(spec, insecure)
            except MemoryError_ as error:
                raise Failure(Exit.HARDENING, f"cannot read secret {spec.name} from {spec.source()}: {error}")
            except Cancelled:
                raise Failure(
                    Exit.INTERRUPTED,
                    f"cannot read secret {spec.name} from {spec.source()}: cancelled with Ctrl-C; what was "
                    "typed is wiped; fix: run it again to type the secret",
                )
            except (OSError, ValueError) as error:
                raise Failure(Exit.SECRET, f"cannot read secret {spec.name} from {spec.source()}: {error}")

    def wipe_all(self):
        """Wipes and unlocks every buffer; returns how many were wiped."""
        for secret in self.secrets.values():
            secret.close()
        return len(self.secrets)

    def locked_bytes(self):
        return sum(secret.locked_span for secret in self.secrets.values())


_TOO_LONG = f"the secret holds more than the {MAX_SECRET_BYTES}-byte limit; fix: hold a smaller secret"


def _buffer(capacity, insecure):
    try:
        return LockedBuffer(capacity)
    except MemoryError_:
        if not insecure:
            raise
        return LockedBuffer(capacity, lock=False)


def read_secret(spec, insecure=False):
    """One secret from its source, read into a locked buffer of the largest
    secret's size, whose unused pages are then unlocked: no second copy is
    made, and the pages locked are those the secret needs."""
    secret = _buffer(MAX_SECRET_BYTES, insecure)
    try:
        _read_source(spec, secret)
        secret.trim_trailing_newline()
        if secret.length == 0:
            raise ValueError("the secret is empty; fix: give it at least one byte")
        secret.unlock_unused()
        return secret
    except BaseException:
        secret.close()
        raise


def _read_source(spec, buffer):
    if spec.kind == "fd":
        _read_fd(spec.value, buffer)
    elif spec.kind == "env":
        if not take_environment_variable(spec.value, buffer):
            raise ValueError(f"environment variable {spec.value} is not set; fix: export it first")
    elif spec.kind == "file":
        _read_file(spec.value, buffer)
    elif spec.kind == "credential":
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if directory is None:
            raise ValueError(
                "CREDENTIALS_DIRECTORY is not set; fix: credential:NAME is for a systemd service with "
                "LoadCredential=NAME:… or LoadCredentialEncrypted=; elsewhere use file:PATH"
            )
        _read_file(os.path.join(directory, spec.value), buffer)
    else:
        _read_prompt(spec.name, buffer)


def _read_fd(fd, staging):
    try:
        os.fstat(fd)
    except OSError as error:
        raise ValueError(
            f"fd {fd} is not open ({os.strerror(error.errno)}); fix: pass the secret on that fd, e.g. `{fd}<file`"
        ) from None
    try:
        _read_whole(fd, staging)
    finally:
        os.close(fd)


def _read_whole(fd, staging):
    if not staging.read_from(fd):
        raise ValueError(_TOO_LONG)


def _read_file(path, staging):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise ValueError(f"{error.strerror}; fix: check the path and its permissions") from None
    try:
        _read_whole(fd, staging)
    finally:
        os.close(fd)


def _read_prompt(name, staging):
    """A no-echo prompt on the controlling terminal, one line, with the
    terminal's own erase and kill keys; Ctrl-C cancels."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        raise ValueError(
            f"no controlling terminal to prompt on ({error.strerror}); fix: use fd:N, env:VAR or file:PATH"
        ) from None
    saved = termios.tcgetattr(tty)
    silent = termios.tcgetattr(tty)
    silent[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG)
    silent[6][termios.VMIN], silent[6][termios.VTIME] = 1, 0
    keys = saved[6]
    interrupt, erase, kill, end = (ord(keys[i]) for i in (termios.VINTR, termios.VERASE, termios.VKILL, termios.VEOF))
    termios.tcsetattr(tty, termios.TCSAFLUSH, silent)
    try:
        os.write(tty, f"dazai: secret for {name} (input hidden): ".encode())
        with LockedBuffer(1) as key:
            while True:
                key.length = 0
                with key.free_space() as room:
                    if os.readv(tty, [room]) == 0:
                        return
                key.length = 1
                byte = key.view()[0]
                if byte in (0x0A, 0x0D) or (byte == end and staging.length == 0):
                    return
                if byte == interrupt:
                    raise Cancelled()
                if byte in (erase, 0x7F, 0x08):
                    if staging.length:
                        staging.length -= 1
                        staging.free_space()[0] = 0
                elif byte == kill:
                    staging.wipe()
                elif staging.length < staging.capacity:
                    staging.copy_from(key)
                else:
                    raise ValueError(_TOO_LONG)
    finally:
        os.write(tty, b"\n")
        termios.tcsetattr(tty, termios.TCSAFLUSH, saved)
        os.close(tty)
