//! Project automation, run as `cargo xtask <verb>`: the build logic lives in
//! Rust, one module per verb, and `.ci/run` and the workflows only call it.

mod apt;
mod bench;
mod ci;
mod cross;
mod dist;
mod fuzz;
mod lab;
mod man;
mod publish;
mod reproduce;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use xshell::Shell;

/// `cargo xtask <verb>`: the project's automation.
#[derive(clap::Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "The project's automation: the same entry points locally and in CI"
)]
struct Xtask {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Everything CI checks: fmt, clippy, the whole suite with and without
    /// seccomp, docs, the fuzz targets for a bounded time and, last, the lab
    Ci(ci::Options),
    /// Write dazai(1), a dazai-SUBCOMMAND(1) page each and the bash, zsh and fish
    /// completions into $CARGO_TARGET_DIR/{man,completions} (else target/…)
    Man,
    /// Build the libFuzzer targets in fuzz/ and run them all at once
    Fuzz(fuzz::Options),
    /// Attack the real binaries in containers and x86_64/aarch64 VMs and write the evidence report
    Lab(lab::Options),
    /// Static release dazai for x86_64 and aarch64 musl with `cross`, in the
    /// toolchain image the lab builds -> `target/built/<target>/dazai`
    Cross,
    /// The lab on both targets, then target/dist: only binaries whose SHA-256
    /// every leg tested green, SHA256SUMS (signed with DAZAI_SIGNING_KEY, or
    /// the key's content in DAZAI_SIGNING_KEY_CONTENT), the evidence report,
    /// provenance.json
    Dist,
    /// Attach everything in target/dist to the GitHub release TAG (with `gh`;
    /// GH_TOKEN from the environment), refusing an incomplete target/dist
    Publish {
        /// The release's tag, e.g. v0.3.0.
        tag: String,
    },
    /// Rebuild a release from a clean clone at the commit its provenance.json
    /// names and compare every binary with its SHA256SUMS
    Reproduce {
        /// The release's directory (SHA256SUMS, provenance.json), e.g. target/dist.
        dir: PathBuf,
    },
    /// Measure destroy latency, ping-timeout precision, idle cost, load, size,
    /// and ssh-agent side by side -> target/bench/report.json
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let Xtask { verb } = Xtask::parse();
    let result = shell_at_repo_root().and_then(|sh| match verb {
        Verb::Ci(options) => match options.cell() {
            Some(cell) => ci::run_cell(&sh, &cell),
            None => ci::run(&sh),
        },
        Verb::Man => man::run(),
        Verb::Fuzz(options) => fuzz::run(&sh, &options),
        Verb::Lab(options) => lab::run(&sh, &options).map(drop),
        Verb::Cross => cross::run(&sh),
        Verb::Dist => dist::run(&sh),
        Verb::Publish { tag } => publish::run(&sh, &tag),
        Verb::Reproduce { dir } => reproduce::run(&sh, &dir),
        Verb::Bench(options) => bench::run(&sh, &options),
    });
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
