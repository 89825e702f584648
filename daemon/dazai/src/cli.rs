//! The command line of `dazai`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::daemon::secrets::SecretSpec;

/// A dead-man's switch for secrets: while your session lives, secrets live in
/// locked memory; when it dies, they are wiped and every process given them is killed.
#[derive(Debug, Parser)]
#[command(name = "dazai", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hold secrets in locked memory and panic when the session's heartbeat dies.
    Daemon(DaemonArgs),
    /// Hold the heartbeat for this session (shell, terminal or SSH login).
    Client(ClientArgs),
    /// Show the daemon's state (never a secret's value).
    Status(StatusArgs),
    /// Run the panic: kill registered processes, wipe secrets, end the daemon.
    Panic(PanicArgs),
    /// Shut the daemon down cleanly: wipe its secrets, kill nothing (like `ssh-agent -k`).
    Stop(StopArgs),
    /// Write a secret to stdout (only inside the supervised program's tree, which holds the capability).
    Get(GetArgs),
    /// Register a process (default: the caller's parent, e.g. your shell) so the panic kills it; grants nothing.
    Register(RegisterArgs),
    /// Serve MCP tools backed by the daemon's secrets on stdio (launched by an agent).
    Mcp(crate::mcp::McpArgs),
    /// Run PROGRAM with secrets, tied to this terminal or SSH session: the common case in one command.
    Run(RunArgs),
}

/// Where the daemon's socket is.
#[derive(Debug, Args)]
pub struct SocketArg {
    /// The daemon's UNIX socket [default: $DAZAI_SOCKET if set and not
    /// empty, else $XDG_RUNTIME_DIR/dazai/dazai.sock]
    // Not clap's `env`: it takes a variable set to the empty string for a
    // missing value, where an empty DAZAI_SOCKET means "the default".
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    /// The path given, or the default one.
    pub fn path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(dazai_client::default_socket_path)
    }
}

/// `dazai daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Pidfile, created mode 0600 [default: dazai.pid beside the socket]
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// A secret to hold, as NAME=SOURCE; SOURCE is fd:N, env:VAR, file:PATH or prompt. Repeatable.
    #[arg(long = "secret", value_name = "NAME=SOURCE")]
    pub secrets: Vec<SecretSpec>,
    /// Treat N seconds without a PING on the heartbeat as liveness lost.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_timeout: Option<u64>,
    /// Give a lost session N seconds to re-attach a heartbeat before the panic.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub grace: u64,
    /// Panic if no heartbeat attaches within N seconds of start-up.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub arm_timeout: Option<u64>,
    /// INSECURE: keep going when memory cannot be locked, marked no-dump, or the
    /// process cannot be made non-dumpable. Status and logs say so.
    #[arg(long)]
    pub insecure_allow_unlocked: bool,
    /// Memory for the secrets: secretmem (memfd_secret(2): not even root reads it), locked
    /// (mlock), or auto (secretmem where the kernel offers it) [default: $DAZAI_MEMORY, else auto]
    #[arg(long, value_enum, value_name = "BACKEND", hide_possible_values = true)]
    pub memory: Option<crate::daemon::secrets::MemoryArg>,
    /// Print the seccomp allowlist this build would install, and exit.
    #[arg(long)]
    pub print_seccomp: bool,
    /// Log only the PANIC line and errors.
    #[arg(long)]
    pub quiet: bool,
    /// Started by `dazai run`: the ready line goes to FD, and SIGINT, SIGTERM
    /// and SIGHUP are left to `dazai run`, which relays them to the program.
    #[arg(long, value_name = "FD", hide = true)]
    pub under_run: Option<std::os::fd::RawFd>,
    /// Supervise PROGRAM [ARGS...] (everything after --exec): killed by the panic;
    /// its exit ends the daemon with its status.
    #[arg(
        long,
        value_name = "PROGRAM",
        num_args = 1..,
        allow_hyphen_values = true,
        trailing_var_arg = true
    )]
    pub exec: Vec<String>,
}

/// `dazai client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Send PING this often [default: a third of the daemon's --ping-timeout]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval: Option<u64>,
    /// If another session holds the heartbeat, stand by and take it over when
    /// that session ends, so that a second login keeps the secrets alive
    /// (needs a daemon started with --grace)
    #[arg(long)]
    pub standby: bool,
}

/// `dazai status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Print the daemon's JSON status as is.
    #[arg(long)]
    pub json: bool,
}

/// `dazai panic`.
#[derive(Debug, Args)]
pub struct PanicArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Bypass the grace window.
    #[arg(long)]
    pub hard: bool,
}

/// `dazai stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub socket: SocketArg,
}

/// `dazai get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The secret's name.
    pub name: String,
}

/// What `dazai run --help` and dazai-run(1) say beyond the options.
const RUN_NOTES: &str = "\
Exit status:
  PROGRAM's own status; 128+N when signal N stopped it (Ctrl-C: 130, SIGTERM: 143);
  137 when the daemon panicked (the session was lost, or PROGRAM crashed or was
  SIGKILLed); dazai's own codes (2 usage, 5 memory, 6 a secret's source, 7 the
  socket path, 8 PROGRAM could not start, 130 Ctrl-C at a prompt) when it failed
  before PROGRAM ran.

Signals:
  SIGINT, SIGTERM and SIGHUP sent to dazai run are relayed to PROGRAM, as sudo
  does; PROGRAM's end ends the run with a wipe. The panic runs only when the
  session is lost: stdin or stdout hangs up, the parent shell dies, or dazai run
  itself is killed.

Environment:
  PROGRAM and its descendants get DAZAI_CAPABILITY_FD (the capability `dazai get`
  uses; its number alone grants nothing) and DAZAI_SOCKET. A secret given as
  env:VAR is taken out of dazai run's own environment and reaches no child.
  XDG_RUNTIME_DIR places the socket (run-PID.sock) unless --socket does.";

/// `dazai run`.
#[derive(Debug, Args)]
#[command(after_long_help = RUN_NOTES)]
pub struct RunArgs {
    /// A secret to hold, as NAME=SOURCE; SOURCE is fd:N, env:VAR, file:PATH or prompt. Repeatable.
    #[arg(long = "secret", value_name = "NAME=SOURCE")]
    pub secrets: Vec<SecretSpec>,
    /// Treat N seconds without a PING from this session as liveness lost.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_timeout: Option<u64>,
    /// Give a lost session N seconds to re-attach before the panic.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub grace: u64,
    /// INSECURE: see `dazai daemon --insecure-allow-unlocked`.
    #[arg(long)]
    pub insecure_allow_unlocked: bool,
    /// The daemon's socket [default: $XDG_RUNTIME_DIR/dazai/run-PID.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the daemon's log lines (by default only its PANIC line and its
    /// errors reach the terminal, which the program shares).
    #[arg(long)]
    pub verbose: bool,
    /// The program and its arguments (`--` before them is optional, as with `sudo`).
    #[arg(
        required = true,
        value_name = "PROGRAM",
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub program: Vec<String>,
}

/// `dazai register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The process to register [default: the parent of this command]
    pub pid: Option<i32>,
    #[command(flatten)]
    pub socket: SocketArg,
}
