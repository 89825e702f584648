//! Nothing the daemon writes can stall the switch: its log goes to stderr,
//! which may be a pipe nobody reads (a paused pager, a wedged log collector),
//! and any process of the user can make it log (every refused request does).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dazai_e2e::{dazai, eventually, is_alive, signal, Daemon, CANARY, PATIENCE};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;

/// Refused requests the flood sends: more than twice what fills a 64 KiB pipe
/// with refusal lines.
const FLOOD: usize = 2_000;

/// The daemon's stderr is a pipe the test holds and never reads, filled to the
/// last byte; a flood of refused requests makes the daemon log while the
/// heartbeat client is SIGKILLed. The panic still comes: the daemon ends by
/// its own SIGKILL and kills its program, and it added nothing to the pipe.
///
/// The test fills the pipe itself rather than waiting for the flood to do it,
/// so that it holds however the daemon thins out its refusal lines.
#[test]
fn a_full_stderr_pipe_and_a_flood_of_refusals_do_not_delay_the_panic() {
    let (stderr_read, stderr_write) = nix::unistd::pipe().unwrap();
    let mut daemon = start_daemon_with_stderr(Stdio::from(stderr_write.try_clone().unwrap()));
    let program = daemon.read_pid_file("program.pid");
    let mut client = attach_client(&daemon);
    let full = fill(stderr_write.as_fd());
    drop(stderr_write);
    assert_eq!(unread_bytes(stderr_read.as_fd()), full);

    let answered = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (socket, answered) = (daemon.socket.clone(), Arc::clone(&answered));
        // Not scoped: a stalled daemon must fail the test, not hang it.
        std::thread::spawn(move || flood_with_refused_requests(&socket, &answered))
    };
    eventually("the daemon to answer a refused request", || {
        answered.load(Ordering::Relaxed) > 0
    });
    signal(client.id() as i32, Signal::SIGKILL);
    let _ = client.wait();

    eventually("the panic to end the daemon, its stderr full", || {
        !daemon.is_running()
    });
    assert_eq!(
        daemon.wait_exit().signal(),
        Some(9),
        "the panic ends by SIGKILL"
    );
    eventually("the panic to kill the supervised program", || {
        !is_alive(program)
    });
    assert_eq!(
        unread_bytes(stderr_read.as_fd()),
        full,
        "the daemon wrote into a full pipe (a torn line) or the pipe was read"
    );
    flood.join().unwrap();
}

/// `dazai daemon` holding [`CANARY`] and supervising a `sleep`, with `stderr`
/// as its stderr, as a [`Daemon`] of the harness (whose `log()` stays empty).
fn start_daemon_with_stderr(stderr: Stdio) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("dazai-e2e")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("dazai.sock");
    let mut child = dazai()
        .args([
            "daemon",
            "--secret",
            "api=env:DAZAI_TEST_CANARY",
            "--socket",
        ])
        .arg(&socket)
        .args(["--exec", "/bin/sh", "-c"])
        .arg(r#"echo $$ > "$DIR/program.pid"; exec sleep 600"#)
        .env("DAZAI_TEST_CANARY", CANARY)
        .env("DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut ready_line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready_line)
        .unwrap();
    assert!(
        ready_line.starts_with("dazai daemon ready:"),
        "{ready_line:?}"
    );
    Daemon {
        pid: child.id() as i32,
        child,
        dir,
        socket,
        ready_line,
        reaped: None,
    }
}

/// `dazai client` holding the heartbeat, once the daemon's status shows it.
fn attach_client(daemon: &Daemon) -> Child {
    let client = dazai()
        .arg("client")
        .arg("--socket")
        .arg(&daemon.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the client's heartbeat to attach", || {
        daemon.status()["liveness"] == "attached"
    });
    client
}

/// Fills the pipe behind `write_end` to the last byte and returns how many
/// bytes it holds, through a non-blocking open file description of the test's
/// own: setting O_NONBLOCK on `write_end` would set it for the daemon's stderr,
/// which shares that description.
fn fill(write_end: BorrowedFd<'_>) -> usize {
    let path = PathBuf::from(format!("/proc/self/fd/{}", write_end.as_raw_fd()));
    let own = nix::fcntl::open(
        &path,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    // Whole pages leave no room in the last one for a short line to merge into.
    let page = [b'#'; 4096];
    loop {
        match nix::unistd::write(&own, &page) {
            Ok(_) => {}
            Err(Errno::EAGAIN) => break,
            Err(errno) => panic!("filling the pipe: {errno}"),
        }
    }
    assert_eq!(nix::unistd::write(&own, b"#"), Err(Errno::EAGAIN));
    unread_bytes(write_end)
}

/// How many bytes the pipe holds, unread.
fn unread_bytes(end: BorrowedFd<'_>) -> usize {
    let mut bytes: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at a
    // live local of that type; `end` is an open descriptor for the call.
    let result = unsafe { libc::ioctl(end.as_raw_fd(), libc::FIONREAD, &mut bytes) };
    assert_eq!(result, 0, "FIONREAD: {}", Errno::last());
    bytes as usize
}

/// Sends [`FLOOD`] requests the daemon refuses (and logs), one connection
/// each, counting the `ERR` replies; stops once the daemon is gone.
fn flood_with_refused_requests(socket: &Path, answered: &AtomicUsize) {
    for _ in 0..FLOOD {
        let Ok(mut stream) = UnixStream::connect(socket) else {
            return;
        };
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        if stream.write_all(b"dazai/1 NONSENSE\n").is_err() {
            return;
        }
        // The line alone: the daemon logs the refusal before it closes.
        let mut reply = String::new();
        let _ = BufReader::new(stream).read_line(&mut reply);
        if !reply.starts_with("ERR ") {
            return;
        }
        answered.fetch_add(1, Ordering::Relaxed);
    }
}
