//! `dazai mcp`: the MCP server of the `motokano` crate, on stdio.

use std::path::PathBuf;

use clap::Args;

use crate::cli::SocketArg;
use crate::failure::{Exit, Failure};

/// `dazai mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// The tools file (TOML; see docs/mcp.md) [default: $XDG_CONFIG_HOME/dazai/tools.toml, else ~/.config/dazai/tools.toml]
    #[arg(long, value_name = "PATH")]
    pub tools: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArg,
}

/// Serves MCP on stdin/stdout until stdin ends; exits 3 at once when the daemon ends.
pub fn run(args: &McpArgs) -> Result<u8, Failure> {
    let tools = args
        .tools
        .clone()
        .or_else(motokano::config::default_tools_path)
        .ok_or_else(|| {
            Failure::new(
                Exit::Config,
                "no tools file: neither XDG_CONFIG_HOME nor HOME is set; fix: pass --tools PATH",
            )
        })?;
    let options = motokano::Options {
        tools,
        socket: args.socket.path(),
    };
    motokano::run(&options).map(|()| 0).map_err(|error| {
        use motokano::McpError as E;
        match error {
            E::Config(error) => Failure::new(Exit::Config, error),
            E::Daemon(error) => Failure::from(error),
            E::Hardening(error) => Failure::new(Exit::Hardening, error),
            E::Serve(why) => Failure::new(Exit::Internal, E::Serve(why)),
        }
    })
}
