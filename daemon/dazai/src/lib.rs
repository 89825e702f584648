//! `dazai`: a dead-man's switch for secrets, as two executables.
//!
//! `dazai` holds the secrets; `dazai-mcp`, which `dazai mcp` execs, carries
//! the MCP stack (tokio, rmcp, regex, toml) so that none of it is mapped in the
//! process that holds secrets. Both are built from this library; each `main`
//! reaches only its own half, and the release build's link-time optimisation
//! drops the other.

mod cli;
mod commands;
mod confinement;
mod daemon;
mod failure;
mod log;
mod mcp;
mod run;
mod sys;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

pub use mcp::main as mcp_main;

/// `dazai`'s command line, for `cargo xtask man`: the man pages and shell
/// completions are generated at release time, not by the shipped executable.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The `dazai` executable.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Daemon(args) if args.print_seccomp => {
            print!("{}", confinement::describe());
            Ok(0)
        }
        Command::Daemon(_) => {
            let Command::Daemon(args) = cli.command else {
                unreachable!()
            };
            daemon::run(args)
        }
        Command::Client(args) => commands::client(args),
        Command::Status(args) => commands::status(args),
        Command::Panic(args) => commands::panic(args),
        Command::Stop(args) => commands::stop(args),
        Command::Get(args) => commands::get(args),
        Command::Register(args) => commands::register(args),
        Command::Mcp(_) => Err(mcp::exec_executable()),
        Command::Run(args) => run::run(args),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.report(),
    }
}
