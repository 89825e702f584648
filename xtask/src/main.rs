//! Project automation, run as `cargo xtask <verb>`: the build logic lives in
//! Rust, one module per verb, and `.ci/run` and the workflows only call it.

mod ci;
mod lab;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use xshell::Shell;

const USAGE: &str = "\
usage: cargo xtask <verb>

  ci    fmt, clippy, the whole suite with and without seccomp, docs
  lab   attack the real binary and write the evidence report (not built yet)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["ci"] => shell_at_repo_root().and_then(|sh| ci::run(&sh)),
        ["lab"] => lab::run(),
        ["help" | "-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A shell whose commands run in the workspace root, wherever `cargo xtask`
/// was started from.
fn shell_at_repo_root() -> anyhow::Result<Shell> {
    let sh = Shell::new()?;
    sh.change_dir(repo_root());
    Ok(sh)
}

fn repo_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}
