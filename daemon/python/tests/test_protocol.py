"""The wire protocol against a live reference daemon: replies, refusals, and
bad input that gets its ERR line while the heartbeat survives."""

import json
import os
import socket
import subprocess
import sys

from conftest import NOBODY, as_user, eventually, python_env, recv_line

CANARY = "canary-protocol-7d1e"


def assert_heartbeat_survives(daemon, heartbeat):
    heartbeat.sendall(b"PING\n")
    assert recv_line(heartbeat) == "PONG"
    status = daemon.status()
    assert status["liveness"] == "attached"
    assert status["secrets"][0]["bytes"] == len(CANARY)


def test_a_heartbeat_is_told_the_ping_timeout_and_each_ping_gets_a_pong(start_daemon):
    daemon = start_daemon(["--ping-timeout", "9"])
    with daemon.connect() as stream:
        stream.sendall(b"dazai/1 HEARTBEAT\nPING\nPING\n")
        lines = [recv_line(stream) for _ in range(3)]
        assert lines == ["OK heartbeat attached ping-timeout=9", "PONG", "PONG"]
        status = daemon.status()
        assert (status["liveness"], status["armed"]) == ("attached", True)
        assert status["heartbeat"]["pid"] == os.getpid()


def test_a_second_heartbeat_gets_busy_and_the_first_is_undisturbed(start_daemon):
    daemon = start_daemon(secrets={"api": CANARY})
    heartbeat = daemon.heartbeat()
    assert daemon.exchange(b"dazai/1 HEARTBEAT\n") == f"BUSY heartbeat already held by pid {os.getpid()}\n"
    assert_heartbeat_survives(daemon, heartbeat)


def test_status_is_json_that_names_the_reference_and_never_a_value(start_daemon):
    daemon = start_daemon(["--grace", "5", "--ping-timeout", "30"], secrets={"api": CANARY})
    reply = daemon.exchange(b"dazai/1 STATUS\n")
    assert CANARY not in reply
    status = json.loads(reply.removeprefix("STATUS "))
    assert status["pid"] == daemon.pid
    assert status["implementation"] == "python-reference"
    assert status["seccomp"] == "off"
    assert any(item.startswith("secretmem:") for item in status["reference_lacks"])
    assert status["secrets"] == [{"name": "api", "bytes": len(CANARY), "backend": "python-reference", "locked": True}]
    assert (status["grace_secs"], status["ping_timeout_secs"], status["liveness"]) == (5, 30, "waiting")


def test_get_on_the_socket_is_refused_and_register_grants_nothing(start_daemon):
    # No heartbeat: the panic its end would start must not kill this test,
    # which registers itself.
    daemon = start_daemon(secrets={"api": CANARY})
    refused = daemon.exchange(b"dazai/1 GET api\n")
    registered = daemon.exchange(b"dazai/1 REGISTER\n")
    still_refused = daemon.exchange(b"dazai/1 GET api\n")
    assert refused.startswith("ERR refused: a connection to the socket grants no secret")
    assert registered == f"OK registered pid {os.getpid()}\n"
    assert still_refused == refused
    assert daemon.status()["registered"] == [os.getpid()]
    assert CANARY not in daemon.log()


def test_register_refuses_pid_1_the_daemon_and_a_process_that_leads_no_group(start_daemon):
    daemon = start_daemon()
    for request, says in [
        (b"dazai/1 REGISTER 1\n", "pid 1"),
        (f"dazai/1 REGISTER {daemon.pid}\n".encode(), "it is the daemon itself"),
        (f"dazai/1 REGISTER {os.getpid()} GROUP\n".encode(), "does not lead a process group"),
    ]:
        reply = daemon.exchange(request)
        assert reply.startswith("ERR cannot register") and says in reply, reply
    assert daemon.status()["registered"] == []


def test_malformed_requests_get_err_and_the_heartbeat_survives(start_daemon):
    daemon = start_daemon(secrets={"api": CANARY})
    heartbeat = daemon.heartbeat()
    cases = [
        (b"dazai/1 GET " + b"a" * 400 + b"\n", "ERR line longer than 256 bytes"),
        (b"\x00\xff\xfe\x01garbage\n", "ERR line holds bytes outside printable ASCII"),
        (b"dazai/1 STATUS\x00\n", "ERR line holds bytes outside printable ASCII"),
        (b"dazai/1 FLY\n", "ERR unknown command FLY"),
        (b"dazai/9 STATUS\n", "ERR unsupported protocol version dazai/9; this daemon speaks dazai/1"),
        (b"STATUS\n", "ERR request does not start with the version token dazai/1"),
        (b"dazai/1 PANIC SOFTLY\n", "ERR bad arguments; usage: PANIC [HARD]"),
        (b"dazai/1 GET ../etc\n", "ERR bad arguments; usage: GET NAME (1-64 of A-Z a-z 0-9 _ . -)"),
    ]
    for request, expected in cases:
        assert daemon.exchange(request) == expected + "\n"
        assert_heartbeat_survives(daemon, heartbeat)


def test_a_stalled_connection_gets_err_timeout_and_the_heartbeat_survives(start_daemon):
    daemon = start_daemon(secrets={"api": CANARY})
    heartbeat = daemon.heartbeat()
    with daemon.connect() as slow:
        slow.sendall(b"dazai/1 STA")
        reply = b""
        while chunk := slow.recv(256):
            reply += chunk
    assert reply == b"ERR timeout: no complete request within 3s\n"
    assert_heartbeat_survives(daemon, heartbeat)


def test_a_flood_of_connections_is_answered_and_the_heartbeat_survives(start_daemon):
    daemon = start_daemon(secrets={"api": CANARY})
    heartbeat = daemon.heartbeat()
    for round_ in range(300):
        reply = daemon.exchange(b"dazai/1 HEARTBEAT\n" if round_ % 2 else b"\x07\x07\n")
        assert reply.startswith(("BUSY ", "ERR ")), reply
    assert_heartbeat_survives(daemon, heartbeat)


def test_a_peer_of_another_uid_is_refused_before_it_sends_anything(start_daemon):
    daemon = start_daemon(secrets={"api": CANARY})
    # Open the socket's file mode on purpose: the uid check must hold even so.
    os.chmod(daemon.socket, 0o666)
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(sys.argv[1])\n"
        "print(s.recv(256).decode(), end='')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, daemon.socket], capture_output=True, text=True, env=python_env(), **as_user(NOBODY)
    )
    assert result.stdout == f"ERR refused: peer uid {NOBODY} is not the daemon's uid {os.getuid()}\n", result.stderr
    eventually("the refusal logged", lambda: f"refused a connection from uid {NOBODY}" in daemon.log())


def test_a_watch_connection_stays_silent_and_reads_end_of_file_when_the_daemon_ends(start_daemon):
    daemon = start_daemon()
    with daemon.connect() as watch:
        watch.sendall(b"dazai/1 WATCH\n")
        assert recv_line(watch).startswith("OK watching:")
        assert daemon.status()["liveness"] == "waiting"
        daemon.process.terminate()
        assert daemon.wait_exit() == 0
        assert watch.recv(1) == b""


def test_the_capability_carries_get_only_and_answers_each_request_on_its_own_socket(start_daemon):
    program = (
        "import os, socket\n"
        "capability = socket.socket(fileno=int(os.environ['DAZAI_CAPABILITY_FD']))\n"
        "out = []\n"
        "for request in [b'dazai/1 GET api\\n', b'dazai/1 GET nope\\n', b'dazai/1 STATUS\\n']:\n"
        "    ours, theirs = socket.socketpair()\n"
        "    socket.send_fds(capability, [request], [theirs.fileno()])\n"
        "    theirs.close()\n"
        "    reply = b''\n"
        "    while chunk := ours.recv(4096):\n"
        "        reply += chunk\n"
        "    out.append(reply.decode())\n"
        "open(os.environ['DIR'] + '/replies.part', 'w').write('|'.join(out))\n"
        "os.rename(os.environ['DIR'] + '/replies.part', os.environ['DIR'] + '/replies')\n"
    )
    daemon = start_daemon(secrets={"api": CANARY}, exec_=[sys.executable, "-c", program])
    _heartbeat = daemon.heartbeat()
    eventually("the program's replies", lambda: os.path.exists(daemon.path("replies")))
    with open(daemon.path("replies")) as replies:
        assert replies.read().split("|") == [
            f"SECRET {len(CANARY)}\n{CANARY}",
            "ERR no secret named nope\n",
            "ERR the capability carries GET only; fix: send other requests on the socket\n",
        ]


def test_a_capability_message_without_a_reply_socket_is_dropped_and_the_daemon_serves_on(start_daemon):
    program = (
        "import os, socket\n"
        "capability = socket.socket(fileno=int(os.environ['DAZAI_CAPABILITY_FD']))\n"
        "capability.send(b'dazai/1 GET api\\n')\n"
        "ours, theirs = socket.socketpair()\n"
        "socket.send_fds(capability, [b'dazai/1 GET api\\n'], [theirs.fileno()])\n"
        "theirs.close()\n"
        "reply = b''\n"
        "while chunk := ours.recv(4096):\n"
        "    reply += chunk\n"
        "open(os.environ['DIR'] + '/reply.part', 'wb').write(reply)\n"
        "os.rename(os.environ['DIR'] + '/reply.part', os.environ['DIR'] + '/reply')\n"
    )
    daemon = start_daemon(secrets={"api": CANARY}, exec_=[sys.executable, "-c", program])
    _heartbeat = daemon.heartbeat()
    eventually("the program's reply", lambda: os.path.exists(daemon.path("reply")))
    with open(daemon.path("reply"), "rb") as reply:
        assert reply.read() == f"SECRET {len(CANARY)}\n{CANARY}".encode()
    assert daemon.log().count("handed out") == 1


def test_a_program_outside_the_tree_with_a_socket_of_its_own_obtains_nothing(start_daemon):
    daemon = start_daemon(secrets={"api": CANARY}, exec_=["sleep", "600"])
    _heartbeat = daemon.heartbeat()
    script = (
        "import os, socket, sys\n"
        "mine, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        "other.close()\n"
        "os.environ['DAZAI_CAPABILITY_FD'] = str(mine.fileno())\n"
        "import dazai_ref\n"
        "try:\n"
        "    dazai_ref.get('api')\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error.exit_code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=python_env(), timeout=60)
    assert CANARY not in result.stdout + result.stderr
    assert result.stdout.split() == ["DaemonGone", "3"], result.stdout + result.stderr
    assert "handed out" not in daemon.log()


def test_connecting_to_the_socket_is_checked_against_the_daemons_uid(start_daemon):
    daemon = start_daemon()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(daemon.socket)
        import struct

        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    assert (pid, uid) == (daemon.pid, os.getuid())
