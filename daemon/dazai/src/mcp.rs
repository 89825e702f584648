//! `dazai mcp`: the `motokano` crate's three processes behind one command.
//!
//! `dazai` parses the command line (its help, its errors) and then execs
//! `dazai-mcp` beside itself with the same arguments, which runs them: the
//! MCP stack is never linked into the executable that holds secrets.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Subcommand};

use crate::cli::{Cli, SocketArg};
use crate::failure::{Exit, Failure};

/// The executable that runs `dazai mcp`, looked for beside `dazai`.
pub const EXECUTABLE: &str = "dazai-mcp";

/// `dazai mcp`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct McpArgs {
    #[command(subcommand)]
    pub command: Option<McpCommand>,
    #[command(flatten)]
    pub socket: SocketArg,
    /// Refused: the tools are fixed when the daemon starts (`dazai mcp serve --tools`)
    #[arg(long, value_name = "PATH", hide = true)]
    pub tools: Option<PathBuf>,
}

/// The tools file's format, in `dazai mcp serve --help` and its man page,
/// where an installed user finds it (the docs are not installed).
const TOOLS_FILE_NOTES: &str = "\
Tools file (TOML), one [[tool]] table per tool:
  name = \"deploy_status\"       1-64 of A-Z a-z 0-9 _ . -
  description = \"…\"            what the agent reads to decide when to call it
  kind = \"static\"              secret = \"NAME\" (the secret itself, into the
                                 model's context) or value = \"fixed text\"
  kind = \"exec\"                program = \"/absolute/path\" (no shell, no PATH)
    args = [\"--env\", \"{environment}\"]   \"{param}\" slots; never a secret
    inject = { API_KEY = \"secret:api\" } environment set to secrets
    stdin = \"secret:db\"           a secret on stdin, then closed
    env = { VAR = \"value\" }, pass_env = [\"PATH\", …]
    timeout_secs = 30 (1-3600), max_output_bytes = 65536 (1-16777216)
    [tool.params.environment]      type = \"string\" with pattern (anchored) and
                                   max_length, or type = \"integer\" with min/max;
                                   required = false makes it optional
An exec tool's output is cut at max_output_bytes in the program's own bytes,
then every injected secret (raw, hex, base64) is redacted before the agent
sees it.";

/// The executor and its sessions (the agent launches plain `dazai mcp`).
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// The executor: run it as the daemon's supervised program
    /// (`dazai daemon --secret … --exec dazai mcp serve`); it serves the tools
    /// to every `dazai mcp` an agent launches.
    #[command(after_long_help = TOOLS_FILE_NOTES)]
    Serve(ToolsArgs),
    /// One agent's session, started by the executor per connection.
    #[command(hide = true)]
    Session(ToolsArgs),
}

/// The tools file and the daemon's socket.
#[derive(Debug, Args)]
pub struct ToolsArgs {
    /// Most calls of exec tools a session runs at once (each forks a process
    /// tree and buffers its output); more get a "busy" tool error
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_calls: u16,
    /// The tools file (TOML; its format is below in --help) [default: $XDG_CONFIG_HOME/dazai/tools.toml, else ~/.config/dazai/tools.toml]
    #[arg(long, value_name = "PATH")]
    pub tools: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArg,
}

/// `dazai mcp ARGS`, once parsed: becomes `dazai-mcp ARGS`, or fails with why.
pub(crate) fn exec_executable() -> Failure {
    let beside_dazai = std::env::current_exe().map(|dazai| dazai.with_file_name(EXECUTABLE));
    let path = match beside_dazai {
        Ok(path) => path,
        Err(e) => return Failure::internal("cannot find the dazai executable", e),
    };
    let error = std::process::Command::new(&path)
        .args(arguments_after_mcp(std::env::args_os()))
        .exec();
    Failure::new(
        Exit::Spawn,
        format!(
            "cannot run {} ({error}); fix: install {EXECUTABLE} beside dazai (a release ships both; `cargo install --path daemon/dazai` installs both)",
            path.display()
        ),
    )
}

/// The arguments of `dazai mcp`: those after the subcommand's name (no
/// option of `dazai` can come before it).
fn arguments_after_mcp(argv: impl Iterator<Item = OsString>) -> impl Iterator<Item = OsString> {
    argv.skip(1).skip_while(|arg| arg != "mcp").skip(1)
}

/// The `dazai-mcp` executable: parses its arguments as `dazai mcp` does,
/// with the same help, and runs them.
pub fn main() -> ExitCode {
    let command = Cli::command()
        .find_subcommand("mcp")
        .cloned()
        .expect("dazai's command line has an mcp subcommand")
        .name("dazai mcp")
        .bin_name("dazai mcp");
    let args = McpArgs::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.report(),
    }
}

/// Relays the agent's stdio to the executor, or runs the executor or a session.
fn run(args: &McpArgs) -> Result<u8, Failure> {
    match &args.command {
        None if args.tools.is_some() => Err(Failure::new(
            Exit::Usage,
            "dazai mcp takes no --tools: the tools are fixed when the daemon starts, so an agent cannot bring its own; fix: start the daemon with --exec dazai mcp serve --tools PATH and launch plain `dazai mcp`",
        )),
        None => motokano::relay::relay(&args.socket.path())
            .map(|code| code as u8)
            .map_err(|error| match error {
                dazai_client::ClientError::NoDaemon { path, cause } => Failure::new(
                    Exit::NoDaemon,
                    format!(
                        "no MCP executor listens on {} ({cause}); fix: start the daemon with --exec dazai mcp serve (see `dazai mcp serve --help`), or set DAZAI_SOCKET to its socket",
                        path.display()
                    ),
                ),
                other => Failure::from(other),
            }),
        Some(McpCommand::Serve(tools)) => {
            motokano::sessions::serve(
                &tools_path(tools)?,
                &tools.socket.path(),
                usize::from(tools.max_calls),
            )
                .map(|()| 0)
                .map_err(failure)
        }
        Some(McpCommand::Session(tools)) => {
            let options = motokano::Options {
                tools: tools_path(tools)?,
                socket: tools.socket.path(),
                max_calls: usize::from(tools.max_calls),
            };
            motokano::serve_session(&options)
                .map(|()| 0)
                .map_err(failure)
        }
    }
}

fn tools_path(args: &ToolsArgs) -> Result<PathBuf, Failure> {
    args.tools
        .clone()
        .or_else(motokano::config::default_tools_path)
        .ok_or_else(|| {
            Failure::new(
                Exit::Config,
                "no tools file: neither XDG_CONFIG_HOME nor HOME is set; fix: pass --tools PATH",
            )
        })
}

fn failure(error: motokano::McpError) -> Failure {
    use motokano::McpError as E;
    match error {
        E::Config(error) => Failure::new(Exit::Config, error),
        E::Daemon(error) => Failure::from(error),
        E::Hardening(error) => Failure::new(Exit::Hardening, error),
        E::Serve(why) => Failure::new(Exit::Internal, E::Serve(why)),
    }
}
