//! Hostile input against a running daemon that holds a live heartbeat: each
//! test asserts the documented reply, then that the heartbeat and the secret
//! are untouched (`Guarded::assert_untouched`). The table of every case, with
//! the tests elsewhere that cover the rest, is in docs/robustness.md.

use std::fs;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dazai_e2e::{
    dazai, eventually, exists, is_alive, is_root, open_fds, refused_start, signal, DaemonBuilder,
    Guarded, CANARY, NOBODY,
};
use nix::sys::signal::Signal;

/// "Malformed input of any kind gets `ERR <cause>` … and the connection is
/// closed" (docs/protocol.md), even when the line never ends: the daemon
/// stops reading at 256 bytes instead of buffering what follows.
#[test]
fn a_megabyte_without_a_newline_gets_one_err_line_and_is_never_buffered() {
    let mut guarded = Guarded::start(&[]);
    let letters = vec![b'A'; 1 << 20];
    let garbage: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .map(|b| if b == b'\n' { 0 } else { b })
        .collect();
    for blob in [letters, garbage] {
        let mut stream = guarded.daemon.connect();
        let mut writer = stream.try_clone().unwrap();
        let sending = std::thread::spawn(move || writer.write_all(&blob));

        let reply = reply_until_closed(&mut stream);

        assert_eq!(reply, "ERR line longer than 256 bytes\n");
        assert!(
            sending.join().unwrap().is_err(),
            "the daemon read the whole megabyte instead of closing at the limit"
        );
    }
    guarded.assert_untouched();
}

/// A slowloris that keeps sending a byte at a time still gets the 3-second
/// deadline: activity does not extend it.
#[test]
fn a_request_trickled_byte_by_byte_is_dropped_at_its_deadline_though_it_keeps_sending() {
    let mut guarded = Guarded::start(&[]);
    let mut stream = guarded.daemon.connect();
    let mut writer = stream.try_clone().unwrap();
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        for byte in b"dazai/1 STATUS".iter().cycle().take(100) {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });

    let reply = reply_until_closed(&mut stream);
    let took = started.elapsed();

    assert_eq!(reply, "ERR timeout: no complete request within 3s\n");
    // The deadline, not an early cut: the reply names it, and it took at least that long.
    assert!(
        took >= Duration::from_millis(2_900),
        "dropped after {took:?}, before the 3 s deadline"
    );
    trickle.join().unwrap();
    guarded.assert_untouched();
}

/// Ten thousand connections opened and closed as fast as four threads can:
/// every one is accepted and let go, and the daemon holds exactly the
/// descriptors it held before.
#[test]
fn ten_thousand_rapid_connects_leave_heartbeat_secret_and_descriptors_as_they_were() {
    let mut guarded = Guarded::start(&[]);
    let daemon_pid = guarded.daemon.pid;
    let socket = guarded.daemon.socket.clone();
    let before = open_fds(daemon_pid);

    let connected: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut connected = 0;
                    for round in 0..2_500 {
                        let mut stream = UnixStream::connect(&socket).expect("connect");
                        if round % 4 == 0 {
                            let _ = stream.write_all(b"\x07\n");
                        }
                        connected += 1;
                    }
                    connected
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });

    assert_eq!(connected, 10_000);
    eventually("the daemon to let every connection go", || {
        open_fds(daemon_pid) == before
    });
    guarded.assert_untouched();
}

/// Connections that never send (and ones half-closed before sending) cannot
/// pile up: at most 64 wait, each gets `ERR timeout` at its deadline, the
/// rest `ERR busy` at once, a half-closed one is let go without a word, and
/// none is held afterwards.
#[test]
fn idle_and_half_closed_connections_are_timed_out_or_refused_and_all_let_go() {
    let mut guarded = Guarded::start(&[]);
    let daemon_pid = guarded.daemon.pid;
    let before = open_fds(daemon_pid);
    let half_closed: Vec<UnixStream> = (0..20)
        .map(|_| {
            let stream = guarded.daemon.connect();
            stream.shutdown(Shutdown::Write).unwrap();
            stream
        })
        .collect();
    let idle: Vec<UnixStream> = (0..100).map(|_| guarded.daemon.connect()).collect();

    for mut stream in half_closed {
        let reply = reply_until_closed(&mut stream);
        assert_eq!(
            reply, "",
            "a half-closed connection is closed without a reply"
        );
    }
    let (mut timed_out, mut busy) = (0, 0);
    for mut stream in idle {
        let reply = reply_until_closed(&mut stream);
        match reply.as_str() {
            "ERR timeout: no complete request within 3s\n" => timed_out += 1,
            "ERR busy: too many open connections; retry\n" => busy += 1,
            other => panic!("unexpected reply to an idle connection: {other:?}"),
        }
    }

    assert!((1..=64).contains(&timed_out), "{timed_out} waited");
    assert_eq!(timed_out + busy, 100);
    eventually("the daemon to hold no idle connection", || {
        open_fds(daemon_pid) == before
    });
    guarded.assert_untouched();
}

/// Peers are checked with `SO_PEERCRED`, and a peer of another uid is refused
/// (docs/design.md, "The session and liveness"). The socket path is opened to
/// everyone first, as a careless
/// chmod would, so only the credential check stands between the other user
/// and the daemon: it can neither read status, attach, fetch nor panic.
#[test]
fn a_peer_of_another_uid_is_refused_even_through_an_open_socket_and_cannot_panic() {
    if !is_root() {
        eprintln!("skipped: switching to another uid needs root (the lab runs this as root)");
        return;
    }
    let mut guarded = Guarded::start(&[]);
    let socket = guarded.daemon.socket.clone();
    fs::set_permissions(guarded.daemon.dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();

    // The client checks whom it talks to before it sends a byte.
    for request in [&["status"][..], &["panic", "--hard"], &["client"]] {
        let output = dazai()
            .args(request)
            .arg("--socket")
            .arg(&socket)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(7), "{request:?}: {stderr}");
        assert!(
            stderr.contains("is served by uid 0, not by you; nothing was sent to it"),
            "{request:?}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{request:?} got output");
    }
    // A raw peer is refused by the daemon before it reads a byte.
    let raw = Command::new("python3")
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.connect(sys.argv[1])\n\
             print(s.recv(500).decode())\n\
             try: s.sendall(b'dazai/1 PANIC HARD\\n')\n\
             except BrokenPipeError: pass",
        ])
        .arg(&socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&raw.stdout);
    assert!(
        reply.contains("ERR refused: peer uid 65534 is not the daemon's uid 0"),
        "{reply} {}",
        String::from_utf8_lossy(&raw.stderr)
    );

    // Each of the four connected: the three clients, then the raw peer.
    let log = guarded.daemon.log();
    assert_eq!(
        log.matches("refused a connection from uid 65534").count(),
        4,
        "{log}"
    );
    guarded.assert_untouched();
}

/// A second `dazai daemon` aimed at the running one's files through every
/// unsafe path is refused with one line, and leaves the running daemon, its
/// socket and its pidfile as they were, and no file of its own behind.
#[test]
fn refused_start_ups_leave_the_running_daemon_and_every_file_as_they_were() {
    let mut guarded = Guarded::start(&[]);
    let live_socket = guarded.daemon.socket.clone();
    let live_pidfile = guarded.daemon.path("dazai.pid");
    let pidfile_before = fs::read_to_string(&live_pidfile).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let at = |name: &str| scratch.path().join(name);
    symlink(&live_socket, at("link.sock")).unwrap();
    symlink(&live_pidfile, at("pid.link")).unwrap();
    fs::create_dir(at("open")).unwrap();
    fs::set_permissions(at("open"), fs::Permissions::from_mode(0o777)).unwrap();

    let cases = [
        (
            "symlinked socket",
            at("link.sock"),
            at("a.pid"),
            "is a symlink",
        ),
        (
            "socket directory writable by others",
            at("open").join("b.sock"),
            at("b.pid"),
            "is writable by others",
        ),
        (
            "pidfile of a running daemon",
            at("c.sock"),
            live_pidfile.clone(),
            "which is running",
        ),
        (
            "symlinked pidfile",
            at("d.sock"),
            at("pid.link"),
            "is a symlink or not a regular file",
        ),
        (
            "live socket",
            live_socket.clone(),
            at("e.pid"),
            "a daemon already answers",
        ),
    ];
    for (what, socket, pidfile, expected) in cases {
        let stderr = refused_start(&socket, &pidfile);
        assert!(stderr.contains(expected), "{what}: {stderr}");
    }

    let mut left: Vec<String> = fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["link.sock", "open", "pid.link"], "files left behind");
    assert_eq!(fs::read_dir(at("open")).unwrap().count(), 0);
    assert_eq!(fs::read_to_string(&live_pidfile).unwrap(), pidfile_before);
    assert!(fs::symlink_metadata(&live_socket)
        .unwrap()
        .file_type()
        .is_socket());
    guarded.assert_untouched();
}

/// The panic runs once, and never returns (docs/design.md, "The panic"): a
/// SIGTERM that is there while the panic runs
/// cannot turn it into a clean shutdown, which would spare the processes.
///
/// Nothing holds the daemon inside its panic long enough to send a signal in
/// that moment (not even a full log: `stall.rs`), so the daemon is stopped
/// while both signals arrive: it resumes with SIGTERM waiting in its
/// signalfd behind SIGUSR2 (lower signals are read first), and the panic must
/// not return to the loop that would read it.
#[test]
fn sigterm_during_the_panic_cannot_turn_it_into_a_clean_shutdown() {
    let mut daemon = DaemonBuilder::new()
        .secret("api", CANARY)
        .exec_shell(r#"echo $$ > "$DIR/program.pid"; exec sleep 600"#)
        .start();
    let program = daemon.read_pid_file("program.pid");

    signal(daemon.pid, Signal::SIGSTOP);
    eventually("the daemon to stop", || is_stopped(daemon.pid));
    signal(daemon.pid, Signal::SIGUSR2);
    signal(daemon.pid, Signal::SIGTERM);
    signal(daemon.pid, Signal::SIGCONT);

    let status = daemon.wait_exit();
    let log = daemon.log();
    assert_eq!(status.signal(), Some(9), "the panic ends by SIGKILL: {log}");
    eventually("the panic to kill the supervised program", || {
        !is_alive(program)
    });
    assert!(log.contains("PANIC: SIGUSR2;"), "{log}");
    assert!(log.contains("wiped 1 secrets"), "{log}");
    assert!(log.contains("SIGKILL self"), "{log}");
    assert!(!log.contains("clean shutdown"), "{log}");
    assert!(!log.contains(CANARY), "{log}");
    // A clean shutdown removes them; the panic leaves them for the next start.
    assert!(exists(&daemon.socket) && exists(&daemon.path("dazai.pid")));
}

/// Whether `pid` is stopped by a signal (state `T` in /proc/PID/stat).
fn is_stopped(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

/// Everything the daemon writes before it closes the connection. A close
/// with bytes still unread by the daemon (the rest of a flood) ends the
/// stream with ECONNRESET instead of end of file, after the reply.
fn reply_until_closed(stream: &mut UnixStream) -> String {
    let mut reply = Vec::new();
    if let Err(error) = stream.read_to_end(&mut reply) {
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset,
            "reading the reply failed after {reply:?}: {error}"
        );
    }
    String::from_utf8(reply).expect("a text reply")
}

/// docs/robustness.md lists every abuse and fault test, and each test it
/// names (`file::test`) exists: the table cannot drift from the suite.
#[test]
fn docs_robustness_lists_every_abuse_and_fault_test_and_names_only_real_ones() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let doc = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/robustness.md"
    ))
    .expect("docs/robustness.md");
    let tests_in = |file: &str| -> Option<Vec<String>> {
        let source = fs::read_to_string(format!("{root}/{file}.rs")).ok()?;
        Some(
            source
                .split("#[test]\nfn ")
                .skip(1)
                .filter_map(|rest| rest.split_once('(').map(|(name, _)| name.to_owned()))
                .collect(),
        )
    };
    for file in ["abuse", "faults"] {
        for test in tests_in(file).unwrap() {
            if test.starts_with("docs_") {
                continue;
            }
            assert!(
                doc.contains(&format!("`{file}::{test}`")),
                "docs/robustness.md does not list {file}::{test}"
            );
        }
    }
    let mut named = 0;
    for quoted in doc.split('`').skip(1).step_by(2) {
        let Some((file, test)) = quoted.split_once("::") else {
            continue;
        };
        let is_name = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !is_name(file) || !is_name(test) {
            continue;
        }
        if let Some(tests) = tests_in(file) {
            assert!(
                tests.iter().any(|t| t == test),
                "docs/robustness.md names {file}::{test}, which does not exist"
            );
            named += 1;
        }
    }
    assert!(named >= 30, "only {named} tests named");
}

/// A flood of bad requests from the daemon's own uid is answered one by one,
/// but logged a few lines a second: the log cannot be flooded by whoever may
/// connect.
#[test]
fn a_flood_of_bad_requests_is_logged_a_few_lines_a_second() {
    let mut guarded = Guarded::start(&[]);
    for _ in 0..200 {
        let reply = guarded.daemon.exchange(b"dazai/1 NONSENSE\n");
        assert!(reply.starts_with("ERR unknown command"), "{reply}");
    }
    // One more, past the window, reports what was held back.
    eventually("a line that reports the suppressed ones", || {
        guarded.daemon.exchange(b"dazai/1 NONSENSE\n");
        guarded.daemon.log().contains("similar lines suppressed")
    });
    let logged = guarded
        .daemon
        .log()
        .matches("refused a request from pid")
        .count();
    assert!(logged < 100, "{logged} refusal lines for 200 refusals");
    guarded.assert_untouched();
}
