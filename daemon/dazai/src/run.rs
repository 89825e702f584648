//! `dazai run`: a daemon supervising PROGRAM, tied to the invoking session.
//!
//! This process holds the heartbeat itself, exactly as `dazai client` would,
//! so whatever ends the terminal or SSH session (a hung-up stdin or stdout,
//! the death of the parent shell) ends the heartbeat and the daemon panics:
//! PROGRAM and its tree are killed and the secrets wiped.
//!
//! Otherwise it behaves like `sudo` or `op run`: PROGRAM inherits stdin,
//! stdout and stderr untouched (the ready line travels on a pipe of its own);
//! SIGINT, SIGTERM and SIGHUP sent to this command are relayed to PROGRAM;
//! PROGRAM's end ends the lifecycle with a wipe, and this command exits with
//! PROGRAM's status (128 + N when signal N stopped it); the terminal's
//! foreground is handed back before it exits.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use dazai_client::{hold_heartbeat, ClientError, HeartbeatEnd, HeartbeatOptions};
use goodnight::{LockPolicy, SecretBuffer};
use nix::fcntl::{FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{getpgrp, pipe2, Pid};

use crate::cli::RunArgs;
use crate::daemon::secrets::{SecretSource, SecretSpec, MAX_SECRET_BYTES};
use crate::failure::{Exit, Failure};

/// Runs PROGRAM under a new daemon; returns PROGRAM's exit status.
pub fn run(args: &RunArgs) -> Result<u8, Failure> {
    let socket = args.socket.clone().unwrap_or_else(default_run_socket);
    remove_stale_run_files(&socket);
    let terminal = Terminal::note_foreground();
    // Signals sent before the heartbeat is held are kept for it to relay,
    // rather than ending this command with the daemon not yet tied to it.
    let mut relayed = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        relayed.add(signal);
    }
    relayed
        .thread_block()
        .map_err(|e| Failure::internal("cannot block signals", e))?;
    let daemon = match start_daemon(args, &socket)? {
        Ok(daemon) => daemon,
        // The daemon already printed its one-line error: pass its code on.
        Err(code) => return Ok(code),
    };
    let outcome = hold_session(daemon);
    terminal.take_back_foreground();
    outcome
}

/// Holds the heartbeat, relaying signals to PROGRAM, until the daemon ends
/// or the session is lost; then returns the daemon's verdict.
fn hold_session(mut daemon: RunningDaemon) -> Result<u8, Failure> {
    let options = HeartbeatOptions {
        relay_signals_to: daemon.program.as_ref().map(AsFd::as_fd),
        ..HeartbeatOptions::default()
    };
    match hold_heartbeat(&daemon.socket, options) {
        // This session ended: the daemon sees the heartbeat close and panics.
        Ok(end) => say(&format!(
            "session ended ({}); the daemon panics",
            describe(end)
        )),
        // A refusal means something else answers on the socket: give up.
        Err(error @ (ClientError::Busy(_) | ClientError::Refused(_))) => {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
            return Err(error.into());
        }
        // Any other end of the connection is the daemon ending (PROGRAM
        // ended, or a panic ran), perhaps before the heartbeat could attach:
        // its exit status says which.
        Err(_) => {}
    }
    let status = daemon
        .child
        .wait()
        .map_err(|e| Failure::internal("cannot wait for the daemon", e))?;
    match (status.code(), status.signal()) {
        (Some(code), _) => Ok(code as u8),
        (None, Some(signal)) => {
            say(&format!(
                "the daemon panicked (ended by signal {signal}): PROGRAM killed, secrets wiped"
            ));
            Ok(128 + signal as u8)
        }
        (None, None) => Ok(1),
    }
}

/// A line on stderr that may be gone with the session (a closed terminal):
/// failing to say it must not turn into a panic.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "dazai: {line}");
}

fn describe(end: HeartbeatEnd) -> String {
    match end {
        HeartbeatEnd::Signal(signal) => signal.to_string(),
        HeartbeatEnd::SessionHungUp(stream) => format!("{stream} hung up"),
        HeartbeatEnd::ParentGone => "parent process gone".to_owned(),
    }
}

/// A socket of this run's own, so several runs never meet.
fn default_run_socket() -> PathBuf {
    dazai_client::default_socket_path().with_file_name(format!("run-{}.sock", std::process::id()))
}

/// A panicked run (its daemon SIGKILLs itself) leaves `run-PID.sock` and
/// `run-PID.pid` behind: remove those of runs whose process is gone.
fn remove_stale_run_files(socket: &Path) {
    let Some(dir) = socket.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("run-"))
            .and_then(|n| n.strip_suffix(".sock").or_else(|| n.strip_suffix(".pid")))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let gone =
            nix::sys::signal::kill(Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The daemon this command started.
struct RunningDaemon {
    child: Child,
    socket: PathBuf,
    /// A pidfd of PROGRAM, for relaying signals (none if it already ended).
    program: Option<OwnedFd>,
}

/// Starts `dazai daemon --under-run FD ... --exec PROGRAM` and waits for its
/// ready line on FD; `Ok(Err(code))` when the daemon failed to start (it said
/// why on stderr). The daemon inherits the terminal, so `prompt` secrets work
/// as usual, and PROGRAM inherits stdin, stdout and stderr through it.
fn start_daemon(args: &RunArgs, socket: &Path) -> Result<Result<RunningDaemon, u8>, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::internal("cannot find the dazai binary", e))?;
    let (ready_read, ready_write) = pipe2(OFlag::O_CLOEXEC).map_err(internal("pipe"))?;
    let mut handed_down = vec![ready_write];
    let mut command = Command::new(exe);
    command
        .arg("daemon")
        .arg("--under-run")
        .arg(handed_down[0].as_raw_fd().to_string())
        .arg("--socket")
        .arg(socket)
        .arg("--pidfile")
        .arg(socket.with_extension("pid"))
        .arg("--grace")
        .arg(args.grace.to_string());
    for secret in &args.secrets {
        let source = match &secret.source {
            SecretSource::Env(var) => {
                let pipe = hand_over_env_secret(secret, var, lock_policy(args))?;
                let source = format!("fd:{}", pipe.as_raw_fd());
                handed_down.push(pipe);
                source
            }
            other => other.to_string(),
        };
        command
            .arg("--secret")
            .arg(format!("{}={source}", secret.name));
    }
    if let Some(timeout) = args.ping_timeout {
        command.arg("--ping-timeout").arg(timeout.to_string());
    }
    if args.insecure_allow_unlocked {
        command.arg("--insecure-allow-unlocked");
    }
    if !args.verbose {
        // The program shares the terminal: the daemon keeps to its PANIC line.
        command.arg("--quiet");
    }
    command.arg("--exec").args(&args.program);
    let inherited: Vec<RawFd> = handed_down.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure only makes async-signal-safe fcntl calls between
    // fork and exec.
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherited {
                nix::fcntl::fcntl(
                    BorrowedFd::borrow_raw(fd),
                    FcntlArg::F_SETFD(FdFlag::empty()),
                )?;
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(internal("starting the daemon"))?;
    // Only the daemon holds the write end now: end of file means it ended.
    drop(handed_down);
    let mut ready = String::new();
    let _ = BufReader::new(File::from(ready_read)).read_line(&mut ready);
    if !ready.starts_with("dazai daemon ready:") {
        let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(1);
        return Ok(Err(code as u8));
    }
    let program = ready
        .split_whitespace()
        .find_map(|field| field.strip_prefix("program="))
        .and_then(|pid| pid.parse().ok())
        .and_then(|pid| goodnight::pidfd::pidfd_open(Pid::from_raw(pid)).ok());
    Ok(Ok(RunningDaemon {
        child,
        socket: socket.to_owned(),
        program,
    }))
}

/// Takes `env:VAR` out of this process's environment (zeroed where it
/// stood, so `/proc/PID/environ` of `dazai run` no longer shows it for the
/// whole session) and hands it to the daemon through a pipe.
fn hand_over_env_secret(
    spec: &SecretSpec,
    var: &str,
    policy: LockPolicy,
) -> Result<OwnedFd, Failure> {
    let secret_error = |why: String| {
        Failure::new(
            Exit::Secret,
            format!("cannot read secret {}: {why}", spec.name),
        )
    };
    let secret = SecretBuffer::take_env_var(var, policy)
        .map_err(|e| secret_error(e.to_string()))?
        .ok_or_else(|| {
            secret_error(format!(
                "environment variable {var} is not set; fix: export it first"
            ))
        })?;
    if secret.len() > MAX_SECRET_BYTES {
        return Err(secret_error(format!(
            "it holds {} bytes, more than the {MAX_SECRET_BYTES}-byte limit; fix: hold a smaller secret",
            secret.len()
        )));
    }
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).map_err(internal("pipe"))?;
    // A pipe holds 64 KiB, the most a secret may be: this write never waits
    // for the daemon.
    let mut write_end = File::from(write_end);
    write_end.write_all(secret.expose()).map_err(|e| {
        secret_error(format!(
            "cannot hand it to the daemon ({e}); fix: the daemon did not start, see its error above"
        ))
    })?;
    Ok(read_end)
}

fn lock_policy(args: &RunArgs) -> LockPolicy {
    if args.insecure_allow_unlocked {
        LockPolicy::InsecureAllowUnlocked
    } else {
        LockPolicy::Required
    }
}

fn internal<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Failure {
    move |e| Failure::internal(&format!("{what} failed"), e)
}

/// The controlling terminal, if this command ran in its foreground.
struct Terminal {
    was_foreground: bool,
}

impl Terminal {
    fn note_foreground() -> Self {
        let stdin = std::io::stdin();
        Self {
            was_foreground: nix::unistd::tcgetpgrp(stdin.as_fd()) == Ok(getpgrp()),
        }
    }

    /// PROGRAM took the foreground (so Ctrl-C reaches it): hand it back to
    /// the invoking job, or the shell's next `read` stops it with SIGTTIN.
    fn take_back_foreground(&self) {
        if !self.was_foreground {
            return;
        }
        let stdin = std::io::stdin();
        if nix::unistd::tcgetpgrp(stdin.as_fd()) == Ok(getpgrp()) {
            return;
        }
        // A background group setting the foreground gets SIGTTOU unless blocked.
        let mut ttou = SigSet::empty();
        ttou.add(Signal::SIGTTOU);
        let _ = ttou.thread_block();
        let _ = nix::unistd::tcsetpgrp(stdin.as_fd(), getpgrp());
        let _ = ttou.thread_unblock();
    }
}
