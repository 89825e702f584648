//! `dazai`: a dead-man's switch for secrets.

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

fn main() -> ExitCode {
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
        Command::Mcp(args) => mcp::run(args),
        Command::Run(args) => run::run(args),
        Command::Completions(args) => {
            commands::completions(args.shell);
            Ok(0)
        }
        Command::Manpage(args) => commands::manpage(args),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.report(),
    }
}
