//! `dazai mcp serve`: the executor. It runs as the daemon's supervised
//! program, so it holds the capability and the panic kills it with the rest
//! of the tree; it listens on `NAME.mcp.sock` beside the daemon's socket and
//! serves each connection (an agent's `dazai mcp` relay) in a session process
//! of its own that inherits the capability. The agent gets tool calls, never
//! the capability, and the tools are the ones the user named when the
//! daemon started.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dazai_client::Capability;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getuid, Pid};

use crate::config::{self, ConfigError};
use crate::link::DaemonLink;
use crate::{check_secrets_are_held, log, McpError, EXIT_DAEMON_GONE};

/// Where the executor of the daemon on `socket` listens: `dazai.sock` →
/// `dazai.mcp.sock`, in the daemon's own private directory.
pub fn executor_socket(socket: &Path) -> PathBuf {
    socket.with_extension("mcp.sock")
}

/// Serves MCP sessions until the daemon ends (then exits with
/// [`EXIT_DAEMON_GONE`]); returns only on a failure to start.
pub fn serve(tools: &Path, socket: &Path, max_calls: usize) -> Result<(), McpError> {
    let file = config::load(tools)?;
    let capability = Capability::inherited()?;
    check_secrets_are_held(&file, &DaemonLink::new(socket))?;
    let path = executor_socket(socket);
    // Blocked before the bind, so a stop (systemd's SIGTERM to the whole
    // unit) is read here and the socket removed rather than left stale.
    let stop_signals = SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]);
    stop_signals
        .thread_block()
        .map_err(|e| McpError::Serve(format!("cannot block SIGTERM/SIGINT/SIGHUP: {e}")))?;
    let stops = SignalFd::with_flags(&stop_signals, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| McpError::Serve(format!("cannot read stop signals: {e}")))?;
    let listener = bind_private(&path, &file.path)?;
    log::line(format_args!(
        "serving {} tools from {} to agents on {} (pid {})",
        file.tools.len(),
        file.path.display(),
        path.display(),
        std::process::id()
    ));
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(capability.as_fd(), PollFlags::empty()),
            PollFd::new(stops.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let daemon_gone = fds[1].any().unwrap_or(false);
        let connection = fds[0].any().unwrap_or(false);
        if fds[2].any().unwrap_or(false) {
            if let Ok(Some(info)) = stops.read_signal() {
                let _ = fs::remove_file(&path);
                log::line(format_args!("signal {}: no more sessions", info.ssi_signo));
                std::process::exit(128 + info.ssi_signo as i32);
            }
        }
        if daemon_gone {
            // The daemon's end of the capability closed: it ended.
            let _ = fs::remove_file(&path);
            log::line(format_args!("the daemon is gone; no more sessions"));
            std::process::exit(EXIT_DAEMON_GONE);
        }
        reap_ended_sessions();
        if connection {
            if let Ok((stream, _)) = listener.accept() {
                start_session(stream, &file.path, socket, max_calls);
            }
        }
    }
}

/// One session process per connection, the connection as its stdin and
/// stdout; it inherits the capability and stderr (the daemon's log).
fn start_session(stream: UnixStream, tools: &Path, socket: &Path, max_calls: usize) {
    let same_user =
        getsockopt(&stream, PeerCredentials).is_ok_and(|p| p.uid() == getuid().as_raw());
    if !same_user {
        return;
    }
    let Ok(input) = stream.try_clone() else {
        return;
    };
    let started = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .args(["session", "--tools"])
            .arg(tools)
            .arg("--socket")
            .arg(socket)
            .arg("--max-calls")
            .arg(max_calls.to_string())
            .stdin(Stdio::from(OwnedFd::from(input)))
            .stdout(Stdio::from(OwnedFd::from(stream)))
            .spawn()
    });
    if let Err(e) = started {
        log::line(format_args!("cannot start a session ({e})"));
    }
}

fn reap_ended_sessions() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if matches!(status, WaitStatus::StillAlive) {
            break;
        }
    }
}

/// Binds `path` (0600), replacing a stale socket nobody answers on.
fn bind_private(path: &Path, tools: &Path) -> Result<UnixListener, McpError> {
    let refuse = |cause: String| {
        McpError::Config(ConfigError {
            path: tools.to_owned(),
            line: None,
            cause,
            fix: "stop the other executor, or remove the file if nothing uses it".into(),
        })
    };
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(refuse(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(refuse(format!(
                "an executor already listens on {}",
                path.display()
            )));
        }
        let _ = fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| refuse(format!("cannot bind {} ({e})", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| refuse(format!("cannot make {} private ({e})", path.display())))?;
    Ok(listener)
}
