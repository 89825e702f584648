//! What the `dazai` commands can fail with: one line with cause and fix, and a
//! distinct exit code per kind (documented in `docs/usage.md`).

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

/// The documented exit codes. 2 is clap's own for a bad command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Something unexpected: an I/O error with no better category.
    Internal = 1,
    /// A mistake on the command line that clap's own checks (also status 2) cannot see.
    Usage = 2,
    /// No daemon answers on the socket.
    NoDaemon = 3,
    /// The daemon refused the request (BUSY heartbeat, `get` not allowed, …).
    Refused = 4,
    /// Memory could not be locked or the process could not be hardened.
    Hardening = 5,
    /// A secret could not be read from its source.
    Secret = 6,
    /// The socket or pidfile path is unsafe or in use.
    Endpoint = 7,
    /// A program could not be started: the `--exec` program, or `dazai-mcp` for `dazai mcp`.
    Spawn = 8,
    /// The `dazai mcp` tools file is invalid.
    Config = 9,
    /// Cancelled with Ctrl-C at a prompt (as a program stopped by SIGINT).
    Interrupted = 130,
}

/// A failure: exit code plus one line saying the cause and the fix.
#[derive(Debug)]
pub struct Failure {
    /// The exit code the process ends with.
    pub exit: Exit,
    /// The one-line message (cause, then fix).
    pub message: String,
}

impl Failure {
    /// A failure of kind `exit` with a one-line message.
    pub fn new(exit: Exit, message: impl fmt::Display) -> Self {
        Self {
            exit,
            message: message.to_string(),
        }
    }

    /// A system call that does not fail on a healthy system did: `doing`
    /// says which. The fix points at the resources it may have run out of.
    pub fn internal(doing: &str, error: impl fmt::Display) -> Self {
        Self::new(
            Exit::Internal,
            format!("{doing} ({error}); fix: check the open-file limit (`ulimit -n`) and free memory; if both are fine, this is a bug: report this line"),
        )
    }

    /// Prints `dazai: error: …` on stderr and gives the exit code.
    pub fn report(&self) -> ExitCode {
        // Never a panic on top of a failure, even with stderr gone.
        let _ = writeln!(std::io::stderr(), "dazai: error: {}", self.message);
        ExitCode::from(self.exit as u8)
    }
}

impl From<dazai_client::ClientError> for Failure {
    fn from(error: dazai_client::ClientError) -> Self {
        use dazai_client::ClientError as E;
        let exit = match &error {
            E::NoDaemon { .. } | E::DaemonGone | E::NoReply { .. } => Exit::NoDaemon,
            E::Busy(_) | E::Refused(_) | E::NoCapability { .. } => Exit::Refused,
            E::ForeignDaemon { .. } => Exit::Endpoint,
            E::Secret(_) => Exit::Hardening,
            E::Protocol(_) | E::Io(_) => Exit::Internal,
        };
        Self::new(exit, error)
    }
}
