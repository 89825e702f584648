"""The reference daemon observed from outside: its process (/proc), its
supervised program, the signals, the panic and the one-shot lifecycle."""

import os
import resource
import signal
import subprocess
import sys

from conftest import (
    as_user,
    eventually,
    is_alive,
    python_env,
    recv_line,
    scan_memory,
    smaps_of,
    spawn_helper,
    status_field,
    unprivileged_uid,
)

CANARY = "canary-lifecycle-93bf0e"
RECORD_PID = 'echo $$ > "$DIR/program.pid"; exec sleep 600'


def test_the_secret_lies_in_locked_no_dump_pages_of_the_daemon(start_daemon):
    daemon = start_daemon(secrets={"api": CANARY})
    assert int(status_field(daemon.pid, "VmLck").split()[0]) >= 4
    hits = scan_memory(daemon.pid, CANARY.encode())
    guarded = [
        (header, fields)
        for _, header, fields in hits
        if {"lo", "dd", "dc"} <= set(fields["VmFlags"].split()) and fields["Locked"] == fields["Size"]
    ]
    assert guarded, f"no copy in locked, no-dump memory: {hits}"
    # A reference, not a guarantee: copies elsewhere are CPython's (the lab counts them).


def test_an_env_secret_is_zeroed_in_the_daemons_original_environment(start_daemon):
    daemon = start_daemon(
        secrets={"api": CANARY},
        exec_=["sh", "-c", 'env > "$DIR/child.env.part"; mv "$DIR/child.env.part" "$DIR/child.env"; exec sleep 600'],
    )
    eventually("the program's environment", lambda: os.path.exists(daemon.path("child.env")))
    with open(f"/proc/{daemon.pid}/environ", "rb") as environ:
        assert CANARY.encode() not in environ.read()
    with open(daemon.path("child.env")) as child:
        listed = child.read()
    assert CANARY not in listed and "DAZAI_CAPABILITY_FD=" in listed


def test_an_unprivileged_daemon_is_non_dumpable_so_its_own_uid_cannot_read_it(start_daemon):
    uid = unprivileged_uid()
    daemon = start_daemon(secrets={"api": CANARY}, uid=uid)
    control = spawn_helper(start_daemon, ["sleep", "600"], **as_user(uid))
    probe = (
        "import sys\n"
        "for pid in sys.argv[1:]:\n"
        "    try:\n"
        "        open(f'/proc/{pid}/mem', 'rb').close()\n"
        "        print('readable')\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(daemon.pid), str(control.pid)],
        capture_output=True,
        text=True,
        env=python_env(),
        **as_user(uid),
    )
    assert result.stdout.split() == ["refused", "readable"], result.stderr
    # The kernel hands a non-dumpable process's /proc files to root.
    assert os.stat(f"/proc/{daemon.pid}/environ").st_uid == 0
    with open(f"/proc/{daemon.pid}/limits") as limits:
        core = next(line for line in limits if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core


def test_an_unprivileged_user_over_rlimit_memlock_is_refused_unless_insecure(start_daemon, tmp_path):
    def small_limit():
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))

    uid = unprivileged_uid()
    os.chown(tmp_path, uid, uid)
    os.chmod(tmp_path, 0o700)
    argv = [sys.executable, "-m", "dazai_ref", "daemon", "--socket", str(tmp_path / "d.sock"), "--secret", "api=env:S"]
    refused = subprocess.run(
        argv, env=python_env(S=CANARY), capture_output=True, text=True, preexec_fn=small_limit, **as_user(uid)
    )
    assert refused.returncode == 5, refused.stderr
    assert refused.stderr.count("\n") == 1 and "RLIMIT_MEMLOCK is 0 bytes" in refused.stderr, refused.stderr
    assert CANARY not in refused.stderr
    assert not (tmp_path / "d.sock").exists()
    insecure = start_daemon(
        ["--insecure-allow-unlocked"], secrets={"api": CANARY}, uid=uid, preexec_fn=small_limit
    )
    assert " memory=UNLOCKED (insecure) " in insecure.ready_line, insecure.ready_line
    assert status_field(insecure.pid, "VmLck") == "0 kB"


def test_an_unprivileged_user_under_the_old_kernels_64_kib_memlock_default_holds_a_secret(start_daemon):
    """Before Linux 5.16 (Debian 11's 5.10) RLIMIT_MEMLOCK is 64 KiB by default:
    reading a secret must fit in it, staging buffer and all."""

    def old_default():
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))

    daemon = start_daemon(secrets={"api": CANARY}, uid=unprivileged_uid(), preexec_fn=old_default)
    assert status_field(daemon.pid, "VmLck") == "4 kB"


def test_sigterm_wipes_removes_socket_and_pidfile_exits_zero_and_kills_nothing(start_daemon):
    daemon = start_daemon(secrets={"api": CANARY}, exec_=["sh", "-c", RECORD_PID])
    program = daemon.read_pid_file("program.pid")
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert not os.path.exists(daemon.socket) and not os.path.exists(daemon.path("dazai.pid"))
    assert is_alive(program), "the supervised program outlives a clean shutdown"
    assert "SIGTERM: clean shutdown; wiped 1 secrets" in daemon.log()


def test_the_daemon_exits_with_the_programs_status_or_128_plus_its_signal(start_daemon):
    exits = start_daemon(exec_=["sh", "-c", 'while [ ! -e "$DIR/go" ]; do sleep 0.01; done; exit 7'])
    open(exits.path("go"), "w").close()
    assert exits.wait_exit() == 7
    assert not os.path.exists(exits.socket)
    stopped = start_daemon(secrets={"api": CANARY}, exec_=["sh", "-c", RECORD_PID])
    os.kill(stopped.read_pid_file("program.pid"), signal.SIGTERM)
    assert stopped.wait_exit() == 128 + signal.SIGTERM
    assert "supervised program was stopped by SIGTERM; wiped 1 secrets; killed anything it left running" in stopped.log()
    assert "; exiting with 143" in stopped.log()


def test_a_program_killed_by_sigkill_runs_the_panic(start_daemon):
    daemon = start_daemon(secrets={"api": CANARY}, exec_=["sh", "-c", RECORD_PID])
    os.kill(daemon.read_pid_file("program.pid"), signal.SIGKILL)
    assert daemon.wait_exit() == -signal.SIGKILL
    assert "PANIC: supervised program killed by SIGKILL" in daemon.log()


def test_the_daemon_killed_hard_takes_its_program_by_the_parent_death_signal(start_daemon):
    daemon = start_daemon(exec_=["sh", "-c", RECORD_PID])
    program = daemon.read_pid_file("program.pid")
    daemon.process.kill()
    daemon.wait_exit()
    eventually("the program to die with its daemon", lambda: not is_alive(program))


def test_losing_the_heartbeat_kills_the_tree_and_the_registered_and_wipes(start_daemon):
    tree = 'echo $$ > "$DIR/program.pid"; sleep 600 & echo $! > "$DIR/child.pid"; wait'
    daemon = start_daemon(secrets={"api": CANARY}, exec_=["sh", "-c", tree])
    program, child = daemon.read_pid_file("program.pid"), daemon.read_pid_file("child.pid")
    victim = spawn_helper(start_daemon, ["sleep", "600"])
    assert daemon.exchange(f"dazai/1 REGISTER {victim.pid}\n".encode()) == f"OK registered pid {victim.pid}\n"
    heartbeat = daemon.heartbeat()
    heartbeat.close()
    assert daemon.wait_exit() == -signal.SIGKILL
    assert victim.wait(20) == -signal.SIGKILL
    for pid in (program, child):
        eventually(f"pid {pid} to be killed", lambda pid=pid: not is_alive(pid))
    log = daemon.log()
    assert f"PANIC: heartbeat connection closed; killed registered [{victim.pid}]" in log
    assert "wiped 1 secrets" in log and CANARY not in log


def test_a_reattach_within_the_grace_window_cancels_the_panic(start_daemon):
    daemon = start_daemon(["--grace", "30"], secrets={"api": CANARY})
    daemon.heartbeat().close()
    eventually("the grace window", lambda: daemon.status()["liveness"] == "grace")
    _again = daemon.heartbeat()
    assert daemon.status()["liveness"] == "attached"
    assert "within the grace window: panic cancelled" in daemon.log()
    assert daemon.process.poll() is None


def test_sigusr1_and_sighup_are_the_session_lost_and_sigusr2_bypasses_grace(start_daemon):
    graced = start_daemon(["--grace", "30"])
    _heartbeat = graced.heartbeat()
    graced.process.send_signal(signal.SIGUSR1)
    eventually("the grace window", lambda: graced.status()["liveness"] == "grace")
    graced.process.send_signal(signal.SIGUSR2)
    assert graced.wait_exit() == -signal.SIGKILL
    assert "PANIC: SIGUSR2" in graced.log()
    ungraced = start_daemon()
    _held = ungraced.heartbeat()
    ungraced.process.send_signal(signal.SIGHUP)
    assert ungraced.wait_exit() == -signal.SIGKILL
    assert "PANIC: SIGHUP" in ungraced.log()


def test_a_soft_panic_waits_out_the_grace_window_and_a_hard_one_does_not(start_daemon):
    soft = start_daemon(["--grace", "1"])
    _heartbeat = soft.heartbeat()
    assert soft.exchange(b"dazai/1 PANIC\n") == "OK panic requested\n"
    assert soft.wait_exit() == -signal.SIGKILL
    assert "PANIC: grace window expired after: PANIC request from pid" in soft.log()
    hard = start_daemon(["--grace", "600"])
    _held = hard.heartbeat()
    assert hard.exchange(b"dazai/1 PANIC HARD\n") == "OK panic requested\n"
    assert hard.wait_exit() == -signal.SIGKILL
    assert "PANIC: PANIC HARD request from pid" in hard.log()


def test_a_silent_heartbeat_loses_the_session_after_the_ping_timeout(start_daemon):
    daemon = start_daemon(["--ping-timeout", "1"])
    _silent = daemon.heartbeat()
    assert daemon.wait_exit() == -signal.SIGKILL
    assert "PANIC: no PING for 1s (--ping-timeout)" in daemon.log()


def test_no_heartbeat_within_the_arm_timeout_is_the_panic(start_daemon):
    daemon = start_daemon(["--arm-timeout", "1"])
    assert daemon.wait_exit() == -signal.SIGKILL
    assert "PANIC: no heartbeat within 1s (--arm-timeout)" in daemon.log()


def test_garbage_on_the_heartbeat_is_the_session_lost(start_daemon):
    daemon = start_daemon()
    heartbeat = daemon.heartbeat()
    heartbeat.sendall(b"PONG?\n")
    assert recv_line(heartbeat) == "ERR only PING is allowed on the heartbeat; treating the session as lost"
    assert daemon.wait_exit() == -signal.SIGKILL
    assert "PANIC: heartbeat connection sent garbage" in daemon.log()


def test_a_get_before_the_heartbeat_waits_for_it(start_daemon):
    program = 'python3 -m dazai_ref get api > "$DIR/got.part"; mv "$DIR/got.part" "$DIR/got"; exec sleep 600'
    daemon = start_daemon(secrets={"api": CANARY}, exec_=["sh", "-c", program.replace("python3", sys.executable)])
    eventually("the daemon to hold the early GET", lambda: daemon.status()["waiting_gets"] == 1)
    assert not os.path.exists(daemon.path("got"))
    _heartbeat = daemon.heartbeat()
    eventually("the waiting GET to be answered", lambda: os.path.exists(daemon.path("got")))
    with open(daemon.path("got")) as got:
        assert got.read() == CANARY


def test_stop_is_a_clean_shutdown_by_request(start_daemon):
    daemon = start_daemon(secrets={"api": CANARY})
    assert daemon.exchange(b"dazai/1 STOP\n") == "OK stopping: secrets wiped, nothing killed\n"
    assert daemon.wait_exit() == 0
    assert "STOP request from pid" in daemon.log()


def test_bad_start_up_input_is_one_line_with_its_exit_code_and_starts_nothing(tmp_path):
    os.chmod(tmp_path, 0o700)
    socket_path = str(tmp_path / "d.sock")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    cases = [
        (["--secret", "noequals"], 2, "expected NAME=SOURCE"),
        (["--secret", "a=ftp:x"], 2, 'unknown secret source "ftp:x"'),
        (["--secret", "api=env:DAZAI_UNSET_VARIABLE"], 6, "environment variable DAZAI_UNSET_VARIABLE is not set"),
        (["--secret", "api=fd:7"], 6, "fd 7 is not open"),
        (["--secret", "api=file:/nonexistent/secret"], 6, "No such file or directory"),
        (["--memory", "secretmem"], 5, "secretmem unavailable: the Python reference has no memfd_secret(2) backend"),
        (["--ping-timeout", "0"], 2, "not a whole number of seconds >= 1"),
        (["--socket", str(open_dir / "d.sock")], 7, "is writable by others"),
        (["--exec", "/nonexistent/program"], 8, 'cannot start "/nonexistent/program"'),
    ]
    for args, code, says in cases:
        argv = [sys.executable, "-m", "dazai_ref", "daemon", "--socket", socket_path, *args]
        result = subprocess.run(argv, env=python_env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == code, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and says in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not os.path.exists(socket_path), args


def test_a_secret_from_a_file_or_an_inherited_descriptor_loses_one_trailing_newline(start_daemon, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(CANARY + "\n")
    read, write = os.pipe()
    os.write(write, b"from-a-pipe\n\n")
    os.close(write)
    os.set_inheritable(read, True)
    daemon = start_daemon(
        ["--secret", f"file=file:{secret_file}", "--secret", f"pipe=fd:{read}"],
        pass_fds=(read,),
    )
    os.close(read)
    secrets = {secret["name"]: secret["bytes"] for secret in daemon.status()["secrets"]}
    assert secrets == {"file": len(CANARY), "pipe": len("from-a-pipe\n")}


def test_the_python_heartbeat_client_holds_the_session_and_ends_on_sighup(start_daemon):
    daemon = start_daemon(["--grace", "60"])
    client = spawn_helper(
        start_daemon,
        [sys.executable, "-m", "dazai_ref", "client", "--socket", daemon.socket],
        env=python_env(),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    eventually("the client to attach", lambda: daemon.status()["liveness"] == "attached")
    assert daemon.status()["heartbeat"]["pid"] == client.pid
    client.send_signal(signal.SIGHUP)
    assert client.wait(20) == 0
    assert b"session ended (SIGHUP); heartbeat released" in client.stderr.read()
    eventually("the daemon to see the session lost", lambda: daemon.status()["liveness"] == "grace")


def test_a_second_python_client_gets_busy_with_exit_4(start_daemon):
    daemon = start_daemon()
    _heartbeat = daemon.heartbeat()
    second = subprocess.run(
        [sys.executable, "-m", "dazai_ref", "client", "--socket", daemon.socket],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 4
    assert "heartbeat already held by pid" in second.stderr


def test_the_client_module_wipes_its_locked_copy_when_the_block_ends(start_daemon):
    program = (
        "import os, signal\n"
        "import dazai_ref\n"
        "here = os.environ['DIR'] + '/'\n"
        "def report(name, text):\n"
        "    open(here + name + '.part', 'w').write(text)\n"
        "    os.rename(here + name + '.part', here + name)\n"
        "def wait_for(name):\n"
        "    while not os.path.exists(here + name):\n"
        "        signal.sigtimedwait([], 0.01)\n"
        "with dazai_ref.get('api') as secret:\n"
        "    report('inside', f'{os.getpid()} {secret.address} {secret.length} {secret!r}')\n"
        "    wait_for('seen-inside')\n"
        "report('outside', 'done')\n"
        "wait_for('seen-outside')\n"
    )
    daemon = start_daemon(secrets={"api": CANARY}, exec_=[sys.executable, "-c", program])
    _heartbeat = daemon.heartbeat()
    eventually("the secret fetched", lambda: os.path.exists(daemon.path("inside")))
    with open(daemon.path("inside")) as inside:
        pid, address, length, shown = inside.read().split(" ", 3)
    pid, address, length = int(pid), int(address), int(length)
    assert CANARY not in shown and f"{len(CANARY)} bytes, locked" in shown
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        assert mem.read(length) == CANARY.encode()
        _, _, _, fields = next(m for m in smaps_of(pid) if m[0] <= address < m[1])
        assert {"lo", "dd"} <= set(fields["VmFlags"].split()), fields
        open(daemon.path("seen-inside"), "w").close()
        eventually("the block to end", lambda: os.path.exists(daemon.path("outside")))
        mem.seek(address)
        assert mem.read(length) == bytes(length)
    open(daemon.path("seen-outside"), "w").close()


def test_the_client_module_outside_the_tree_holds_no_capability():
    script = "import dazai_ref\ntry:\n    dazai_ref.get('api')\nexcept dazai_ref.client.NoCapability as e:\n    print(e.exit_code, e)\n"
    result = subprocess.run([sys.executable, "-c", script], env=python_env(), capture_output=True, text=True, timeout=60)
    code, message = result.stdout.split(" ", 1)
    assert code == "4" and "holds no capability to obtain a secret (DAZAI_CAPABILITY_FD is not set)" in message
