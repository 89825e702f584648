"""python -m dazai_ref daemon|client|get: the reference's commands, with the
Rust `dazai`'s flag names and exit codes where they apply."""

import argparse
import os
import sys

from .failure import Exit, Failure


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, as every error of `dazai`; status 2 as clap's.
        self.exit(Exit.USAGE, f"dazai: error: {message}; fix: see `python -m dazai_ref {self.prog.split()[-1]} --help`\n")


def _secret_spec(text):
    from .secrets import SecretSpec

    try:
        return SecretSpec(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text):
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds >= 1")
    return int(text)


def _seconds(text):
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds")
    return int(text)


def _parser():
    from .endpoint import default_socket_path

    parser = _Parser(prog="python -m dazai_ref", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    daemon = commands.add_parser("daemon", help="hold secrets and panic when the session's heartbeat dies")
    daemon.add_argument("--socket", default=None, help="the daemon's UNIX socket [default: $DAZAI_SOCKET, else $XDG_RUNTIME_DIR/dazai/dazai.sock]")
    daemon.add_argument("--pidfile", default=None, help="pidfile, created mode 0600 [default: dazai.pid beside the socket]")
    daemon.add_argument("--secret", dest="secrets", action="append", default=[], type=_secret_spec, metavar="NAME=SOURCE",
                        help="a secret to hold; SOURCE is fd:N, env:VAR, file:PATH, credential:NAME or prompt. Repeatable.")
    daemon.add_argument("--ping-timeout", type=_positive, metavar="SECS", help="N seconds without a PING on the heartbeat is liveness lost")
    daemon.add_argument("--grace", type=_seconds, default=0, metavar="SECS", help="give a lost session N seconds to re-attach before the panic")
    daemon.add_argument("--arm-timeout", type=_positive, metavar="SECS", help="panic if no heartbeat attaches within N seconds")
    daemon.add_argument("--insecure-allow-unlocked", action="store_true", help="INSECURE: keep going when memory cannot be locked")
    daemon.add_argument("--memory", choices=["auto", "locked", "secretmem"], default=None,
                        help="the reference has one kind: auto and locked take it, secretmem is refused [default: $DAZAI_MEMORY, else auto]")
    daemon.add_argument("--quiet", action="store_true", help="log only the PANIC line and errors")
    client = commands.add_parser("client", help="hold the heartbeat for this session")
    client.add_argument("--socket", default=None)
    client.add_argument("--ping-interval", type=_positive, metavar="SECS")
    client.add_argument("--standby", action="store_true", help="stand by while another session holds the heartbeat")
    get = commands.add_parser("get", help="write a secret to stdout (inside the supervised tree only)")
    get.add_argument("name")
    parser.set_defaults(default_socket=default_socket_path)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after --exec is the program and its arguments, untouched.
    program = []
    if argv[:1] == ["daemon"] and "--exec" in argv:
        at = argv.index("--exec")
        argv, program = argv[:at], argv[at + 1 :]
        if not program:
            argv.append("--exec")
    args = _parser().parse_args(argv)
    args.exec = program
    if getattr(args, "socket", "unset") is None:
        args.socket = args.default_socket()
    if args.command == "daemon":
        from .daemon import run

        try:
            return run(args)
        except Failure as failure:
            return failure.report()
    if args.command == "client":
        from .heartbeat import main as client_main

        return client_main(args)
    return _get(args.name)


def _get(name):
    """Writes the secret to stdout from its locked buffer, then wipes it."""
    from .client import DazaiError, get

    try:
        with get(name) as secret, secret.view() as value:
            written = 0
            while written < len(value):
                written += os.write(1, value[written:])
    except DazaiError as error:
        sys.stderr.write(f"dazai: error: {error}\n")
        return int(error.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
