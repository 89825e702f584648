//! `motokano`: the MCP layer of ningen-shikkaku. It hands an agent tools
//! backed by the daemon's secrets, under the same dead-man's switch, in three
//! processes:
//!
//! - `dazai mcp serve --tools FILE`, the executor ([`sessions`]), runs as the
//!   daemon's supervised program: it holds the capability (the agent never
//!   does) and the tools the user fixed when the daemon started;
//! - `dazai mcp`, what the agent launches ([`relay`]), passes the agent's
//!   stdio to the executor's socket and holds nothing;
//! - each connection is served by a session process ([`serve_session`]), an
//!   MCP server on its stdio that inherits the capability.
//!
//! A session:
//!
//! - at start registers itself with the daemon, so the panic kills it, and
//!   holds a `WATCH` connection: when the daemon ends for any reason it kills
//!   the programs it runs, wipes every secret it holds and exits at once;
//! - `kind = "static"` tools return a secret (into the model's context, as
//!   their description says) or a fixed value;
//! - `kind = "exec"` tools run a configured program, never through a shell,
//!   with secrets injected into its environment or stdin, in a process group
//!   the daemon registers before the program starts, within a time limit and
//!   an output cap, and with every form of every injected secret redacted
//!   from the output.
//!
//! The protocol itself is rmcp's (the official Rust SDK), which serves both
//! eras: the `initialize` handshake and the stateless 2026-07-28 revision.

pub mod args;
pub mod config;
pub mod exec;
pub mod ledger;
pub mod link;
pub mod log;
pub mod redact;
pub mod relay;
pub mod server;
pub mod sessions;
pub mod stdout;
pub mod wiped;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dazai_client::ClientError;
use nix::sys::signal::{SigSet, Signal};
use rmcp::ServiceExt;

use crate::config::{ConfigError, Kind, StaticTool};
use crate::ledger::Ledger;
use crate::link::DaemonLink;
use crate::server::Motokano;
use crate::stdout::SplicingStdout;

/// The exit status of every `dazai mcp` process when the daemon ends under it.
pub const EXIT_DAEMON_GONE: i32 = 3;

/// What a session is started with.
#[derive(Clone, Debug)]
pub struct Options {
    /// The tools file.
    pub tools: PathBuf,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Most exec calls run at once.
    pub max_calls: usize,
}

/// Why `dazai mcp` could not start or serve; each is one line with a fix.
#[derive(Debug)]
pub enum McpError {
    /// The tools file is invalid: the server refuses to start.
    Config(ConfigError),
    /// The daemon could not be reached or refused a start-up request.
    Daemon(ClientError),
    /// The process could not be hardened (made non-dumpable, …).
    Hardening(goodnight::HardeningError),
    /// The MCP session could not be served.
    Serve(String),
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(error) => write!(f, "{error}"),
            Self::Daemon(error) => write!(f, "{error}"),
            Self::Hardening(error) => write!(f, "{error}"),
            Self::Serve(why) => write!(
                f,
                "the MCP session failed ({why}); fix: launch dazai mcp from an MCP client that speaks JSON-RPC on stdio, one message per line"
            ),
        }
    }
}

impl std::error::Error for McpError {}

impl From<ConfigError> for McpError {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}

impl From<ClientError> for McpError {
    fn from(error: ClientError) -> Self {
        Self::Daemon(error)
    }
}

/// How long the end waits for running calls to drop (and so wipe) the
/// output they collected: they stop at once, so this bounds a stuck one.
const CALLS_END_WITHIN: Duration = Duration::from_secs(1);

/// The end, from a thread of its own: kills every running program, wipes
/// every secret, and waits for the running calls to wipe their output.
fn end_everything(ledger: &Ledger) -> String {
    let cleared = ledger.wipe_and_kill_everything();
    let left = ledger.wait_for_calls_to_end(CALLS_END_WITHIN);
    format!(
        "killed {} running program groups, wiped {} secrets and the output of the calls that ran{}",
        cleared.killed.len(),
        cleared.wiped,
        if left > 0 {
            format!(" ({left} did not stop within {CALLS_END_WITHIN:?})")
        } else {
            String::new()
        }
    )
}

/// Runs the server until stdin ends (`Ok`), the daemon ends (the process
/// exits with [`EXIT_DAEMON_GONE`] from the watch thread) or SIGTERM, SIGINT
/// or SIGHUP arrives (it exits with 128 + the signal's number). Each way, the
/// programs it runs are killed and the secrets it holds wiped first.
pub fn serve_session(options: &Options) -> Result<(), McpError> {
    // An invalid tools file stops everything before the daemon is touched.
    let file = config::load(&options.tools)?;
    harden()?;
    let daemon = DaemonLink::new(&options.socket);
    check_secrets_are_held(&file, &daemon)?;
    daemon.register_self()?;
    let watch = daemon.watch()?;
    let ledger = Ledger::new();
    // Blocked before any other thread exists, so every thread inherits the
    // mask and only the signal thread below receives them.
    let stop_signals = SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]);
    stop_signals
        .thread_block()
        .map_err(|e| McpError::Serve(format!("cannot block SIGTERM/SIGINT/SIGHUP: {e}")))?;
    exit_on("stop-signals", "signal", &ledger, move || {
        let signal = stop_signals.wait().ok()?;
        Some((signal.to_string(), 128 + signal as i32))
    })?;
    exit_on("daemon-watch", "watch", &ledger, move || {
        watch.wait_for_daemon_end();
        Some(("the daemon is gone".to_owned(), EXIT_DAEMON_GONE))
    })?;
    log::line(format_args!(
        "serving {} tools from {} (pid {}, registered with the daemon at {})",
        file.tools.len(),
        file.path.display(),
        std::process::id(),
        options.socket.display()
    ));
    // One thread: every exec program is forked from the main thread, which
    // lives as long as this process (its death signal is tied to the thread).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| McpError::Serve(format!("cannot start the async runtime: {e}")))?;
    let server = Motokano::new(file, daemon, ledger.clone(), options.max_calls);
    let outcome = runtime.block_on(serve(server, ledger.clone()));
    let cleared = ledger.wipe_and_kill_everything();
    log::line(format_args!(
        "stdin closed: killed {} running program groups, wiped {} secrets; exiting",
        cleared.killed.len(),
        cleared.wiped
    ));
    outcome
}

/// Starts the thread `name` that waits for `ending`; when it comes (as the
/// reason to log and the exit status), everything is ended and the process
/// exits. An ending that returns `None` never comes.
fn exit_on(
    name: &str,
    role: &str,
    ledger: &Arc<Ledger>,
    ending: impl FnOnce() -> Option<(String, i32)> + Send + 'static,
) -> Result<(), McpError> {
    let ledger = ledger.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let Some((why, status)) = ending() else {
                return;
            };
            let cleared = end_everything(&ledger);
            log::line(format_args!("{why}: {cleared}; exiting"));
            std::process::exit(status);
        })
        .map(drop)
        .map_err(|e| McpError::Serve(format!("cannot start the {role} thread: {e}")))
}

async fn serve(server: Motokano, ledger: Arc<Ledger>) -> Result<(), McpError> {
    let transport = (tokio::io::stdin(), SplicingStdout::new(ledger));
    let running = match server.serve(transport).await {
        Ok(running) => running,
        // End of input before any request: nothing to serve.
        Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => return Ok(()),
        Err(error) => return Err(McpError::Serve(one_line(&error.to_string()))),
    };
    running
        .waiting()
        .await
        .map(|_| ())
        .map_err(|e| McpError::Serve(one_line(&e.to_string())))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Non-dumpable, no core files, and as much lockable memory as allowed: the
/// secrets this process fetches are as protected as in the daemon.
fn harden() -> Result<(), McpError> {
    goodnight::raise_memlock_limit().map_err(McpError::Hardening)?;
    goodnight::forbid_core_dumps_and_tracing().map_err(McpError::Hardening)?;
    goodnight::limit_core_size_to_zero().map_err(McpError::Hardening)?;
    Ok(())
}

/// Every secret the tools name must be one the daemon holds.
pub(crate) fn check_secrets_are_held(
    file: &config::ToolsFile,
    daemon: &DaemonLink,
) -> Result<(), McpError> {
    let held = daemon.held_secrets()?;
    for tool in &file.tools {
        let names: Vec<&str> = match &tool.kind {
            Kind::Static(StaticTool::Secret(name)) => vec![name.as_str()],
            Kind::Static(StaticTool::Value(_)) => Vec::new(),
            Kind::Exec(exec) => exec.secret_names().into_iter().collect(),
        };
        if let Some(missing) = names.iter().find(|n| !held.iter().any(|h| h == *n)) {
            return Err(McpError::Config(ConfigError {
                path: file.path.clone(),
                line: Some(tool.line),
                cause: format!(
                    "tool {:?} uses the secret {missing:?}, which the daemon at {} does not hold",
                    tool.name,
                    daemon.socket().display()
                ),
                fix: format!(
                    "start the daemon with --secret {missing}=SOURCE, or name a secret it holds (dazai status lists them)"
                ),
            }));
        }
    }
    Ok(())
}
