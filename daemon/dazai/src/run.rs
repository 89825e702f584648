//! `dazai run`: a daemon supervising PROGRAM, tied to the invoking session.
//!
//! This process holds the heartbeat itself, exactly as `dazai client` would,
//! so whatever ends the terminal or SSH session (SIGHUP, a hung-up stdin or
//! stdout, the death of the parent shell) ends the heartbeat and the daemon
//! panics: PROGRAM and its tree are killed and the secrets wiped. When
//! PROGRAM exits normally, the daemon ends the one-shot lifecycle and this
//! command exits with PROGRAM's status.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use dazai_client::{hold_heartbeat, ClientError, HeartbeatEnd, HeartbeatOptions};

use crate::cli::RunArgs;
use crate::failure::{Exit, Failure};

/// Runs PROGRAM under a new daemon; returns PROGRAM's exit status.
pub fn run(args: &RunArgs) -> Result<u8, Failure> {
    let socket = args.socket.clone().unwrap_or_else(default_run_socket);
    let mut daemon = match start_daemon(args, &socket)? {
        Ok(daemon) => daemon,
        // The daemon already printed its one-line error: pass its code on.
        Err(code) => return Ok(code),
    };
    match hold_heartbeat(&socket, HeartbeatOptions::default()) {
        // This session ended: the daemon sees the heartbeat close and panics.
        Ok(end) => say(&format!(
            "session ended ({}); the daemon panics",
            describe(end)
        )),
        // A refusal means something else answers on the socket: give up.
        Err(error @ (ClientError::Busy(_) | ClientError::Refused(_))) => {
            let _ = daemon.kill();
            let _ = daemon.wait();
            return Err(error.into());
        }
        // Any other end of the connection is the daemon ending (PROGRAM
        // exited, or a panic ran), perhaps before the heartbeat could attach:
        // its exit status says which.
        Err(_) => {}
    }
    let status = daemon
        .wait()
        .map_err(|e| Failure::new(Exit::Internal, format!("cannot wait for the daemon ({e})")))?;
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

/// Starts `dazai daemon ... --exec PROGRAM` and waits for its ready line;
/// `Ok(Err(code))` when the daemon failed to start (it said why on stderr).
/// The daemon inherits the terminal, so `prompt` secrets and PROGRAM work as usual.
fn start_daemon(args: &RunArgs, socket: &std::path::Path) -> Result<Result<Child, u8>, Failure> {
    let exe = std::env::current_exe().map_err(|e| {
        Failure::new(
            Exit::Internal,
            format!("cannot find the dazai binary ({e})"),
        )
    })?;
    let mut command = Command::new(exe);
    command
        .arg("daemon")
        .arg("--socket")
        .arg(socket)
        .arg("--pidfile")
        .arg(socket.with_extension("pid"))
        .arg("--grace")
        .arg(args.grace.to_string());
    for secret in &args.secrets {
        command
            .arg("--secret")
            .arg(format!("{}={}", secret.name, secret.source));
    }
    if let Some(timeout) = args.ping_timeout {
        command.arg("--ping-timeout").arg(timeout.to_string());
    }
    if args.insecure_allow_unlocked {
        command.arg("--insecure-allow-unlocked");
    }
    command
        .arg("--exec")
        .args(&args.program)
        .stdout(Stdio::piped());
    let mut daemon = command
        .spawn()
        .map_err(|e| Failure::new(Exit::Internal, format!("cannot start the daemon ({e})")))?;
    let mut ready = String::new();
    let stdout = daemon.stdout.take().expect("piped stdout");
    let _ = BufReader::new(stdout).read_line(&mut ready);
    if ready.starts_with("dazai daemon ready:") {
        return Ok(Ok(daemon));
    }
    let code = daemon.wait().ok().and_then(|s| s.code()).unwrap_or(1);
    Ok(Err(code as u8))
}
